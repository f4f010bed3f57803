//! The authorization table: for every route, who may call it and what the
//! audit log calls the action. It is the one place a route's access is
//! decided; the request guard looks a request up here before any handler
//! runs, and a request that matches no row is refused (deny by default).
//!
//! Requests are matched on their raw path segments, exactly as the router
//! matches them: nothing is percent-decoded, `.` and `..` are not resolved
//! and an empty segment (`//`, a trailing `/`) matches nothing. So the table
//! can never grant a path that the router would hand to a different handler.

use godel_core::Role;
use warp::http::Method;

/// Who may call a route.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Access {
    /// Anyone, with or without a credential.
    Public,
    /// Public when the server's configuration says so (the deep health probe,
    /// metrics), otherwise any authenticated role but `worker`.
    Configurable(Probe),
    /// Only these roles.
    Roles(&'static [Role]),
}

/// Which of the configurable routes a row is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Probe {
    /// `GET /health`.
    Health,
    /// `GET /metrics`.
    Metrics,
}

/// One row of the table.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    pub(crate) method: Method,
    /// The path as `openapi.json` writes it: `/api/v1/tasks/{id}/cancel`.
    pub(crate) path: &'static str,
    pub(crate) access: Access,
    /// What the audit log calls a request to this route: `tasks.cancel`.
    pub(crate) action: &'static str,
    /// Whether the request changes state (audited when allowed, and its body
    /// must be JSON).
    pub(crate) mutating: bool,
}

const READ: &[Role] = &[Role::Admin, Role::Operator, Role::Submitter, Role::Viewer];
const SUBMIT: &[Role] = &[Role::Admin, Role::Operator, Role::Submitter];
const OPERATE: &[Role] = &[Role::Admin, Role::Operator];
const ADMIN: &[Role] = &[Role::Admin];
const WORKER: &[Role] = &[Role::Admin, Role::Worker];

macro_rules! rules {
    ($($method:ident $path:literal => $access:expr, $action:literal;)*) => {
        /// Every route and who may call it. `docs/security.md` prints this
        /// table; a test walks `openapi.json` and fails on a route without a row.
        pub(crate) static RULES: &[Rule] = &[$(Rule {
            method: Method::$method,
            path: $path,
            access: $access,
            action: $action,
            mutating: !matches!(Method::$method, Method::GET),
        }),*];
    };
}

