//! Server configuration: defaults that need nothing, an optional
//! `godel.toml`, and `GODEL_*` environment variables on top.
//!
//! Every key is checked: an unknown key, a wrong type or a bad duration is an
//! error that names the key (and, for the file, the line).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use godel_core::adapter::openclaw::{Autostart, GatewayAuth, GatewayConfig};
use godel_core::adapter::{Cleanup, HttpAdapter, HttpConfig, Price, ProcessAdapter, ProcessConfig, WorkDir};
use godel_core::engine::{Budget, Budgets, format_micros, micros_from_units};
use godel_core::{AgentConfig, AgentId, AgentKind, Backoff, EngineConfig, SchedulingPolicy, TenantId};
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

/// Everything the server needs to start. Its `Debug` shows the store URL
/// without its password and leaves out anything else secret.
#[derive(Clone)]
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
    /// OpenClaw gateways (`[[gateways]]`), one engine agent each.
    pub gateways: Vec<GatewayConfig>,
    /// Where Godel keeps state such as its OpenClaw device key (`state_dir`, default `.godel`).
    pub state_dir: PathBuf,
    /// Who may call the API (`[auth]`).
    pub auth: AuthConfig,
    /// HTTPS and WSS (`[tls]`); plain HTTP when absent.
    pub tls: Option<TlsConfig>,
    /// Connection limits and timeouts (`[limits]`).
    pub limits: Limits,
    /// Remote workers (`[workers]`).
    pub workers: WorkersConfig,
    /// What gateways registered through the API may use (`[gateways_api]`).
    pub gateways_api: GatewaysApi,
    /// How long the audit log keeps entries (`[audit]`).
    pub audit: AuditConfig,
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
    state_dir: Option<PathBuf>,
    #[serde(default)]
    gateways: Vec<GatewayFile>,
    #[serde(default)]
    prices: BTreeMap<String, PriceFile>,
    #[serde(default)]
    budgets: BudgetsFile,
    #[serde(default)]
    auth: AuthFile,
    tls: Option<TlsFile>,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    workers: WorkersFile,
    #[serde(default)]
    gateways_api: GatewaysApiFile,
    #[serde(default)]
    audit: AuditFile,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct EngineFile {
    node: Option<String>,
    region: Option<String>,
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
    /// `process` (default) or `http`; the keys below are for `http`.
    kind: Option<String>,
    url: Option<String>,
    api_key_env: Option<String>,
    models: Option<Vec<String>>,
    stream: Option<bool>,
    system_prompt: Option<String>,
    request_timeout: Option<String>,
    max_retry_after: Option<String>,
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
        if let Some(node) = env("GODEL_NODE").or(e.node) {
            engine.node = node;
        }
        engine.region = env("GODEL_REGION").or(e.region);
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
        engine.budgets = budgets(&file.budgets)?;
        engine.validate().map_err(|err| anyhow!("invalid engine.{}: {}", err.field, err.reason))?;
        let prices = prices(&file.prices)?;
        let budgeted = engine.budgets != Budgets::default();
        let http = HttpContext { prices: &prices, budgeted, env };
        let state_dir = env("GODEL_STATE_DIR").map(PathBuf::from).or(file.state_dir).unwrap_or_else(|| ".godel".into());
        // Process agents record their live runs here, so that a restart reaps what a crash left.
        let runs = state_dir.join("runs");

        let agents = if file.agents.is_empty() {
            vec![default_agent(&runs)?]
        } else {
            file.agents
                .into_iter()
                .enumerate()
                .map(|(i, a)| agent(i, a, &http, &runs))
                .collect::<anyhow::Result<_>>()?
        };
        let replay_window = file.events.replay_window.unwrap_or(10_000);
        if replay_window == 0 {
            bail!("invalid events.replay_window: expected at least 1");
        }
        let gateways = gateways(file.gateways, env)?;
        let auth = auth(file.auth, env)?;
        let tls = tls(file.tls, env)?;
        let limits = limits(file.limits, env)?;
        let workers = workers(file.workers, env)?;
        let gateways_api = gateways_api(file.gateways_api, env);
        let audit = audit(file.audit, env)?;
        Ok(Self {
            bind,
            store_url,
            log_format,
            engine,
            agents,
            replay_window,
            gateways,
            state_dir,
            auth,
            tls,
            limits,
            workers,
            gateways_api,
            audit,
        })
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
fn default_agent(runs: &Path) -> anyhow::Result<AgentConfig> {
    let slots = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(1));
    let adapter = ProcessAdapter::new(ProcessConfig { runs: Some(runs.to_owned()), ..ProcessConfig::default() })?;
    Ok(AgentConfig::new(AgentId::new("local")?, AgentKind::Process, Arc::new(adapter)).capacity(slots))
}

fn agent(index: usize, a: AgentFile, http: &HttpContext<'_>, runs: &Path) -> anyhow::Result<AgentConfig> {
    let key = |field: &str| format!("agents[{index}].{field}");
    let id = AgentId::new(&a.id).map_err(|e| anyhow!("invalid {}: {}", key("id"), e.reason))?;
    match a.kind.as_deref() {
        None | Some("process") => only_for_http(index, &a)?,
        Some("http") => return http_agent(index, id, a, http),
        Some(other) => bail!("invalid {}: expected process or http, got {other:?}", key("kind")),
    }
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
    let process =
        ProcessConfig { command: a.command, workdir, env: a.env.into_iter().collect(), runs: Some(runs.to_owned()) };
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

/// A model's prices in the file: currency units per million tokens.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    input_per_million: f64,
    output_per_million: f64,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct BudgetsFile {
    default: Option<BudgetFile>,
    #[serde(default)]
    tenants: BTreeMap<String, BudgetFile>,
}

/// A budget in the file: currency units per calendar month.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct BudgetFile {
    soft: Option<f64>,
    hard: Option<f64>,
}

