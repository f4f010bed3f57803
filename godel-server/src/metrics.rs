//! Prometheus metrics (prometheus-client). Task and session metrics are fed
//! from the event bus by [`Metrics::follow`]; queue depth and agents are read
//! when scraped; HTTP metrics come from the request log filter.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use godel_core::bus::RecvError;
use godel_core::event::EventKind;
use godel_core::{EventBus, Priority, TaskId};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PriorityLabel {
    priority: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    priority: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the server exports.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    tasks_created: Family<PriorityLabel, Counter>,
    tasks_finished: Family<FinishedLabels, Counter>,
    task_duration: HistogramFamily<OutcomeLabel>,
    queue_depth: Family<PriorityLabel, Gauge>,
    agents: Family<StatusLabel, Gauge>,
    sessions: Family<StateLabel, Gauge>,
    sessions_closed: Family<StateLabel, Counter>,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<RouteLabel>,
    errors: Family<StatusLabel, Counter>,
    events_missed: Counter,
    tasks_quarantined: Counter,
    /// Audit entries dropped because the audit queue was full.
    pub(crate) audit_dropped: Counter,
    /// When tasks started running here, to time them.
    started: Mutex<HashMap<TaskId, Instant>>,
    /// Completions in the last minute, for the throughput in health reports.
    recent: Mutex<VecDeque<Instant>>,
}

/// Most running tasks timed at once; past it the oldest guesses are dropped.
const MAX_TIMED: usize = 100_000;

fn task_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 18))
}

