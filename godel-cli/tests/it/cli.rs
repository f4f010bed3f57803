//! Each command against a live server: exit codes, `--json` output, following
//! tasks, the dead-letter queue, the event stream, and the messages users
//! see when something is wrong.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::server::{GODEL, Server, run};

#[test]
fn submit_wait_exits_zero_only_when_the_task_completes() {
    let server = Server::start();
    let done = server.godel(&["submit", "--wait", "--", "sh", "-c", "echo hello"]);
    assert_eq!(done.code(), 0, "{}", done.stderr());
    assert!(done.stderr().contains("completed"), "{}", done.stderr());

    let failed =
        server.godel(&["submit", "--wait", "--max-attempts", "2", "--", "sh", "-c", "echo broken >&2; exit 3"]);
    assert_eq!(failed.code(), 1, "{}", failed.stderr());
    let message = failed.stderr();
    assert!(message.contains("dead_letter after 2 attempt(s)") && message.contains("exit code 3: broken"), "{message}");

    // `do` streams the agent's output and shares the exit-code rule.
    let did = server.godel(&["do", "say hi"]);
    assert_eq!(did.code(), 0, "{}", did.stderr());
    assert_eq!(did.stdout(), "say hi\n");
}

#[test]
fn json_output_parses_and_matches() {
    let server = Server::start();
    let task = server.godel(&["submit", "--json", "--priority", "high", "-c", "shell", "--", "true"]).json();
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!((task["priority"].as_str(), task["status"].as_str()), (Some("high"), Some("pending")));

    // Nobody has the capability `shell`, so it stays queued.
    let list = server.godel(&["list", "--json"]).json();
    assert!(list["items"].as_array().unwrap().iter().any(|t| t["id"] == id.as_str()));
    let shown = server.godel(&["show", &id, "--json"]).json();
    assert_eq!(shown["capabilities"], serde_json::json!(["shell"]));
    let depth = server.godel(&["queue", "depth", "--json"]).json();
    assert_eq!(depth["high"], 1);
    let health = server.godel(&["queue", "health", "--json"]).json();
    assert_eq!(health["ready"], 1);
    let agents = server.godel(&["agents", "--json"]).json();
    assert_eq!(agents[0]["id"], "local");
    let filtered = server.godel(&["list", "--json", "--status", "completed"]).json();
    assert!(filtered["items"].as_array().unwrap().is_empty());

    let ok = server.godel(&["submit", "--wait", "--json", "--", "echo", "hi"]).json();
    assert_eq!(ok["status"], "completed");
    // Session changes are written in batches every 50 ms; poll for this one.
    let has_session = || {
        let sessions = server.godel(&["sessions", "--json"]).json();
        sessions.as_array().unwrap().iter().any(|s| s["task_id"] == ok["id"])
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !has_session() {
        assert!(std::time::Instant::now() < deadline, "the task's session was never listed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.godel(&["dlq", "list", "--json"]).json()["items"].as_array().unwrap().is_empty());
    // The human table names the same task.
    assert!(server.godel(&["list"]).ok().contains(&id));
}

#[test]
fn logs_follow_sees_output_until_the_end() {
    let server = Server::start();
    let id = server.godel(&["submit", "--", "sh", "-c", "echo first; sleep 0.6; echo second >&2; echo third"]).ok();
    let logs = server.godel(&["logs", "-f", id.trim()]);
    assert_eq!(logs.code(), 0, "{}", logs.stderr());
    assert_eq!(logs.stdout(), "first\nthird\n");
    assert!(logs.stderr().contains("second"), "{}", logs.stderr());
    assert!(logs.stderr().contains("task.completed"), "{}", logs.stderr());
}

#[test]
fn dlq_replay_brings_a_task_back() {
    let server = Server::start();
    let marker = server.dir.path().join("second-run");
    // Fails the first time; succeeds once the marker exists.
    let script = format!("test -e {0} || {{ touch {0}; exit 1; }}", marker.display());
    let first = server.godel(&["submit", "--wait", "--json", "--max-attempts", "1", "--", "sh", "-c", &script]);
    assert_eq!(first.code(), 1);
    let dead: serde_json::Value = serde_json::from_str(&first.stdout()).unwrap();
    assert_eq!(dead["status"], "dead_letter");
    let id = dead["id"].as_str().unwrap();
    let listed = server.godel(&["dlq", "list"]).ok();
    assert!(listed.contains(id), "{listed}");
    let export = server.godel(&["dlq", "export"]).ok();
    assert_eq!(export.lines().count(), 1);
    assert!(server.godel(&["dlq", "replay", id]).ok().contains("pending again"));
    let task = server.wait_terminal(id);
    assert_eq!((task["status"].as_str(), task["attempt"].as_u64()), (Some("completed"), Some(1)));
    assert!(server.godel(&["dlq", "replay", "--all"]).ok().contains("0 dead-lettered"));
}

#[test]
fn watch_prints_events() {
    let server = Server::start();
    let mut watch = Command::new(GODEL)
        .args(["watch", "-n", "3", "--json", "task.*"])
        .env("GODEL_SERVER", &server.url)
        // Where the local server's admin.key is found (./.godel).
        .current_dir(server.dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Give the subscription a moment, then make events until watch has its three.
    for _ in 0..50 {
        server.godel(&["submit", "--", "true"]).ok();
        if watch.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    assert!(lines.iter().all(|e| e["type"].as_str().unwrap().starts_with("task.")));
    assert!(lines.windows(2).all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));
}

#[test]
fn cancel_stops_a_running_task() {
    let server = Server::start();
    let id = server.godel(&["submit", "--", "sleep", "60.4242"]).ok().trim().to_owned();
    // Wait until it runs.
    for _ in 0..100 {
        if server.godel(&["show", &id, "--json"]).json()["status"] == "running" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.godel(&["cancel", &id]).ok().contains("is being cancelled"));
    assert_eq!(server.wait_terminal(&id)["status"], "cancelled");
    // Cancelling again is refused: it is already finished.
    let again = server.godel(&["cancel", &id]);
    assert_eq!(again.code(), 5, "{}", again.stderr());
    assert!(server.godel(&["purge", &id]).ok().contains("purged"));
    assert_eq!(server.godel(&["show", &id]).code(), 4);
}

#[test]
fn doctor_reports_a_healthy_setup() {
    let server = Server::start();
    let doctor = server.godel(&["doctor"]);
    assert_eq!(doctor.code(), 0, "{}{}", doctor.stdout(), doctor.stderr());
    assert!(doctor.stdout().contains("no problems found"));
}

#[test]
fn mistakes_get_one_line_and_a_distinct_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 9: unreachable, exit 3, with the address and the fix.
    let down = run(dir.path(), "http://127.0.0.1:9", &["list"]);
    assert_eq!(down.code(), 3);
    let message = down.stderr();
    assert!(message.contains("http://127.0.0.1:9") && message.contains("godel serve"), "{message}");
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(!message.contains("panicked") && !message.contains("Error {"), "{message}");
    let doctor = run(dir.path(), "http://127.0.0.1:9", &["doctor"]);
    assert_eq!(doctor.code(), 1);
    assert!(doctor.stdout().contains("✗"));

    let cases: [(&[&str], i32, &str); 8] = [
        (&["submit", "--priority", "urgent", "hi"], 2, "--priority"),
        (&["submit"], 2, "nothing to submit"),
        (&["submit", "--in", "soon", "hi"], 2, "--in"),
        (&["frobnicate"], 2, "Unrecognized"),
        (&["show", "not-an-id"], 2, "is not a task id"),
        (&["list", "--status", "done"], 2, "--status"),
        (&["watch", "Task"], 2, "pattern"),
        (&["--server", "ftp://x", "list"], 2, "invalid server URL"),
    ];
    for (args, code, needle) in cases {
        let r = run(dir.path(), "http://127.0.0.1:9", args);
        assert_eq!(r.code(), code, "godel {args:?}: {}", r.stderr());
        assert!(r.stderr().contains(needle), "godel {args:?}: {}", r.stderr());
        assert!(!r.stderr().contains("panicked"), "godel {args:?}: {}", r.stderr());
    }
    // Not found is its own code.
    let server = Server::start();
    let missing = server.godel(&["show", "01a1fc79-a9b7-753d-88a2-9a377601e4dd"]);
    assert_eq!(missing.code(), 4, "{}", missing.stderr());
    assert!(missing.stderr().contains("not found"));
}

#[test]
fn output_into_a_closed_pipe_is_not_a_crash() {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("'{GODEL}' help | head -n 1; exit ${{PIPESTATUS:-0}}"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Usage: godel"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
}