/// What building an http agent needs besides its own keys.
struct HttpContext<'a> {
    prices: &'a BTreeMap<String, Price>,
    /// Budgets are set, so every model needs a price.
    budgeted: bool,
    env: &'a dyn Fn(&str) -> Option<String>,
}

/// An amount in currency units from the file, in micros.
fn money(key: &str, units: f64) -> anyhow::Result<u64> {
    micros_from_units(units).ok_or_else(|| {
        anyhow!("invalid {key}: expected a non-negative amount with at most 6 decimals (a micro), got {units}")
    })
}

fn prices(file: &BTreeMap<String, PriceFile>) -> anyhow::Result<BTreeMap<String, Price>> {
    file.iter()
        .map(|(model, p)| {
            let key = |field: &str| format!("prices.{model:?}.{field}");
            let price = Price {
                input_per_million: money(&key("input_per_million"), p.input_per_million)?,
                output_per_million: money(&key("output_per_million"), p.output_per_million)?,
            };
            Ok((model.clone(), price))
        })
        .collect()
}

fn budgets(file: &BudgetsFile) -> anyhow::Result<Budgets> {
    let budget = |key: &str, b: &BudgetFile| -> anyhow::Result<Budget> {
        let soft = b.soft.map(|v| money(&format!("{key}.soft"), v)).transpose()?;
        let hard = b.hard.map(|v| money(&format!("{key}.hard"), v)).transpose()?;
        if let (Some(soft), Some(hard)) = (soft, hard)
            && soft > hard
        {
            bail!(
                "invalid {key}: soft ({}) is above hard ({}); the soft limit warns before the hard one refuses",
                format_micros(soft),
                format_micros(hard)
            );
        }
        Ok(Budget { soft, hard })
    };
    let mut budgets = Budgets::default();
    if let Some(default) = &file.default {
        budgets.default = budget("budgets.default", default)?;
    }
    for (tenant, b) in &file.tenants {
        let key = format!("budgets.tenants.{tenant:?}");
        let id = TenantId::new(tenant).map_err(|e| anyhow!("invalid {key}: {}", e.reason))?;
        budgets.tenants.insert(id, budget(&key, b)?);
    }
    Ok(budgets)
}

/// Refuses the http-only keys on a process agent.
fn only_for_http(index: usize, a: &AgentFile) -> anyhow::Result<()> {
    let set = [
        ("url", a.url.is_some()),
        ("api_key_env", a.api_key_env.is_some()),
        ("models", a.models.is_some()),
        ("stream", a.stream.is_some()),
        ("system_prompt", a.system_prompt.is_some()),
        ("request_timeout", a.request_timeout.is_some()),
        ("max_retry_after", a.max_retry_after.is_some()),
    ];
    match set.iter().find(|(_, set)| *set) {
        Some((field, _)) => bail!("invalid agents[{index}].{field}: only agents with kind = \"http\" take it"),
        None => Ok(()),
    }
}

/// An agent of kind `http`: an OpenAI-compatible endpoint and its chain of models.
fn http_agent(index: usize, id: AgentId, a: AgentFile, http: &HttpContext<'_>) -> anyhow::Result<AgentConfig> {
    let key = |field: &str| format!("agents[{index}].{field}");
    let process_only = [
        ("command", a.command.is_some()),
        ("isolation", a.isolation.is_some()),
        ("workdir", a.workdir.is_some()),
        ("repo", a.repo.is_some()),
        ("cleanup", a.cleanup.is_some()),
        ("env", !a.env.is_empty()),
    ];
    if let Some((field, _)) = process_only.iter().find(|(_, set)| *set) {
        bail!("invalid {}: agents with kind = \"http\" run no process", key(field));
    }
    let url = a.url.ok_or_else(|| anyhow!("{} is required with kind = \"http\"", key("url")))?;
    let models = a.models.ok_or_else(|| anyhow!("{} is required with kind = \"http\"", key("models")))?;
    let mut config = HttpConfig::new(url, models);
    if let Some(var) = a.api_key_env {
        let value = (http.env)(&var).filter(|v| !v.is_empty());
        let value = value.ok_or_else(|| {
            anyhow!("invalid {}: the environment variable {var} is not set (it holds the API key)", key("api_key_env"))
        })?;
        config.api_key = Some(value);
    }
    if let Some(stream) = a.stream {
        config.stream = stream;
    }
    config.system_prompt = a.system_prompt;
    if let Some(t) = a.request_timeout {
        config.request_timeout = duration(&key("request_timeout"), &t)?;
    }
    if let Some(t) = a.max_retry_after {
        config.max_retry_after = duration(&key("max_retry_after"), &t)?;
    }
    for model in &config.models {
        match http.prices.get(model) {
            Some(price) => {
                config.prices.insert(model.clone(), *price);
            }
            None if http.budgeted => bail!(
                "invalid {}: model {model:?} has no [prices.{model:?}] entry, and budgets are set: its spend could not be counted",
                key("models")
            ),
            None => {}
        }
    }
    let adapter = HttpAdapter::new(config).map_err(|e| anyhow!("invalid {}: {}", key(e.field), e.reason))?;
    let mut agent = AgentConfig::new(id, AgentKind::Http, Arc::new(adapter));
    agent.name = a.name.unwrap_or_else(|| a.id.clone());
    agent.capabilities = a.capabilities;
    agent.max_capacity = a.capacity.unwrap_or(1);
    agent.region = a.region;
    if let Some(t) = a.default_timeout {
        agent.default_timeout = Some(duration(&key("default_timeout"), &t)?);
    }
    Ok(agent)
}

