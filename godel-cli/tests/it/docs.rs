//! Runs every `$ godel …` example of docs/cli.md against a live server, so
//! the documentation cannot drift from the tool. Each console block runs as
//! one `sh -e` script (so `id=$(godel submit …)` carries over), with the
//! `godel` binary first on PATH and GODEL_SERVER pointing at the server.

use std::process::Command;

use crate::server::{Server, bin_dir};

#[test]
fn every_example_in_the_cli_guide_runs() {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/cli.md")).unwrap();
    let server = Server::start();
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    let mut blocks = 0;
    for block in console_blocks(&guide) {
        let script: Vec<&str> = block.iter().filter_map(|l| l.strip_prefix("$ ")).collect();
        if script.is_empty() {
            continue;
        }
        blocks += 1;
        let out = Command::new("sh")
            .arg("-ec")
            .arg(script.join("\n"))
            .current_dir(server.dir.path())
            .env("PATH", &path)
            .env("GODEL_SERVER", &server.url)
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this example from docs/cli.md failed:\n{}\nstdout: {}\nstderr: {}",
            script.join("\n"),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(blocks >= 5, "docs/cli.md should have runnable examples, found {blocks}");
}

fn console_blocks(markdown: &str) -> Vec<Vec<&str>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```console") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), l) => block.push(l),
            (None, _) => {}
        }
    }
    blocks
}
