//! The PostgreSQL store's URL: Godel's own options travel as query parameters
//! that are taken out here, and the rest of the URL goes to sqlx unchanged.
//!
//! A parameter neither Godel nor sqlx knows is an error rather than a silent
//! no-op: a typo such as `max_conections=50` must not quietly leave the pool
//! at its default size.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use crate::InvalidInput;

/// The parameters sqlx reads from a PostgreSQL URL; they pass through untouched.
const SQLX_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// The schema when the URL names none.
pub(crate) const DEFAULT_SCHEMA: &str = "godel";

/// Longest schema name: the NOTIFY channel is `godel_<schema>` and channel
/// names, like every identifier, stop at 63 bytes.
const MAX_SCHEMA_LEN: usize = 48;

/// What a `postgres://` URL asks for.
#[derive(Clone, Debug)]
pub(crate) struct PgOptions {
    /// What sqlx connects with.
    pub(crate) connect: PgConnectOptions,
    /// The URL as it may be shown: without the password or Godel's parameters.
    pub(crate) display: String,
    /// The schema holding this namespace's tables.
    pub(crate) schema: String,
    /// Most connections in the pool (the LISTEN connection is extra).
    pub(crate) max_connections: u32,
    /// Connections kept open when idle.
    pub(crate) min_connections: u32,
    /// How long a call waits for a free connection before `Unavailable`.
    pub(crate) acquire_timeout: Duration,
    /// Idle connections above the minimum close after this long.
    pub(crate) idle_timeout: Option<Duration>,
    /// Connections are replaced after this long.
    pub(crate) max_lifetime: Option<Duration>,
    /// False in poll-only mode (connection poolers): no LISTEN connection.
    pub(crate) listen: bool,
}

impl PgOptions {
    /// Parses `url` (`postgres://…` or `postgresql://…`).
    pub(crate) fn parse(url: &str) -> Result<Self, InvalidInput> {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let mut options = Self {
            connect: PgConnectOptions::new_without_pgpass(),
            display: redact(base),
            schema: DEFAULT_SCHEMA.to_owned(),
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            listen: true,
        };
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "schema" => options.schema = schema(value)?,
                "max_connections" => options.max_connections = count("max_connections", value, 1)?,
                "min_connections" => options.min_connections = count("min_connections", value, 0)?,
                "acquire_timeout" => options.acquire_timeout = duration("acquire_timeout", value)?,
                "idle_timeout" => options.idle_timeout = optional_duration("idle_timeout", value)?,
                "max_lifetime" => options.max_lifetime = optional_duration("max_lifetime", value)?,
                "listen" => options.listen = boolean("listen", value)?,
                key if SQLX_PARAMETERS.contains(&key) || key.starts_with("options[") => passed.push(pair),
                other => {
                    return Err(InvalidInput::new(
                        "store url",
                        format!(
                            "unknown parameter {other:?} in the PostgreSQL URL (Godel takes schema, max_connections, \
                             min_connections, acquire_timeout, idle_timeout, max_lifetime and listen; sqlx takes \
                             {})",
                            SQLX_PARAMETERS.join(", ")
                        ),
                    ));
                }
            }
        }
        if options.min_connections > options.max_connections {
            return Err(InvalidInput::new(
                "min_connections",
                format!("must not exceed max_connections ({})", options.max_connections),
            ));
        }
        let sqlx_url = if passed.is_empty() { base.to_owned() } else { format!("{base}?{}", passed.join("&")) };
        options.connect = sqlx_url
            .parse::<PgConnectOptions>()
            .map_err(|e| InvalidInput::new("store url", format!("not a valid PostgreSQL URL ({e})")))?;
        // The schema is every connection's search path, set at connection
        // start so that it costs no round trip per call.
        options.connect = options.connect.options([("search_path", options.schema.as_str())]);
        Ok(options)
    }
}

/// `base` without its password, for messages and logs.
fn redact(base: &str) -> String {
    let Some((scheme, rest)) = base.split_once("://") else { return base.to_owned() };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => base.to_owned(),
    }
}