/// One `[[gateways]]` entry: an OpenClaw gateway (see docs/openclaw.md).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct GatewayFile {
    name: String,
    url: String,
    token: Option<String>,
    token_env: Option<String>,
    password: Option<String>,
    password_env: Option<String>,
    #[serde(default)]
    agents: Vec<String>,
    #[serde(default)]
    capabilities: Vec<String>,
    max_sessions: Option<u32>,
    region: Option<String>,
    autostart: Option<AutostartFile>,
    connect_timeout: Option<String>,
    reconnect_max: Option<String>,
    reconcile_timeout: Option<String>,
    abort_timeout: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct AutostartFile {
    command: Vec<String>,
    probe_initial: Option<String>,
    probe_max: Option<String>,
}

fn gateways(files: Vec<GatewayFile>, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Vec<GatewayConfig>> {
    let mut out: Vec<GatewayConfig> = Vec::new();
    for (i, g) in files.into_iter().enumerate() {
        let key = |field: &str| format!("gateways[{i}].{field}");
        let secret = |value: Option<String>, var: Option<String>, field: &str| -> anyhow::Result<Option<String>> {
            match (value, var) {
                (Some(_), Some(_)) => bail!("invalid {}: give {field} or {field}_env, not both", key(field)),
                (Some(v), None) => Ok(Some(v)),
                (None, Some(var)) => match env(&var) {
                    Some(v) if !v.is_empty() => Ok(Some(v)),
                    _ => bail!("invalid {}: the environment variable {var} is not set", key(&format!("{field}_env"))),
                },
                (None, None) => Ok(None),
            }
        };
        let auth = match (secret(g.token, g.token_env, "token")?, secret(g.password, g.password_env, "password")?) {
            (Some(_), Some(_)) => bail!("invalid {}: give a token or a password, not both", key("token")),
            (Some(t), None) => GatewayAuth::Token(t),
            (None, Some(p)) => GatewayAuth::Password(p),
            (None, None) => GatewayAuth::None,
        };
        let mut config = GatewayConfig::new(g.name, g.url);
        config.auth = auth;
        config.agents = g.agents;
        config.capabilities = g.capabilities;
        config.region = g.region;
        if let Some(n) = g.max_sessions {
            config.max_sessions = n;
        }
        let t = &mut config.timing;
        let durations = [
            ("connect_timeout", g.connect_timeout, &mut t.connect_timeout),
            ("reconnect_max", g.reconnect_max, &mut t.backoff_max),
            ("reconcile_timeout", g.reconcile_timeout, &mut t.reconcile_timeout),
            ("abort_timeout", g.abort_timeout, &mut t.abort_timeout),
        ];
        for (field, value, slot) in durations {
            if let Some(v) = value {
                *slot = duration(&key(field), &v)?;
            }
        }
        if let Some(a) = g.autostart {
            if let Some(v) = a.probe_initial {
                config.timing.backoff_initial = duration(&key("autostart.probe_initial"), &v)?;
            }
            if let Some(v) = a.probe_max {
                config.timing.backoff_max = duration(&key("autostart.probe_max"), &v)?;
            }
            config.autostart = Some(Autostart { command: a.command });
        }
        config.validate().map_err(|e| anyhow!("invalid {}: {}", key(e.field), e.reason))?;
        if out.iter().any(|o| o.name == config.name) {
            bail!("invalid {}: a gateway named {:?} is configured twice", key("name"), config.name);
        }
        out.push(config);
    }
    Ok(out)
}

/// `[auth]`: public probes, the Origin and Host allow-lists, JWT and rate limits.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// `/health` (the deep probe) answers without a credential.
    pub public_health: bool,
    /// `/metrics` answers without a credential.
    pub public_metrics: bool,
    /// Origins allowed besides loopback ones on the server's port (`https://ops.example.com`).
    pub allowed_origins: Vec<String>,
    /// Host names allowed besides loopback names and the bind address.
    pub allowed_hosts: Vec<String>,
    /// JWT authentication, when `[auth.jwt]` is present.
    pub jwt: Option<JwtConfig>,
    /// Requests per second per credential; the burst is twice that.
    pub per_credential: u32,
    /// Failed authentications per minute per source address.
    pub failed_per_source: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            public_health: false,
            public_metrics: false,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            jwt: None,
            per_credential: 2_000,
            failed_per_source: 10,
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Listed by hand so that the store's password stays out of logs; a
        // field added later stays out too until it is listed here.
        f.debug_struct("ServerConfig")
            .field("bind", &self.bind)
            .field("store_url", &redact_url(&self.store_url))
            .field("log_format", &self.log_format)
            .field("engine", &self.engine)
            .field("agents", &self.agents)
            .field("replay_window", &self.replay_window)
            .field("gateways", &self.gateways)
            .field("state_dir", &self.state_dir)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("limits", &self.limits)
            .field("workers", &self.workers)
            .field("gateways_api", &self.gateways_api)
            .field("audit", &self.audit)
            .finish_non_exhaustive()
    }
}

