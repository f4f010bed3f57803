//! `godel keys`, `godel audit`, `godel login`/`logout`, and where the CLI
//! finds its API key: `--api-key`, then `GODEL_API_KEY`, then the key
//! `godel login` saved for the server, then the local server's `admin.key`,
//! which is read only for a loopback server URL.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use crate::server::{GODEL, Server};

/// Runs `godel <args>` in `dir` against `url`, with its own configuration
/// directory and only the environment given.
fn godel(dir: &Path, url: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(GODEL);
    command
        .args(args)
        .current_dir(dir)
        .env("GODEL_SERVER", url)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("NO_COLOR", "1")
        .env_remove("GODEL_API_KEY")
        .env_remove("GODEL_STATE_DIR")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("godel runs")
}

fn ok(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(output)).expect("JSON")
}

#[test]
fn keys_are_managed_from_the_command_line_with_the_local_admin_key() {
    let server = Server::start();
    let dir = server.dir.path();
    let run = |args: &[&str]| godel(dir, &server.url, &[], args);

    let created =
        json(&run(&["keys", "create", "--name", "ci", "--role", "submitter", "--expires-in", "30d", "--json"]));
    let secret = created["secret"].as_str().expect("a secret").to_owned();
    let id = created["key"]["id"].as_str().expect("an id").to_owned();
    assert!(secret.starts_with("gdl_"));

    // Without --json the secret alone goes to stdout, the rest to stderr.
    let plain = run(&["keys", "create", "--name", "viewer", "--role", "viewer"]);
    let printed = ok(&plain);
    assert!(printed.trim().starts_with("gdl_") && printed.lines().count() == 1, "{printed}");
    assert!(String::from_utf8_lossy(&plain.stderr).contains("shown this once"));

    let listed = json(&run(&["keys", "list", "--json"]));
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    assert!(!listed.to_string().contains(&secret));
    assert!(ok(&run(&["keys", "list"])).contains("ci"));

    let rotated = json(&run(&["keys", "rotate", &id, "--grace", "0s", "--json"]));
    assert_eq!(rotated["previous"]["id"], id.as_str());
    let new_id = rotated["key"]["id"].as_str().expect("an id").to_owned();
    assert!(ok(&run(&["keys", "revoke", &new_id])).contains("revoked"));
    assert!(!json(&run(&["keys", "revoke", &new_id, "--json"]))["revoked_at"].is_null());

    let audit = json(&run(&["audit", "--json", "--limit", "5", "--outcome", "allowed", "--since", "1h"]));
    assert!(audit["items"].is_array(), "{audit}");

    // Bad input is a usage error (2) before any request, or refused by the server (5).
    assert_eq!(run(&["keys", "create", "--name", "x", "--role", "root"]).status.code(), Some(2));
    assert_eq!(run(&["keys", "revoke", "nope"]).status.code(), Some(2));
    assert_eq!(run(&["audit", "--outcome", "maybe"]).status.code(), Some(2));
    assert_eq!(run(&["keys", "create", "--name", "a b", "--role", "viewer"]).status.code(), Some(5));
    assert_eq!(run(&["keys", "rotate", &id, "--grace", "40d"]).status.code(), Some(5));
}

/// A stand-in server: answers every request with an empty queue depth and
/// keeps each request's `Authorization` header (or `None`).
struct Recorder {
    url: String,
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl Recorder {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("a clone"));
                let mut authorization = None;
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("authorization")
                    {
                        authorization = Some(value.trim().to_owned());
                    }
                    line.clear();
                }
                record.lock().unwrap().push(authorization);
                let body = r#"{"critical":0,"high":0,"medium":0,"low":0,"total":0}"#;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { url, seen }
    }

    /// The `Authorization` header of the last request.
    fn last(&self) -> Option<String> {
        self.seen.lock().unwrap().last().cloned().flatten()
    }
}