fn request_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("godel");
        let metrics = Self {
            tasks_created: Family::default(),
            tasks_finished: Family::default(),
            task_duration: Family::new_with_constructor(task_buckets),
            queue_depth: Family::default(),
            agents: Family::default(),
            sessions: Family::default(),
            sessions_closed: Family::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(request_buckets),
            errors: Family::default(),
            events_missed: Counter::default(),
            tasks_quarantined: Counter::default(),
            audit_dropped: Counter::default(),
            started: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::new()),
            registry: Registry::default(),
        };
        registry.register("tasks_created", "Tasks created, by priority", metrics.tasks_created.clone());
        registry.register(
            "tasks_finished",
            "Task attempts settled, by priority and outcome",
            metrics.tasks_finished.clone(),
        );
        registry.register(
            "task_duration_seconds",
            "Running time of task attempts run here",
            metrics.task_duration.clone(),
        );
        registry.register("queue_depth", "Ready tasks, by priority", metrics.queue_depth.clone());
        registry.register("agents", "Agents, by status", metrics.agents.clone());
        registry.register("sessions", "Live sessions of this node, by state", metrics.sessions.clone());
        registry.register("sessions_closed", "Sessions closed, by final state", metrics.sessions_closed.clone());
        registry.register("http_requests", "API requests, by method, route and status", metrics.requests.clone());
        registry.register("http_request_duration_seconds", "API latency, by route", metrics.request_duration.clone());
        registry.register("http_errors", "API error responses, by status", metrics.errors.clone());
        registry.register(
            "tasks_quarantined",
            "Task rows that did not decode, moved to the quarantine",
            metrics.tasks_quarantined.clone(),
        );
        registry.register(
            "events_missed",
            "Events the metrics follower missed by lagging",
            metrics.events_missed.clone(),
        );
        registry.register(
            "audit_dropped",
            "Audit entries dropped because the audit queue was full",
            metrics.audit_dropped.clone(),
        );
        Self { registry, ..metrics }
    }

    /// Follows the bus until `stop` is cancelled.
    pub(crate) async fn follow(&self, bus: &EventBus, stop: CancellationToken) {
        let mut events = bus.subscribe(vec!["task.*".parse().expect("pattern"), "session.*".parse().expect("pattern")]);
        loop {
            let published = tokio::select! {
                () = stop.cancelled() => return,
                received = events.recv() => received,
            };
            match published {
                Ok(p) => self.observe(&p.event.kind),
                Err(RecvError::Lagged(n)) => {
                    self.events_missed.inc_by(n);
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    fn observe(&self, kind: &EventKind) {
        let finished = |priority: &Priority, outcome: &'static str| {
            self.tasks_finished.get_or_create(&FinishedLabels { priority: priority.as_str(), outcome }).inc();
        };
        match kind {
            EventKind::TaskCreated { priority, .. } => {
                self.tasks_created.get_or_create(&PriorityLabel { priority: priority.as_str() }).inc();
            }
            EventKind::TaskStarted { task, .. } => {
                let mut started = self.started.lock().unwrap_or_else(PoisonError::into_inner);
                if started.len() >= MAX_TIMED {
                    started.clear();
                }
                started.insert(*task, Instant::now());
            }
            EventKind::TaskCompleted { task, priority, .. } => {
                finished(priority, "completed");
                self.time(*task, "completed");
                let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
                recent.push_back(Instant::now());
                prune(&mut recent);
            }
            EventKind::TaskFailed { task, priority, .. } => {
                finished(priority, "failed");
                self.time(*task, "failed");
            }
            EventKind::TaskDeadLettered { task, priority, .. } => {
                finished(priority, "dead_letter");
                self.time(*task, "failed");
            }
            EventKind::TaskCancelled { task, priority } => {
                finished(priority, "cancelled");
                self.time(*task, "cancelled");
            }
            EventKind::TaskRetrying { task, .. } => self.time(*task, "failed"),
            EventKind::TaskQuarantined { .. } => {
                self.tasks_quarantined.inc();
            }
            EventKind::SessionOpened { .. } => {
                self.sessions.get_or_create(&StateLabel { state: "created" }).inc();
            }
            EventKind::SessionStateChanged { from, to, .. } => {
                self.sessions.get_or_create(&StateLabel { state: from.as_str() }).dec();
                if to.is_terminal() {
                    self.sessions_closed.get_or_create(&StateLabel { state: to.as_str() }).inc();
                } else {
                    self.sessions.get_or_create(&StateLabel { state: to.as_str() }).inc();
                }
            }
            _ => {}
        }
    }

    fn time(&self, task: TaskId, outcome: &'static str) {
        let started = self.started.lock().unwrap_or_else(PoisonError::into_inner).remove(&task);
        if let Some(started) = started {
            self.task_duration.get_or_create(&OutcomeLabel { outcome }).observe(started.elapsed().as_secs_f64());
        }
    }

    /// Tasks completed here in the last minute.
    pub(crate) fn completed_last_minute(&self) -> usize {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        prune(&mut recent);
        recent.len()
    }

    /// Records one API request.
    pub(crate) fn request(&self, method: &str, path: &str, status: u16, elapsed: Duration) {
        let route = route_of(path);
        self.requests.get_or_create(&RequestLabels { method: method.to_owned(), route: route.clone(), status }).inc();
        self.request_duration.get_or_create(&RouteLabel { route }).observe(elapsed.as_secs_f64());
        if status >= 400 {
            self.errors.get_or_create(&StatusLabel { status: status.to_string() }).inc();
        }
    }

    /// Renders the text exposition, after refreshing the gauges read at scrape time.
    pub(crate) fn render(&self, depth: &godel_core::store::QueueDepth, agents: &[godel_core::Agent]) -> String {
        for p in Priority::ALL {
            let n = i64::try_from(depth.get(p)).unwrap_or(i64::MAX);
            self.queue_depth.get_or_create(&PriorityLabel { priority: p.as_str() }).set(n);
        }
        self.agents.clear();
        for agent in agents {
            self.agents.get_or_create(&StatusLabel { status: agent.status.to_string() }).inc();
        }
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}

fn prune(recent: &mut VecDeque<Instant>) {
    while recent.front().is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
        recent.pop_front();
    }
}

/// The route template of a request path, so labels stay few:
/// `/api/v1/tasks/0192…/cancel` becomes `/api/v1/tasks/{id}/cancel`, and
/// anything that is not a route of this server becomes `other` (junk URLs
/// must not grow the number of series).
pub(crate) fn route_of(path: &str) -> String {
    const RESOURCES: [&str; 5] = ["tasks", "queue", "dead-letters", "agents", "sessions"];
    const LITERALS: [&str; 6] = ["batch", "replay", "export", "depth", "health", "heartbeat"];
    const ACTIONS: [&str; 6] = ["cancel", "kill", "retry", "events", "replay", "terminate"];
    const FIXED: [&str; 6] = ["/health", "/health/live", "/health/ready", "/metrics", "/openapi.json", "/events"];
    let path = path.trim_end_matches('/');
    if FIXED.contains(&path) {
        return path.to_owned();
    }
    let parts: Vec<&str> = path.split('/').collect();
    let base = match parts.get(1..3) {
        Some(["api", "v1"]) => 3,
        Some(["api", _]) => 2,
        _ => return "other".to_owned(),
    };
    let rest = &parts[base..];
    let known = match rest {
        [resource] => RESOURCES.contains(resource),
        [resource, _] => RESOURCES.contains(resource),
        [resource, _, action] => RESOURCES.contains(resource) && (ACTIONS.contains(action) || *action == "heartbeat"),
        _ => false,
    };
    if !known {
        return "other".to_owned();
    }
    let mut out: Vec<&str> = parts[..base].to_vec();
    for (i, part) in rest.iter().enumerate() {
        out.push(if i == 1 && !LITERALS.contains(part) { "{id}" } else { part });
    }
    out.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_templated() {
        assert_eq!(route_of("/api/v1/tasks/0192-abc/cancel"), "/api/v1/tasks/{id}/cancel");
        assert_eq!(route_of("/api/v1/tasks/batch"), "/api/v1/tasks/batch");
        assert_eq!(route_of("/api/tasks/x"), "/api/tasks/{id}");
        assert_eq!(route_of("/api/v1/dead-letters/replay"), "/api/v1/dead-letters/replay");
        assert_eq!(route_of("/health/ready"), "/health/ready");
        assert_eq!(route_of("/metrics"), "/metrics");
        assert_eq!(route_of("/a/b/c/d"), "other");
        assert_eq!(route_of("/wp-admin"), "other");
        assert_eq!(route_of("/api/v1/zzz1"), "other");
        assert_eq!(route_of("/api/v1/tasks/x/y/z"), "other");
    }
}
