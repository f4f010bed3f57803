//! A `godel serve` child process on a free port with its own store and
//! configuration, killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) const GODEL: &str = env!("CARGO_BIN_EXE_godel");

/// The agents every test server runs: prompts are echoed back, so `godel do` works.
const CONFIG: &str = r#"
bind = "127.0.0.1:0"
log_format = "json"

[engine]
heartbeat_interval = "200ms"
poll_interval = "100ms"
reclaim_interval = "200ms"
kill_grace = "500ms"
shutdown_grace = "2s"
retry_initial = "50ms"
retry_max = "200ms"

[[agents]]
id = "local"
capacity = 4
command = ["sh", "-c", "echo \"$1\"", "sh", "{prompt}"]
"#;

pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
    pub(crate) dir: tempfile::TempDir,
}

impl Server {
    pub(crate) fn start() -> Self {
        Self::start_with(tempfile::tempdir().unwrap(), "")
    }

    /// Starts a server in `dir` whose configuration is the usual one plus
    /// `extra`; its URL is `https://localhost:<port>` when `extra` sets up TLS.
    pub(crate) fn start_with(dir: tempfile::TempDir, extra: &str) -> Self {
        std::fs::write(dir.path().join("godel.toml"), format!("{CONFIG}{extra}")).unwrap();
        let log = std::fs::File::create(dir.path().join("server.err")).unwrap();
        let mut child = Command::new(GODEL)
            .args(["serve", "--config", "godel.toml", "--store"])
            .arg(format!("sqlite://{}", dir.path().join("godel.db").display()))
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        // The JSON log's startup line names the bound address.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(addr) = v["addr"].as_str()
                {
                    let _ = tx.send((v["scheme"].as_str().unwrap_or("http").to_owned(), addr.to_owned()));
                }
            }
        });
        let (scheme, addr) = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
            let err = std::fs::read_to_string(dir.path().join("server.err")).unwrap_or_default();
            panic!("godel serve did not start: {err}")
        });
        let url = match scheme.as_str() {
            // The test certificates name localhost.
            "https" => format!("https://localhost:{}", addr.rsplit_once(':').expect("host:port").1),
            _ => format!("http://{addr}"),
        };
        Self { child, url, dir }
    }

    /// Runs `godel <args>` against this server and returns what it printed.
    pub(crate) fn godel(&self, args: &[&str]) -> Run {
        run(self.dir.path(), &self.url, args)
    }

    /// Waits until `godel show <id> --json` reports a terminal status.
    pub(crate) fn wait_terminal(&self, id: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let task = self.godel(&["show", id, "--json"]).json();
            if ["completed", "failed", "cancelled", "dead_letter"].contains(&task["status"].as_str().unwrap_or("")) {
                return task;
            }
            assert!(Instant::now() < deadline, "task {id} did not finish: {task}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn run(dir: &Path, url: &str, args: &[&str]) -> Run {
    let output = Command::new(GODEL)
        .args(args)
        .current_dir(dir)
        .env("GODEL_SERVER", url)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Run { args: args.iter().map(|a| (*a).to_owned()).collect(), output }
}

pub(crate) struct Run {
    args: Vec<String>,
    pub(crate) output: Output,
}

impl Run {
    pub(crate) fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }

    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Asserts success and returns stdout.
    pub(crate) fn ok(&self) -> String {
        assert_eq!(self.code(), 0, "godel {:?} failed: {}{}", self.args, self.stdout(), self.stderr());
        self.stdout()
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("godel {:?} printed invalid JSON ({e}): {out}", self.args))
    }
}

pub(crate) fn bin_dir() -> PathBuf {
    Path::new(GODEL).parent().unwrap().to_path_buf()
}
