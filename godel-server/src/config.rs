//! Server configuration: defaults that need nothing, an optional
//! `godel.toml`, and `GODEL_*` environment variables on top.
//!
//! Every key is checked: an unknown key, a wrong type or a bad duration is an
//! error that names the key (and, for the file, the line).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use godel_core::adapter::{Cleanup, ProcessAdapter, ProcessConfig, WorkDir};
use godel_core::{AgentConfig, AgentId, AgentKind, Backoff, EngineConfig, SchedulingPolicy};
use serde::Deserialize;

/// Where the server listens unless configured otherwise.
pub const DEFAULT_BIND: &str = "127.0.0.1:7373";
/// The store unless configured otherwise.
pub const DEFAULT_STORE_URL: &str = "sqlite://.godel/godel.db";
/// The config file read when it exists and no other is named.
pub const DEFAULT_CONFIG_FILE: &str = "godel.toml";

/// How logs are written.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => bail!("expected human or json, got {other:?}"),
        }
    }
}

/// Everything the server needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Store URL (`sqlite://…`, `memory://`).
    pub store_url: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Engine settings.
    pub engine: EngineConfig,
    /// The agents to run.
    pub agents: Vec<AgentConfig>,
    /// Events kept for WebSocket clients that reconnect with `since`.
    pub replay_window: usize,
}

/// The file's shape. All keys are optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct File {
    bind: Option<String>,
    store: Option<String>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    engine: EngineFile,
    #[serde(default)]
    events: EventsFile,
    #[serde(default)]
    agents: Vec<AgentFile>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct EngineFile {
    policy: Option<String>,
    lease: Option<String>,
    heartbeat_interval: Option<String>,
    poll_interval: Option<String>,
    reclaim_interval: Option<String>,
    kill_grace: Option<String>,
    shutdown_grace: Option<String>,
    default_timeout: Option<String>,
    max_output_bytes: Option<usize>,
    agent_health_interval: Option<String>,
    agent_offline_after: Option<String>,
    retry_initial: Option<String>,
    retry_max: Option<String>,
    retry_multiplier: Option<f64>,
    retry_jitter: Option<f64>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct EventsFile {
    replay_window: Option<usize>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    id: String,
    name: Option<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    capacity: Option<u32>,
    command: Option<Vec<String>>,
    /// `inherit` (default), `shared`, `per-task` or `worktree`.
    isolation: Option<String>,
    workdir: Option<PathBuf>,
    repo: Option<PathBuf>,
    cleanup: Option<String>,
    default_timeout: Option<String>,
    region: Option<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
}

impl ServerConfig {
    /// Loads the configuration: defaults, then the file (`path`, else
    /// `./godel.toml` if present), then `GODEL_*` variables from `env`.
    pub fn load(path: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let path = path.map(Path::to_path_buf).or_else(|| env("GODEL_CONFIG").map(PathBuf::from));
        let file = match &path {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).exists() => read_file(Path::new(DEFAULT_CONFIG_FILE))?,
            None => File::default(),
        };
        Self::from_file(file, env)
    }

    /// Parses a TOML document (for tests and `--config -`).
    pub fn from_toml(text: &str, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let file: File = toml::from_str(text).map_err(|e| anyhow!("invalid configuration: {e}"))?;
        Self::from_file(file, env)
    }

    fn from_file(file: File, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let bind_text = env("GODEL_BIND").or(file.bind).unwrap_or_else(|| DEFAULT_BIND.to_owned());
        let bind = bind_text
            .parse()
            .with_context(|| format!("invalid bind: expected an address like 127.0.0.1:7373, got {bind_text:?}"))?;
        let store_url = env("GODEL_STORE").or(file.store).unwrap_or_else(|| DEFAULT_STORE_URL.to_owned());
        let log_format = match env("GODEL_LOG_FORMAT") {
            Some(v) => v.parse().context("invalid GODEL_LOG_FORMAT")?,
            None => file.log_format.unwrap_or_default(),
        };

        let e = file.engine;
        let mut engine = EngineConfig::default();
        let policy = env("GODEL_POLICY").or(e.policy);
        if let Some(p) = policy {
            engine.policy =
                p.parse::<SchedulingPolicy>().map_err(|err| anyhow!("invalid engine.policy: {}", err.reason))?;
        }
        let durations: [(&str, Option<String>, &mut Duration); 8] = [
            ("engine.lease", e.lease, &mut engine.lease),
            ("engine.heartbeat_interval", e.heartbeat_interval, &mut engine.heartbeat_interval),
            ("engine.poll_interval", e.poll_interval, &mut engine.poll_interval),
            ("engine.reclaim_interval", e.reclaim_interval, &mut engine.reclaim_interval),
            ("engine.kill_grace", e.kill_grace, &mut engine.kill_grace),
            ("engine.shutdown_grace", env("GODEL_SHUTDOWN_GRACE").or(e.shutdown_grace), &mut engine.shutdown_grace),
            ("engine.agent_health_interval", e.agent_health_interval, &mut engine.agent_health_interval),
            ("engine.agent_offline_after", e.agent_offline_after, &mut engine.agent_offline_after),
        ];
        for (key, value, slot) in durations {
            if let Some(v) = value {
                *slot = duration(key, &v)?;
            }
        }
        if let Some(v) = e.default_timeout {
            engine.default_timeout = Some(duration("engine.default_timeout", &v)?);
        }
        if let Some(n) = e.max_output_bytes {
            engine.max_output_bytes = n;
        }
        let mut backoff = Backoff::default();
        if let Some(v) = e.retry_initial {
            backoff.initial = duration("engine.retry_initial", &v)?;
        }
        if let Some(v) = e.retry_max {
            backoff.max = duration("engine.retry_max", &v)?;
        }
        if let Some(m) = e.retry_multiplier {
            if !(1.0..=100.0).contains(&m) {
                bail!("invalid engine.retry_multiplier: expected 1 to 100, got {m}");
            }
            backoff.multiplier = m;
        }
        if let Some(j) = e.retry_jitter {
            if !(0.0..=1.0).contains(&j) {
                bail!("invalid engine.retry_jitter: expected 0 to 1, got {j}");
            }
            backoff.jitter = j;
        }
        engine.backoff = backoff;
        engine.validate().map_err(|err| anyhow!("invalid engine.{}: {}", err.field, err.reason))?;

        let agents = if file.agents.is_empty() {
            vec![default_agent()?]
        } else {
            file.agents.into_iter().enumerate().map(|(i, a)| agent(i, a)).collect::<anyhow::Result<_>>()?
        };
        let replay_window = file.events.replay_window.unwrap_or(10_000);
        if replay_window == 0 {
            bail!("invalid events.replay_window: expected at least 1");
        }
        Ok(Self { bind, store_url, log_format, engine, agents, replay_window })
    }
}