/// A URL as it may be logged or put in an error: `user:password@` becomes
/// `user:***@`, and a `password=` query parameter loses its value.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            // The authority ends at the first `/`; its userinfo at the last `@`.
            let end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
                    None => base.to_owned(),
                },
                None => base.to_owned(),
            }
        }
        None => base.to_owned(),
    };
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// `[tls]`: the certificate chain and private key the server presents.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first (`tls.cert_file`).
    pub cert_file: PathBuf,
    /// PEM private key (`tls.key_file`): PKCS#8, PKCS#1 or SEC1.
    pub key_file: PathBuf,
}

/// `[limits]`: what a connection may hold and for how long.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Limits {
    /// Open connections at most, WebSockets included; beyond it a new
    /// connection is closed at once (`limits.max_connections`, 10,000).
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, from its
    /// first byte or from the end of the previous request
    /// (`limits.header_read_timeout`, 10 s).
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and no bytes moving for
    /// this long is closed (`limits.idle_timeout`, 75 s). WebSockets have
    /// their own pings instead.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
        }
    }
}

/// `[auth.jwt]`: which tokens are accepted. One algorithm, pinned.
#[derive(Clone)]
pub struct JwtConfig {
    /// Where the verifying key comes from; it fixes the algorithm.
    pub key: JwtKey,
    /// The `iss` every token must carry.
    pub issuer: String,
    /// The `aud` every token must carry.
    pub audience: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
    /// Longest a token may live (`exp` minus `iat`, or minus `nbf` without `iat`).
    pub max_lifetime: Duration,
}

/// The verifying key of `[auth.jwt]`. `Debug` never shows a secret.
#[derive(Clone)]
pub enum JwtKey {
    /// `HS256`: the shared secret (at least 32 bytes), read from `secret_env`.
    Hs256(Vec<u8>),
    /// `EdDSA`: an Ed25519 public key, PEM.
    EdDsa(PathBuf),
    /// `RS256`: an RSA public key, PEM.
    Rs256(PathBuf),
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKey::Hs256(_) => f.write_str("Hs256(<secret>)"),
            JwtKey::EdDsa(path) => f.debug_tuple("EdDsa").field(path).finish(),
            JwtKey::Rs256(path) => f.debug_tuple("Rs256").field(path).finish(),
        }
    }
}

/// `[workers]`: what a remote worker may ask for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct WorkersConfig {
    /// The largest concurrency a worker may declare (`workers.max_capacity`, 64).
    pub max_capacity: u32,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        Self { max_capacity: 64 }
    }
}

/// `[gateways_api]`: limits on gateways registered through the API.
/// Gateways in `godel.toml` are trusted and not held to these.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GatewaysApi {
    /// Environment variables a registration may name in `token_env` or
    /// `password_env` (`gateways_api.allowed_token_env`, none by default).
    pub allowed_token_env: Vec<String>,
    /// Hosts a registration's URL may point at (`gateways_api.allowed_hosts`,
    /// loopback names by default).
    pub allowed_hosts: Vec<String>,
}

impl Default for GatewaysApi {
    fn default() -> Self {
        Self {
            allowed_token_env: Vec::new(),
            allowed_hosts: ["127.0.0.1", "localhost", "::1"].map(str::to_owned).to_vec(),
        }
    }
}

/// `[audit]`: how long the audit log keeps entries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AuditConfig {
    /// Entries older than this are deleted (`audit.retention`, 90 days);
    /// `None` (`"off"`) keeps them all.
    pub retention: Option<Duration>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { retention: Some(Duration::from_secs(90 * 24 * 3600)) }
    }
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("key", &self.key)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .field("max_lifetime", &self.max_lifetime)
            .finish()
    }
}