rules! {
    GET "/health/live" => Access::Public, "health.live";
    GET "/health/ready" => Access::Public, "health.ready";
    GET "/openapi.json" => Access::Public, "openapi.read";
    GET "/health" => Access::Configurable(Probe::Health), "health.read";
    GET "/metrics" => Access::Configurable(Probe::Metrics), "metrics.read";
    GET "/events" => Access::Roles(READ), "events.subscribe";

    GET "/api/v1/tasks" => Access::Roles(READ), "tasks.list";
    POST "/api/v1/tasks" => Access::Roles(SUBMIT), "tasks.create";
    POST "/api/v1/tasks/batch" => Access::Roles(SUBMIT), "tasks.create_batch";
    GET "/api/v1/tasks/{id}" => Access::Roles(READ), "tasks.get";
    DELETE "/api/v1/tasks/{id}" => Access::Roles(OPERATE), "tasks.purge";
    POST "/api/v1/tasks/{id}/cancel" => Access::Roles(SUBMIT), "tasks.cancel";
    POST "/api/v1/tasks/{id}/kill" => Access::Roles(SUBMIT), "tasks.kill";
    POST "/api/v1/tasks/{id}/retry" => Access::Roles(SUBMIT), "tasks.retry";
    GET "/api/v1/tasks/{id}/events" => Access::Roles(READ), "tasks.history";
    GET "/api/v1/queue/depth" => Access::Roles(READ), "queue.depth";
    GET "/api/v1/queue/health" => Access::Roles(READ), "queue.health";

    GET "/api/v1/dead-letters" => Access::Roles(READ), "dead_letters.list";
    GET "/api/v1/dead-letters/export" => Access::Roles(READ), "dead_letters.export";
    POST "/api/v1/dead-letters/replay" => Access::Roles(OPERATE), "dead_letters.replay_many";
    POST "/api/v1/dead-letters/{id}/replay" => Access::Roles(OPERATE), "dead_letters.replay";

    GET "/api/v1/quarantine" => Access::Roles(OPERATE), "quarantine.list";
    POST "/api/v1/quarantine/purge" => Access::Roles(OPERATE), "quarantine.purge";
    GET "/api/v1/quarantine/{id}" => Access::Roles(OPERATE), "quarantine.get";
    DELETE "/api/v1/quarantine/{id}" => Access::Roles(OPERATE), "quarantine.drop";

    GET "/api/v1/agents" => Access::Roles(READ), "agents.list";
    POST "/api/v1/agents" => Access::Roles(OPERATE), "agents.register";
    GET "/api/v1/agents/{id}" => Access::Roles(READ), "agents.get";
    DELETE "/api/v1/agents/{id}" => Access::Roles(OPERATE), "agents.deregister";
    POST "/api/v1/agents/{id}/heartbeat" => Access::Roles(OPERATE), "agents.heartbeat";
    POST "/api/v1/agents/{id}/drain" => Access::Roles(OPERATE), "agents.drain";
    GET "/api/v1/workers/connect" => Access::Roles(WORKER), "workers.connect";

    GET "/api/v1/sessions" => Access::Roles(READ), "sessions.list";
    GET "/api/v1/sessions/{id}" => Access::Roles(READ), "sessions.get";
    POST "/api/v1/sessions/{id}/terminate" => Access::Roles(OPERATE), "sessions.terminate";

    GET "/api/v1/instances" => Access::Roles(READ), "instances.list";
    POST "/api/v1/instances" => Access::Roles(ADMIN), "instances.register";
    DELETE "/api/v1/instances/{name}" => Access::Roles(ADMIN), "instances.deregister";
    GET "/api/v1/instances/{name}/health" => Access::Roles(READ), "instances.health";

    GET "/api/v1/keys" => Access::Roles(ADMIN), "keys.list";
    POST "/api/v1/keys" => Access::Roles(ADMIN), "keys.create";
    GET "/api/v1/keys/{id}" => Access::Roles(ADMIN), "keys.get";
    DELETE "/api/v1/keys/{id}" => Access::Roles(ADMIN), "keys.revoke";
    POST "/api/v1/keys/{id}/rotate" => Access::Roles(ADMIN), "keys.rotate";
    GET "/api/v1/audit" => Access::Roles(ADMIN), "audit.list";
}

/// A request's route, found in the table, with the values of its `{…}`
/// segments in order.
#[derive(Debug)]
pub(crate) struct Matched<'a> {
    pub(crate) rule: &'static Rule,
    pub(crate) params: Vec<&'a str>,
}

/// Finds the rule for a request. `path` is the raw request path (no query).
/// The deprecated `/api/…` alias is looked up as the `/api/v1/…` route it
/// serves, except for the workers endpoint, which the alias never had.
pub(crate) fn lookup<'a>(method: &Method, path: &'a str) -> Option<Matched<'a>> {
    let (template, params) = route(path)?;
    let rule = RULES.iter().find(|rule| rule.method == *method && rule.path == template)?;
    Some(Matched { rule, params })
}

/// The methods the route at `path` answers, as a 405's `Allow` lists them;
/// empty if there is no such route.
pub(crate) fn allowed(path: &str) -> Vec<Method> {
    let Some((template, _)) = route(path) else { return Vec::new() };
    RULES.iter().filter(|rule| rule.path == template).map(|rule| rule.method.clone()).collect()
}

/// The template `path` is an instance of, with its parameters. Of several,
/// the one with the fewest parameters wins, as the router tries literal
/// paths first: `/api/v1/tasks/batch` is that route, never the task `batch`.
fn route(path: &str) -> Option<(&'static str, Vec<&str>)> {
    let segments: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    let (versioned, alias) = match segments.as_slice() {
        ["api", "v1", ..] => (segments.clone(), false),
        ["api", rest @ ..] => ([&["api", "v1"][..], rest].concat(), true),
        _ => (segments.clone(), false),
    };
    let (template, params) = RULES
        .iter()
        .filter_map(|rule| Some((rule.path, matches(rule.path, &versioned)?)))
        .min_by_key(|(_, params)| params.len())?;
    if alias && template == "/api/v1/workers/connect" {
        return None;
    }
    Some((template, params))
}