fn read_file(path: &Path) -> anyhow::Result<File> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read configuration file {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow!("invalid configuration file {}: {e}", path.display()))
}

fn duration(key: &str, value: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(value)
        .map_err(|e| anyhow!("invalid {key}: expected a duration like \"30s\" or \"500ms\", got {value:?} ({e})"))
}

/// One local process agent running tasks' own commands, with a slot per core.
fn default_agent() -> anyhow::Result<AgentConfig> {
    let slots = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1));
    let adapter = ProcessAdapter::new(ProcessConfig::default())?;
    Ok(AgentConfig::new(AgentId::new("local")?, AgentKind::Process, Arc::new(adapter)).capacity(slots))
}

fn agent(index: usize, a: AgentFile) -> anyhow::Result<AgentConfig> {
    let key = |field: &str| format!("agents[{index}].{field}");
    let id = AgentId::new(&a.id).map_err(|e| anyhow!("invalid {}: {}", key("id"), e.reason))?;
    let cleanup = match a.cleanup.as_deref() {
        None | Some("always") => Cleanup::Always,
        Some("on-success") => Cleanup::OnSuccess,
        Some("never") => Cleanup::Never,
        Some(other) => bail!("invalid {}: expected always, on-success or never, got {other:?}", key("cleanup")),
    };
    let need = |value: Option<PathBuf>, field: &str, isolation: &str| {
        value.ok_or_else(|| anyhow!("{} is required with isolation = {isolation:?}", key(field)))
    };
    let workdir = match a.isolation.as_deref() {
        None | Some("inherit") => match a.workdir {
            Some(dir) => WorkDir::Shared(dir),
            None => WorkDir::Inherit,
        },
        Some("shared") => WorkDir::Shared(need(a.workdir, "workdir", "shared")?),
        Some("per-task") => WorkDir::PerTask { base: need(a.workdir, "workdir", "per-task")?, cleanup },
        Some("worktree") => WorkDir::GitWorktree { repo: need(a.repo, "repo", "worktree")?, cleanup },
        Some(other) => {
            bail!("invalid {}: expected inherit, shared, per-task or worktree, got {other:?}", key("isolation"))
        }
    };
    let process = ProcessConfig { command: a.command, workdir, env: a.env.into_iter().collect() };
    let adapter = ProcessAdapter::new(process).map_err(|e| anyhow!("invalid {}: {}", key("command"), e.reason))?;
    let mut config = AgentConfig::new(id, AgentKind::Process, Arc::new(adapter));
    config.name = a.name.unwrap_or_else(|| a.id.clone());
    config.capabilities = a.capabilities;
    config.max_capacity = a.capacity.unwrap_or(1);
    config.region = a.region;
    if let Some(t) = a.default_timeout {
        config.default_timeout = Some(duration(&key("default_timeout"), &t)?);
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_need_nothing() {
        let config = ServerConfig::from_toml("", &no_env).unwrap();
        assert_eq!(config.bind.to_string(), DEFAULT_BIND);
        assert_eq!(config.store_url, DEFAULT_STORE_URL);
        assert_eq!(config.agents.len(), 1);
        assert_eq!(config.agents[0].id.as_str(), "local");
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = |k: &str| (k == "GODEL_BIND").then(|| "127.0.0.1:9999".to_owned());
        let config = ServerConfig::from_toml("bind = \"0.0.0.0:1\"\n[engine]\nlease = \"1m\"", &env).unwrap();
        assert_eq!(config.bind.port(), 9999);
        assert_eq!(config.engine.lease, Duration::from_secs(60));
    }

    #[test]
    fn errors_name_the_key() {
        let err = |text: &str| ServerConfig::from_toml(text, &no_env).unwrap_err().to_string();
        assert!(err("bnd = \"x\"").contains("unknown field `bnd`"));
        assert!(err("[engine]\nlease = \"soon\"").contains("engine.lease"));
        assert!(err("[engine]\npolicy = \"fastest\"").contains("engine.policy"));
        assert!(err("[engine]\nheartbeat_interval = \"1h\"").contains("engine.heartbeat_interval"));
        assert!(err("[[agents]]\nid = \"a b\"").contains("agents[0].id"));
        assert!(err("[[agents]]\nid = \"a\"\ncommand = [\"x\", \"{nope}\"]").contains("agents[0].command"));
        assert!(err("[[agents]]\nid = \"a\"\nisolation = \"worktree\"").contains("agents[0].repo"));
        assert!(err("bind = \"localhost\"").contains("invalid bind"));
        assert!(err("[engine]\nmax_output_bytes = \"big\"").contains("max_output_bytes"));
    }
}