#[test]
fn the_credential_comes_from_the_flag_the_environment_the_login_then_the_local_admin_key() {
    let recorder = Recorder::start();
    let dir = tempfile::tempdir().expect("a directory");
    let dir = dir.path();
    std::fs::create_dir(dir.join(".godel")).expect("a state directory");
    std::fs::write(dir.join(".godel").join("admin.key"), "gdl_from-the-admin-file\n").expect("written");
    let url = recorder.url.as_str();
    let depth = ["queue", "depth", "--json"];
    let env = [("GODEL_API_KEY", "gdl_from-the-environment")];

    ok(&godel(dir, url, &env, &["--api-key", "gdl_from-the-flag", "queue", "depth", "--json"]));
    assert_eq!(recorder.last().as_deref(), Some("Bearer gdl_from-the-flag"));
    ok(&godel(dir, url, &env, &depth));
    assert_eq!(recorder.last().as_deref(), Some("Bearer gdl_from-the-environment"));
    ok(&godel(dir, url, &[], &depth));
    assert_eq!(recorder.last().as_deref(), Some("Bearer gdl_from-the-admin-file"));

    // `godel login` checks the key with the server, then saves it (0600) for this URL.
    ok(&godel(dir, url, &[], &["login", "--with-token", "gdl_from-the-login"]));
    assert_eq!(recorder.last().as_deref(), Some("Bearer gdl_from-the-login"));
    let saved = dir.join("config").join("godel").join("credentials.toml");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(&saved), mode(saved.parent().unwrap())), (0o600, 0o700));
    ok(&godel(dir, url, &[], &depth));
    assert_eq!(recorder.last().as_deref(), Some("Bearer gdl_from-the-login"));
    ok(&godel(dir, url, &env, &depth));
    assert_eq!(recorder.last().as_deref(), Some("Bearer gdl_from-the-environment"));
    // The login reads the key from standard input too, and keeps other servers' keys.
    let mut login = Command::new(GODEL)
        .args(["login", "--server", &format!("{url}/")])
        .current_dir(dir)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("godel runs");
    login.stdin.take().unwrap().write_all(b"gdl_from-standard-input\n").unwrap();
    assert!(login.wait().unwrap().success());
    ok(&godel(dir, url, &[], &depth));
    assert_eq!(recorder.last().as_deref(), Some("Bearer gdl_from-standard-input"));
    ok(&godel(dir, url, &[], &["logout"]));
    ok(&godel(dir, url, &[], &depth));
    assert_eq!(recorder.last().as_deref(), Some("Bearer gdl_from-the-admin-file"));

    // A server that is not on loopback never gets the local admin key: the
    // request reaches the recorder as a proxy, without a credential.
    let remote = "http://godel.example:7373";
    let proxy = [("HTTP_PROXY", url), ("http_proxy", url), ("NO_PROXY", ""), ("no_proxy", "")];
    ok(&godel(dir, remote, &proxy, &depth));
    assert_eq!(recorder.seen.lock().unwrap().len(), 10, "the request went through the proxy");
    assert_eq!(recorder.last(), None);
    // GODEL_STATE_DIR moves the file the CLI looks in.
    std::fs::create_dir(dir.join("elsewhere")).unwrap();
    std::fs::write(dir.join("elsewhere").join("admin.key"), "gdl_from-elsewhere\n").unwrap();
    let elsewhere = dir.join("elsewhere");
    ok(&godel(dir, url, &[("GODEL_STATE_DIR", elsewhere.to_str().unwrap())], &depth));
    assert_eq!(recorder.last().as_deref(), Some("Bearer gdl_from-elsewhere"));
}

#[test]
fn login_checks_an_https_server_against_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, certified.cert.pem()).unwrap();
    std::fs::write(&key_file, certified.key_pair.serialize_pem()).unwrap();
    let tls = format!("\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n", cert_file.display(), key_file.display());
    let server = Server::start_with(dir, &tls);
    let dir = server.dir.path();
    assert!(server.url.starts_with("https://localhost:"), "{}", server.url);
    let admin = std::fs::read_to_string(dir.join(".godel").join("admin.key")).unwrap();
    let ca_file = cert_file.to_str().unwrap();
    let login = ["login", "--with-token", admin.trim()];

    // The server's certificate is not one the web trusts: without the CA file the login fails and saves nothing.
    let refused = godel(dir, &server.url, &[], &login);
    assert!(!refused.status.success(), "{}", String::from_utf8_lossy(&refused.stdout));
    let saved = dir.join("config").join("godel").join("credentials.toml");
    assert!(!saved.exists());

    let trusting: Vec<&str> = ["--ca-file", ca_file].into_iter().chain(login).collect();
    ok(&godel(dir, &server.url, &[], &trusting));
    assert!(std::fs::read_to_string(&saved).unwrap().contains(&server.url));
    // GODEL_CA_FILE does the same for the other commands.
    let depth = json(&godel(dir, &server.url, &[("GODEL_CA_FILE", ca_file)], &["queue", "depth", "--json"]));
    assert!(depth.is_object(), "{depth}");
}