/// The table as `docs/security.md` prints it: a Markdown table with one row
/// per route and a column per role (`✓` allowed, `–` refused, `public`).
#[cfg(test)]
pub(crate) fn matrix() -> String {
    let mut out = String::from("| method | path | admin | operator | submitter | viewer | worker | audit action |\n");
    out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
    for rule in RULES {
        let cells: Vec<&str> = Role::ALL
            .iter()
            .map(|role| match rule.access {
                Access::Public => "public",
                Access::Configurable(_) if *role == Role::Worker => "–",
                Access::Configurable(_) => "✓",
                Access::Roles(roles) if roles.contains(role) => "✓",
                Access::Roles(_) => "–",
            })
            .collect();
        let note = match rule.access {
            Access::Configurable(Probe::Health) => " (public with `auth.public_health`)",
            Access::Configurable(Probe::Metrics) => " (public with `auth.public_metrics`)",
            _ => "",
        };
        out.push_str(&format!(
            "| {} | `{}` | {} | `{}`{note} |\n",
            rule.method,
            rule.path,
            cells.join(" | "),
            rule.action
        ));
    }
    out
}

/// The template's parameters if `segments` fit it.
fn matches<'a>(template: &str, segments: &[&'a str]) -> Option<Vec<&'a str>> {
    let parts: Vec<&str> = template.strip_prefix('/')?.split('/').collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut params = Vec::new();
    for (part, segment) in parts.iter().zip(segments) {
        if segment.is_empty() {
            return None;
        }
        if part.starts_with('{') {
            params.push(*segment);
        } else if part != segment {
            return None;
        }
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(method: Method, path: &str) -> Option<&'static str> {
        lookup(&method, path).map(|m| m.rule.action)
    }

    #[test]
    fn routes_are_found_with_their_parameters() {
        let m = lookup(&Method::POST, "/api/v1/tasks/abc/cancel").unwrap();
        assert_eq!(m.rule.action, "tasks.cancel");
        assert_eq!(m.params, ["abc"]);
        assert_eq!(rule(Method::POST, "/api/v1/tasks/batch"), Some("tasks.create_batch"));
        assert_eq!(rule(Method::GET, "/api/tasks"), Some("tasks.list"));
        assert_eq!(rule(Method::GET, "/health/live"), Some("health.live"));
    }

    #[test]
    fn a_literal_path_is_its_own_route() {
        assert_eq!(rule(Method::GET, "/api/v1/tasks/batch"), None, "not the task `batch`");
        assert_eq!(allowed("/api/v1/tasks/batch"), [Method::POST]);
        assert_eq!(allowed("/api/v1/tasks/abc"), [Method::GET, Method::DELETE]);
        assert!(allowed("/api/v1/nothing").is_empty());
    }

    #[test]
    fn nothing_but_the_exact_path_matches() {
        for path in [
            "/health/live/",
            "//health/live",
            "/health//live",
            "/health/live/..",
            "/health/live/../../api/v1/tasks",
            "/Health/live",
            "/health/%6cive",
            "/api/v1/tasks/",
            "/api/v1//tasks",
            "health/live",
            "",
        ] {
            let found = rule(Method::GET, path);
            assert!(found != Some("health.live") && found != Some("tasks.list"), "{path:?} matched {found:?}");
        }
        assert_eq!(rule(Method::GET, "/api/workers/connect"), None);
        assert_eq!(rule(Method::PATCH, "/api/v1/tasks"), None);
    }

    #[test]
    fn the_documented_matrix_is_the_table() {
        let doc = include_str!("../../../docs/security.md");
        assert!(
            doc.contains(&matrix()),
            "docs/security.md's matrix differs from the table; print it again:\n{}",
            matrix()
        );
    }

    #[test]
    fn every_documented_route_has_a_row() {
        let doc: serde_json::Value = serde_json::from_str(crate::OPENAPI).unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys().filter(|m| *m != "parameters") {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let found = RULES.iter().any(|r| r.method == method && r.path == path);
                assert!(found, "{method} {path} is in openapi.json but not in the table");
            }
        }
    }

    #[test]
    fn every_route_has_one_row() {
        for (i, a) in RULES.iter().enumerate() {
            for b in &RULES[i + 1..] {
                assert!(!(a.method == b.method && a.path == b.path), "{} {} twice", a.method, a.path);
            }
        }
    }
}