/// Shortest HS256 secret accepted: as long as the hash's output.
const MIN_JWT_SECRET: usize = 32;

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    public_health: Option<bool>,
    public_metrics: Option<bool>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    allowed_hosts: Vec<String>,
    jwt: Option<JwtFile>,
    #[serde(default)]
    rate_limit: RateLimitFile,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct JwtFile {
    algorithm: String,
    secret_env: Option<String>,
    public_key_file: Option<PathBuf>,
    issuer: String,
    audience: String,
    leeway: Option<String>,
    max_lifetime: Option<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct RateLimitFile {
    per_credential: Option<u32>,
    failed_per_source: Option<u32>,
}

fn auth(file: AuthFile, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<AuthConfig> {
    let flag = |var: &str, value: Option<bool>| -> anyhow::Result<bool> {
        match env(var) {
            Some(v) => v.parse().map_err(|_| anyhow!("invalid {var}: expected true or false, got {v:?}")),
            None => Ok(value.unwrap_or(false)),
        }
    };
    let defaults = AuthConfig::default();
    let positive = |key: &str, value: Option<u32>, default: u32| -> anyhow::Result<u32> {
        match value {
            Some(0) => bail!("invalid {key}: expected at least 1"),
            Some(n) => Ok(n),
            None => Ok(default),
        }
    };
    for origin in &file.allowed_origins {
        let trimmed = origin.trim_end_matches('/');
        let scheme = trimmed.strip_prefix("http://").or_else(|| trimmed.strip_prefix("https://"));
        if scheme.is_none_or(|rest| rest.is_empty() || rest.contains('/')) {
            bail!(
                "invalid auth.allowed_origins: expected scheme://host[:port] like https://ops.example.com, got {origin:?}"
            );
        }
    }
    Ok(AuthConfig {
        public_health: flag("GODEL_AUTH_PUBLIC_HEALTH", file.public_health)?,
        public_metrics: flag("GODEL_AUTH_PUBLIC_METRICS", file.public_metrics)?,
        allowed_origins: file.allowed_origins.iter().map(|o| o.trim_end_matches('/').to_ascii_lowercase()).collect(),
        allowed_hosts: file.allowed_hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        jwt: file.jwt.map(|jwt| jwt_config(jwt, env)).transpose()?,
        per_credential: positive(
            "auth.rate_limit.per_credential",
            file.rate_limit.per_credential,
            defaults.per_credential,
        )?,
        failed_per_source: positive(
            "auth.rate_limit.failed_per_source",
            file.rate_limit.failed_per_source,
            defaults.failed_per_source,
        )?,
    })
}

fn jwt_config(file: JwtFile, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<JwtConfig> {
    let public_key = |algorithm: &str| {
        if file.secret_env.is_some() {
            bail!("invalid auth.jwt.secret_env: only HS256 takes a secret; {algorithm} verifies with public_key_file");
        }
        file.public_key_file
            .clone()
            .ok_or_else(|| anyhow!("auth.jwt.public_key_file is required with algorithm = {algorithm:?}"))
    };
    let key = match file.algorithm.as_str() {
        "HS256" => {
            if file.public_key_file.is_some() {
                bail!("invalid auth.jwt.public_key_file: HS256 verifies with a shared secret (secret_env)");
            }
            let var =
                file.secret_env.as_deref().ok_or_else(|| anyhow!("auth.jwt.secret_env is required with HS256"))?;
            let secret = env(var).unwrap_or_default();
            if secret.len() < MIN_JWT_SECRET {
                bail!(
                    "invalid auth.jwt.secret_env: the environment variable {var} must hold at least {MIN_JWT_SECRET} bytes, it holds {}",
                    secret.len()
                );
            }
            JwtKey::Hs256(secret.into_bytes())
        }
        "EdDSA" => JwtKey::EdDsa(public_key("EdDSA")?),
        "RS256" => JwtKey::Rs256(public_key("RS256")?),
        other => bail!("invalid auth.jwt.algorithm: expected HS256, EdDSA or RS256, got {other:?}"),
    };
    if file.issuer.is_empty() || file.audience.is_empty() {
        bail!("invalid auth.jwt: issuer and audience must not be empty");
    }
    let leeway = file.leeway.map(|v| duration("auth.jwt.leeway", &v)).transpose()?.unwrap_or(Duration::from_secs(30));
    let max_lifetime = file
        .max_lifetime
        .map(|v| duration("auth.jwt.max_lifetime", &v))
        .transpose()?
        .unwrap_or(Duration::from_secs(24 * 3600));
    Ok(JwtConfig { key, issuer: file.issuer, audience: file.audience, leeway, max_lifetime })
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_connections: Option<usize>,
    header_read_timeout: Option<String>,
    idle_timeout: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct WorkersFile {
    max_capacity: Option<u32>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct AuditFile {
    retention: Option<String>,
}

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct GatewaysApiFile {
    allowed_token_env: Option<Vec<String>>,
    allowed_hosts: Option<Vec<String>>,
}

/// `[tls]`, or `GODEL_TLS_CERT_FILE` and `GODEL_TLS_KEY_FILE`: both or neither.
fn tls(file: Option<TlsFile>, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Option<TlsConfig>> {
    let (cert, key) = file.map(|f| (f.cert_file, f.key_file)).unwrap_or_default();
    let cert = env("GODEL_TLS_CERT_FILE").map(PathBuf::from).or(cert);
    let key = env("GODEL_TLS_KEY_FILE").map(PathBuf::from).or(key);
    match (cert, key) {
        (Some(cert_file), Some(key_file)) => Ok(Some(TlsConfig { cert_file, key_file })),
        (None, None) => Ok(None),
        (Some(_), None) => bail!("invalid tls.key_file: required with tls.cert_file"),
        (None, Some(_)) => bail!("invalid tls.cert_file: required with tls.key_file"),
    }
}

fn limits(file: LimitsFile, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Limits> {
    let mut limits = Limits::default();
    let max = env("GODEL_LIMITS_MAX_CONNECTIONS")
        .map(|v| {
            v.parse::<usize>().map_err(|_| anyhow!("invalid GODEL_LIMITS_MAX_CONNECTIONS: expected a count, got {v:?}"))
        })
        .transpose()?
        .or(file.max_connections);
    if let Some(max) = max {
        if max == 0 {
            bail!("invalid limits.max_connections: expected at least 1");
        }
        limits.max_connections = max;
    }
    let durations = [
        (
            "limits.header_read_timeout",
            env("GODEL_LIMITS_HEADER_READ_TIMEOUT").or(file.header_read_timeout),
            &mut limits.header_read_timeout,
        ),
        ("limits.idle_timeout", env("GODEL_LIMITS_IDLE_TIMEOUT").or(file.idle_timeout), &mut limits.idle_timeout),
    ];
    for (key, value, slot) in durations {
        if let Some(v) = value {
            *slot = duration(key, &v)?;
            if slot.is_zero() {
                bail!("invalid {key}: expected more than zero");
            }
        }
    }
    Ok(limits)
}

fn workers(file: WorkersFile, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<WorkersConfig> {
    let max = env("GODEL_WORKERS_MAX_CAPACITY")
        .map(|v| {
            v.parse::<u32>().map_err(|_| anyhow!("invalid GODEL_WORKERS_MAX_CAPACITY: expected a count, got {v:?}"))
        })
        .transpose()?
        .or(file.max_capacity);
    match max {
        Some(n) if !(1..=godel_core::agent::MAX_CAPACITY).contains(&n) => {
            bail!("invalid workers.max_capacity: expected 1 to {}, got {n}", godel_core::agent::MAX_CAPACITY)
        }
        Some(max_capacity) => Ok(WorkersConfig { max_capacity }),
        None => Ok(WorkersConfig::default()),
    }
}

/// `[audit]`, or `GODEL_AUDIT_RETENTION`: a duration like `"90days"`, or `"off"`.
fn audit(file: AuditFile, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<AuditConfig> {
    let Some(value) = env("GODEL_AUDIT_RETENTION").or(file.retention) else {
        return Ok(AuditConfig::default());
    };
    if value == "off" {
        return Ok(AuditConfig { retention: None });
    }
    let retention = humantime::parse_duration(&value).map_err(|e| {
        anyhow!("invalid audit.retention: expected a duration like \"90days\", or \"off\", got {value:?} ({e})")
    })?;
    if retention < Duration::from_secs(3600) {
        bail!("invalid audit.retention: expected at least 1 hour, or \"off\", got {value:?}");
    }
    Ok(AuditConfig { retention: Some(retention) })
}

/// `[gateways_api]`; the variables `GODEL_GATEWAYS_API_ALLOWED_TOKEN_ENV` and
/// `GODEL_GATEWAYS_API_ALLOWED_HOSTS` take comma-separated lists.
fn gateways_api(file: GatewaysApiFile, env: &dyn Fn(&str) -> Option<String>) -> GatewaysApi {
    let list = |var: &str| {
        env(var).map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect::<Vec<_>>())
    };
    let mut api = GatewaysApi::default();
    if let Some(names) = list("GODEL_GATEWAYS_API_ALLOWED_TOKEN_ENV").or(file.allowed_token_env) {
        api.allowed_token_env = names;
    }
    if let Some(hosts) = list("GODEL_GATEWAYS_API_ALLOWED_HOSTS").or(file.allowed_hosts) {
        api.allowed_hosts = hosts;
    }
    api
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
    fn gateways_are_parsed_and_checked() {
        let env = |k: &str| (k == "OC_TOKEN").then(|| "secret".to_owned());
        let text = "[[gateways]]\nname = \"home\"\nurl = \"ws://127.0.0.1:18789\"\ntoken_env = \"OC_TOKEN\"\n\
                    agents = [\"main\", \"coder\"]\nmax_sessions = 20\nregion = \"eu\"\nreconcile_timeout = \"10s\"\n\
                    autostart = { command = [\"openclaw\", \"gateway\", \"run\"], probe_max = \"5s\" }";
        let config = ServerConfig::from_toml(text, &env).unwrap();
        let g = &config.gateways[0];
        assert_eq!(g.auth, GatewayAuth::Token("secret".into()));
        assert_eq!(g.capacity(), 18);
        assert_eq!(g.timing.reconcile_timeout, Duration::from_secs(10));
        assert_eq!(g.timing.backoff_max, Duration::from_secs(5));
        assert_eq!(g.routing_capabilities(), ["agent:coder", "agent:main", "region:eu"]);
        assert_eq!(config.state_dir, PathBuf::from(".godel"));
        let err = |text: &str| ServerConfig::from_toml(text, &no_env).unwrap_err().to_string();
        let one = "[[gateways]]\nname = \"a\"\nurl = \"ws://127.0.0.1:1\"\n";
        assert!(err("[[gateways]]\nname = \"a\"\nurl = \"http://x\"").contains("gateways[0].url"));
        assert!(err(&format!("{one}tokn = \"x\"")).contains("unknown field `tokn`"));
        assert!(err(&format!("{one}token_env = \"NOPE\"")).contains("gateways[0].token_env"));
        assert!(err(&format!("{one}token = \"a\"\npassword = \"b\"")).contains("gateways[0].token"));
        assert!(err(&format!("{one}max_sessions = 0")).contains("gateways[0].max_sessions"));
        assert!(err(&format!("{one}{one}")).contains("gateways[1].name"));
        assert!(err(&format!("{one}reconnect_max = \"soon\"")).contains("gateways[0].reconnect_max"));
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

    #[test]
    fn network_sections_are_parsed_and_checked() {
        let config = ServerConfig::from_toml("", &no_env).unwrap();
        assert_eq!(config.tls, None);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.workers.max_capacity, 64);
        assert!(config.gateways_api.allowed_token_env.is_empty());
        assert_eq!(config.gateways_api.allowed_hosts, ["127.0.0.1", "localhost", "::1"]);
        let text = "[tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n\
                    [limits]\nmax_connections = 5\nheader_read_timeout = \"2s\"\nidle_timeout = \"3s\"\n\
                    [workers]\nmax_capacity = 8\n\
                    [gateways_api]\nallowed_token_env = [\"OC_TOKEN\"]\nallowed_hosts = [\"gw.internal\"]\n";
        let env = |k: &str| (k == "GODEL_LIMITS_IDLE_TIMEOUT").then(|| "4s".to_owned());
        let config = ServerConfig::from_toml(text, &env).unwrap();
        assert_eq!(config.tls.unwrap().key_file, PathBuf::from("k.pem"));
        assert_eq!(config.limits.max_connections, 5);
        assert_eq!(config.limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(config.limits.idle_timeout, Duration::from_secs(4));
        assert_eq!(config.workers.max_capacity, 8);
        assert_eq!(config.gateways_api.allowed_token_env, ["OC_TOKEN"]);
        assert_eq!(config.gateways_api.allowed_hosts, ["gw.internal"]);
        let err = |text: &str| ServerConfig::from_toml(text, &no_env).unwrap_err().to_string();
        assert!(err("[tls]\ncert_file = \"c.pem\"").contains("tls.key_file"));
        assert!(err("[limits]\nmax_connections = 0").contains("limits.max_connections"));
        assert!(err("[limits]\nidle_timeout = \"0s\"").contains("limits.idle_timeout"));
        assert!(err("[limits]\nheader_read_timeout = \"soon\"").contains("limits.header_read_timeout"));
        assert!(err("[workers]\nmax_capacity = 0").contains("workers.max_capacity"));
        assert!(err("[gateways_api]\nallowed_tokens = []").contains("unknown field `allowed_tokens`"));
    }

    #[test]
    fn secrets_stay_out_of_debug_and_urls() {
        assert_eq!(
            redact_url("postgres://godel:hunter2@db:5432/x?sslmode=require"),
            "postgres://godel:***@db:5432/x?sslmode=require"
        );
        assert_eq!(redact_url("redis://:hunter2@127.0.0.1:6379/0"), "redis://:***@127.0.0.1:6379/0");
        assert_eq!(redact_url("postgres://db/x?user=u&password=hunter2"), "postgres://db/x?user=u&password=***");
        assert_eq!(redact_url("postgres://godel@db/x"), "postgres://godel@db/x");
        assert_eq!(redact_url("sqlite://.godel/godel.db"), "sqlite://.godel/godel.db");
        let env = |k: &str| match k {
            "GODEL_STORE" => Some("postgres://godel:hunter2@db/x".to_owned()),
            "OC_TOKEN" => Some("gateway-token-value".to_owned()),
            _ => None,
        };
        let text = "[[gateways]]\nname = \"home\"\nurl = \"ws://127.0.0.1:18789\"\ntoken_env = \"OC_TOKEN\"\n";
        let debug = format!("{:?}", ServerConfig::from_toml(text, &env).unwrap());
        assert!(!debug.contains("hunter2") && !debug.contains("gateway-token-value"), "{debug}");
        assert!(debug.contains("godel:***@db"), "{debug}");
    }

    const HTTP_AGENT: &str = "[[agents]]\nid = \"llm\"\nkind = \"http\"\nurl = \"http://127.0.0.1:8080/v1\"\n\
                              models = [\"gpt-a\", \"gpt-b\"]\n";

    #[test]
    fn http_agents_prices_and_budgets() {
        let env = |k: &str| (k == "LLM_KEY").then(|| "sk-from-env".to_owned());
        let text = format!(
            "{HTTP_AGENT}api_key_env = \"LLM_KEY\"\nstream = false\nsystem_prompt = \"Be brief.\"\n\
             request_timeout = \"20s\"\nmax_retry_after = \"2s\"\ncapacity = 8\n\
             [prices.\"gpt-a\"]\ninput_per_million = 2.5\noutput_per_million = 10\n\
             [prices.\"gpt-b\"]\ninput_per_million = 0.15\noutput_per_million = 0.6\n\
             [budgets]\ndefault = {{ soft = 10.0, hard = 20.0 }}\n\
             [budgets.tenants.\"acme\"]\nhard = 100.000001\n"
        );
        let config = ServerConfig::from_toml(&text, &env).unwrap();
        let agent = &config.agents[0];
        assert_eq!((agent.kind, agent.max_capacity), (AgentKind::Http, 8));
        let budgets = &config.engine.budgets;
        assert_eq!(budgets.default, Budget { soft: Some(10_000_000), hard: Some(20_000_000) });
        let acme = TenantId::new("acme").unwrap();
        assert_eq!(budgets.tenants[&acme], Budget { soft: None, hard: Some(100_000_001) });
        let debug = format!("{:?}", agent.adapter);
        assert!(!debug.contains("sk-from-env"), "the key stays out of logs: {debug}");
        assert!(debug.contains("input_per_million: 150000") && debug.contains("output_per_million: 10000000"));
        assert!(debug.contains("stream: false") && debug.contains("max_retry_after: 2s"), "{debug}");
        // Without budgets a model may go unpriced.
        assert!(ServerConfig::from_toml(HTTP_AGENT, &no_env).is_ok());
    }

    #[test]
    fn http_and_budget_errors_name_the_key() {
        let err = |text: &str| ServerConfig::from_toml(text, &no_env).unwrap_err().to_string();
        let prices = "[prices.\"gpt-a\"]\ninput_per_million = 1\noutput_per_million = 1\n\
                      [prices.\"gpt-b\"]\ninput_per_million = 1\noutput_per_million = 1\n";
        assert!(err("[[agents]]\nid = \"a\"\nkind = \"gpu\"").contains("agents[0].kind"));
        assert!(err("[[agents]]\nid = \"a\"\nkind = \"http\"\nmodels = [\"m\"]").contains("agents[0].url"));
        assert!(err("[[agents]]\nid = \"a\"\nkind = \"http\"\nurl = \"http://x/v1\"").contains("agents[0].models"));
        assert!(err("[[agents]]\nid = \"a\"\nurl = \"http://x/v1\"").contains("agents[0].url"));
        assert!(err(&format!("{HTTP_AGENT}command = [\"x\"]")).contains("agents[0].command"));
        assert!(err(&format!("{HTTP_AGENT}api_key_env = \"NOPE\"")).contains("agents[0].api_key_env"));
        assert!(err(&format!("{HTTP_AGENT}request_timeout = \"0s\"")).contains("agents[0].request_timeout"));
        assert!(err(&format!("{HTTP_AGENT}request_timeout = \"soon\"")).contains("agents[0].request_timeout"));
        assert!(err(&HTTP_AGENT.replace("http://127.0.0.1:8080/v1", "ftp://x")).contains("agents[0].url"));
        assert!(err(&HTTP_AGENT.replace("\"gpt-b\"", "\"\"")).contains("agents[0].models"));
        assert!(err(&format!("{HTTP_AGENT}stream = \"yes\"")).contains("stream"));
        let negative = "[prices.\"gpt-x\"]\ninput_per_million = -1\noutput_per_million = 1\n";
        assert!(err(negative).contains("prices.\"gpt-x\".input_per_million"));
        let fine = "[prices.\"gpt-x\"]\ninput_per_million = 1\noutput_per_million = 0.0000001\n";
        assert!(err(fine).contains("prices.\"gpt-x\".output_per_million"));
        assert!(err("[prices.\"gpt-x\"]\ninput_per_million = 1\n").contains("output_per_million"));
        assert!(err("[prices.\"gpt-x\"]\ninput = 1\n").contains("unknown field `input`"));
        assert!(err("[budgets]\ndefault = { soft = 30.0, hard = 20.0 }").contains("budgets.default"));
        assert!(err("[budgets]\ndefault = { hard = -2 }").contains("budgets.default.hard"));
        assert!(err("[budgets]\ndefault = { sfot = 1 }").contains("unknown field `sfot`"));
        assert!(err("[budgets.tenants.\"a b\"]\nhard = 1").contains("budgets.tenants.\"a b\""));
        assert!(err("[budgets.tenants.\"acme\"]\nsoft = 2\nhard = 1").contains("budgets.tenants.\"acme\""));
        // Budgets need every model priced, or spend would go uncounted.
        let budgeted = format!("{HTTP_AGENT}[budgets]\ndefault = {{ hard = 1 }}\n");
        assert!(err(&budgeted).contains("agents[0].models") && err(&budgeted).contains("gpt-a"));
        assert!(ServerConfig::from_toml(&format!("{budgeted}{prices}"), &no_env).is_ok());
    }

    #[test]
    fn audit_retention_defaults_to_ninety_days_and_can_be_off() {
        let days = |n: u64| Some(Duration::from_secs(n * 24 * 3600));
        assert_eq!(ServerConfig::from_toml("", &no_env).unwrap().audit.retention, days(90));
        let config = ServerConfig::from_toml("[audit]\nretention = \"30days\"\n", &no_env).unwrap();
        assert_eq!(config.audit.retention, days(30));
        let off = |k: &str| (k == "GODEL_AUDIT_RETENTION").then(|| "off".to_owned());
        assert_eq!(ServerConfig::from_toml("[audit]\nretention = \"30days\"\n", &off).unwrap().audit.retention, None);
        let err = |text: &str| ServerConfig::from_toml(text, &no_env).unwrap_err().to_string();
        assert!(err("[audit]\nretention = \"forever\"").contains("audit.retention"));
        assert!(err("[audit]\nretention = \"10s\"").contains("audit.retention"));
    }

    #[test]
    fn auth_is_checked_and_secrets_stay_out_of_debug() {
        let config = ServerConfig::from_toml("", &no_env).unwrap();
        assert!(!config.auth.public_health && config.auth.jwt.is_none());
        assert_eq!((config.auth.per_credential, config.auth.failed_per_source), (2_000, 10));
        let secret = "s".repeat(32);
        let env = |k: &str| match k {
            "JWT_SECRET" => Some(secret.clone()),
            "GODEL_AUTH_PUBLIC_HEALTH" => Some("true".to_owned()),
            _ => None,
        };
        let text = "[auth]\nallowed_origins = [\"https://Ops.example.com/\"]\n[auth.jwt]\nalgorithm = \"HS256\"\n\
                    secret_env = \"JWT_SECRET\"\nissuer = \"i\"\naudience = \"a\"\nleeway = \"10s\"\n";
        let config = ServerConfig::from_toml(text, &env).unwrap();
        assert!(config.auth.public_health);
        assert_eq!(config.auth.allowed_origins, ["https://ops.example.com"]);
        let jwt = config.auth.jwt.as_ref().unwrap();
        assert_eq!(jwt.leeway, Duration::from_secs(10));
        assert!(!format!("{config:?}").contains(&secret));

        let err = |text: &str| ServerConfig::from_toml(text, &no_env).unwrap_err().to_string();
        let short = |k: &str| (k == "JWT_SECRET").then(|| "short".to_owned());
        assert!(ServerConfig::from_toml(text, &short).unwrap_err().to_string().contains("at least 32 bytes"));
        assert!(
            err("[auth.jwt]\nalgorithm = \"none\"\nissuer = \"i\"\naudience = \"a\"").contains("auth.jwt.algorithm")
        );
        assert!(err("[auth.jwt]\nalgorithm = \"RS256\"\nissuer = \"i\"\naudience = \"a\"").contains("public_key_file"));
        assert!(err("[auth]\nallowed_origins = [\"evil\"]").contains("auth.allowed_origins"));
        assert!(err("[auth.rate_limit]\nper_credential = 0").contains("auth.rate_limit.per_credential"));
        assert!(err("[auth]\npublic = true").contains("unknown field `public`"));
    }
}