/// A schema name: used unquoted in SQL, so only `[a-z_][a-z0-9_]*`.
fn schema(value: &str) -> Result<String, InvalidInput> {
    let valid_start = value.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let valid_rest = value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid_start || !valid_rest || value.len() > MAX_SCHEMA_LEN {
        return Err(InvalidInput::new(
            "schema",
            format!(
                "expected 1 to {MAX_SCHEMA_LEN} characters from a-z, 0-9 and _, not starting with a digit; got {value:?}"
            ),
        ));
    }
    if value.starts_with("pg_") {
        return Err(InvalidInput::new("schema", format!("names starting with pg_ are reserved, got {value:?}")));
    }
    Ok(value.to_owned())
}

fn count(field: &'static str, value: &str, min: u32) -> Result<u32, InvalidInput> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| *n >= min && *n <= 10_000)
        .ok_or_else(|| InvalidInput::new(field, format!("expected a whole number from {min} to 10000, got {value:?}")))
}

fn duration(field: &'static str, value: &str) -> Result<Duration, InvalidInput> {
    humantime::parse_duration(value)
        .map_err(|e| InvalidInput::new(field, format!("expected a duration such as 5s or 250ms, got {value:?} ({e})")))
}

/// A duration, or `none` to switch the limit off.
fn optional_duration(field: &'static str, value: &str) -> Result<Option<Duration>, InvalidInput> {
    if value == "none" { Ok(None) } else { duration(field, value).map(Some) }
}

fn boolean(field: &'static str, value: &str) -> Result<bool, InvalidInput> {
    match value {
        "true" | "1" | "on" => Ok(true),
        "false" | "0" | "off" => Ok(false),
        _ => Err(InvalidInput::new(field, format!("expected true or false, got {value:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn godel_parameters_are_taken_out() {
        let o = PgOptions::parse(
            "postgres://u:secret@db.example:5433/jobs?schema=team_a&max_connections=32&acquire_timeout=250ms\
             &listen=false&sslmode=disable&idle_timeout=none",
        )
        .unwrap();
        assert_eq!(o.schema, "team_a");
        assert_eq!(o.max_connections, 32);
        assert_eq!(o.acquire_timeout, Duration::from_millis(250));
        assert_eq!(o.idle_timeout, None);
        assert!(!o.listen);
        assert_eq!(o.connect.get_port(), 5433);
        assert_eq!(o.connect.get_database(), Some("jobs"));
        assert_eq!(o.display, "postgres://u:***@db.example:5433/jobs");
        assert!(!o.display.contains("secret"));
    }

    #[test]
    fn bad_parameters_are_named() {
        let field = |url: &str| PgOptions::parse(url).unwrap_err().field;
        assert_eq!(field("postgres://h/db?max_connections=0"), "max_connections");
        assert_eq!(field("postgres://h/db?max_connections=many"), "max_connections");
        assert_eq!(field("postgres://h/db?acquire_timeout=soon"), "acquire_timeout");
        assert_eq!(field("postgres://h/db?schema=Robert'); DROP TABLE tasks;--"), "schema");
        assert_eq!(field("postgres://h/db?schema=pg_catalog"), "schema");
        assert_eq!(field("postgres://h/db?schema=1abc"), "schema");
        assert_eq!(field("postgres://h/db?listen=maybe"), "listen");
        assert_eq!(field("postgres://h/db?min_connections=5&max_connections=2"), "min_connections");
        let unknown = PgOptions::parse("postgres://h/db?max_conections=5").unwrap_err();
        assert_eq!(unknown.field, "store url");
        assert!(unknown.reason.contains("max_conections"), "{}", unknown.reason);
    }

    #[test]
    fn urls_without_passwords_show_as_given() {
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgresql://h:5432/db"), "postgresql://h:5432/db");
        assert_eq!(redact("postgres://u:p%40ss@h/db"), "postgres://u:***@h/db");
    }
}
