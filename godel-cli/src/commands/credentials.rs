//! Where the CLI finds its API key, in order: `--api-key`, `GODEL_API_KEY`,
//! the key `godel login` saved for the server, and last the local server's
//! `admin.key` (in `GODEL_STATE_DIR`, the `state_dir` of ./godel.toml, or
//! `./.godel`), read only when the server URL is a loopback address, so
//! that a key made for this machine's server is never sent to another one.
//!
//! `godel login` keeps one key per server URL in
//! `$XDG_CONFIG_HOME/godel/credentials.toml` (else
//! `~/.config/godel/credentials.toml`), written with mode 0600 in a
//! directory of mode 0700.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::exit::{CliResult, Exit, Failure};

/// A key and where it came from (for messages; never the key itself).
pub(crate) struct Credential {
    pub(crate) key: String,
    pub(crate) source: String,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential").field("source", &self.source).finish_non_exhaustive()
    }
}

/// The saved keys: `[servers."http://host:port"] api_key = "…"`.
#[derive(Default, Deserialize, Serialize)]
struct Profiles {
    #[serde(default)]
    servers: BTreeMap<String, Profile>,
}

#[derive(Deserialize, Serialize)]
struct Profile {
    api_key: String,
}

/// The credential for `server`, if any source has one.
pub(crate) fn lookup(flag: Option<String>, server: &str) -> Option<Credential> {
    let found = |key: String, source: String| Some(Credential { key: key.trim().to_owned(), source });
    if let Some(key) = flag.filter(|k| !k.trim().is_empty()) {
        return found(key, "--api-key".into());
    }
    if let Some(key) = std::env::var("GODEL_API_KEY").ok().filter(|k| !k.trim().is_empty()) {
        return found(key, "GODEL_API_KEY".into());
    }
    if let Some(path) = profiles_path()
        && let Some(profile) = read_profiles(&path).ok().and_then(|mut p| p.servers.remove(&normalize(server)))
    {
        return found(profile.api_key, path.display().to_string());
    }
    if is_loopback(server) {
        let path = state_dir().join("admin.key");
        if let Ok(key) = fs::read_to_string(&path)
            && !key.trim().is_empty()
        {
            return found(key, path.display().to_string());
        }
    }
    None
}

/// Saves `key` for `server`, keeping the other servers' keys.
pub(crate) fn save(server: &str, key: &str) -> CliResult<PathBuf> {
    let path = profiles_path().ok_or_else(|| {
        Failure::new(Exit::Internal, "cannot find a configuration directory: set HOME or XDG_CONFIG_HOME")
    })?;
    let mut profiles = read_profiles(&path)?;
    profiles.servers.insert(normalize(server), Profile { api_key: key.to_owned() });
    write_profiles(&path, &profiles)?;
    Ok(path)
}

/// Forgets the key saved for `server`; false if there was none.
pub(crate) fn forget(server: &str) -> CliResult<bool> {
    let Some(path) = profiles_path() else { return Ok(false) };
    let mut profiles = read_profiles(&path)?;
    if profiles.servers.remove(&normalize(server)).is_none() {
        return Ok(false);
    }
    write_profiles(&path, &profiles)?;
    Ok(true)
}

/// Whether `url`'s host is a loopback address or `localhost`.
pub(crate) fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = if let Some(bracketed) = authority.strip_prefix('[') {
        bracketed.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Where the local server keeps its state: `GODEL_STATE_DIR`, the
/// `state_dir` of ./godel.toml (or `GODEL_CONFIG`), else `.godel`.
fn state_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("GODEL_STATE_DIR") {
        return dir.into();
    }
    let config = std::env::var("GODEL_CONFIG").unwrap_or_else(|_| "godel.toml".to_owned());
    fs::read_to_string(config)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("state_dir").and_then(|d| d.as_str()).map(PathBuf::from))
        .unwrap_or_else(|| ".godel".into())
}

fn profiles_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|d| !d.is_empty()).map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("godel").join("credentials.toml"))
}

/// One spelling per server: no trailing slash.
fn normalize(server: &str) -> String {
    server.trim().trim_end_matches('/').to_owned()
}

fn read_profiles(path: &Path) -> CliResult<Profiles> {
    match fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text)
            .map_err(|e| Failure::new(Exit::Internal, format!("cannot read {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profiles::default()),
        Err(e) => Err(Failure::io(&format!("cannot read {}", path.display()), &e)),
    }
}

/// Writes through a 0600 temporary file renamed over the old one, so that
/// the keys are never readable by others, not even for a moment.
fn write_profiles(path: &Path, profiles: &Profiles) -> CliResult {
    let io = |what: &str, e: std::io::Error| Failure::io(&format!("cannot {what} {}", path.display()), &e);
    let text = toml::to_string(profiles).map_err(|e| Failure::new(Exit::Internal, e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io("create the directory of", e))?;
    let temporary = dir.join(format!(".credentials.toml.{}", std::process::id()));
    let _ = fs::remove_file(&temporary);
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temporary).map_err(|e| io("write", e))?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| io("write", e))?;
    fs::rename(&temporary, path).map_err(|e| io("write", e))
}

#[cfg(test)]
mod tests {
    use crate::commands::credentials::is_loopback;

    #[test]
    fn only_loopback_hosts_are_loopback() {
        for url in ["http://127.0.0.1:7373", "http://localhost:1", "https://[::1]:7373/x", "http://127.1.2.3"] {
            assert!(is_loopback(url), "{url}");
        }
        for url in [
            "http://10.0.0.5:7373",
            "http://example.com",
            "http://127.0.0.1.example.com:7373",
            "http://localhost.evil:7373",
            "http://[::2]:7373",
        ] {
            assert!(!is_loopback(url), "{url}");
        }
    }
}
