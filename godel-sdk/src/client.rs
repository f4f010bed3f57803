//! The HTTP client: one method per API route, each request carrying the
//! client's API key, if it has one, as `Authorization: Bearer`.

use std::time::Duration;

use godel_wire::{
    Agent, AuditEntry, AuditOutcome, Cancelled, CreateKey, CreatedKey, ErrorEnvelope, Health, Instance, InstanceHealth,
    KeyId, KeyView, Page, Priority, QuarantinePurged, Quarantined, QueueDepth, QueueHealth, RegisterAgent,
    RegisterInstance, ReplayDeadLetters, Replayed, RotateKey, RotatedKey, Session, SessionId, SessionState,
    SubmitBatch, SubmitTask, Task, TaskEvent, TaskId, TaskStatus, Timestamp,
};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, ErrorCode, Result};
use crate::events::EventStream;
use crate::tls::{Tls, TlsOptions};

/// The address a client uses when none is given.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7373";

/// A client for one Godel server. Cheap to clone; clones share connections.
///
/// A server that requires authentication wants an API key:
/// [`Client::with_api_key`]. `Debug` never shows the key.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// `Bearer <key>`, marked sensitive.
    auth: Option<HeaderValue>,
    tls: Tls,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("api_key", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Options for [`Client::with_options`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ClientOptions {
    /// Longest a request may take in all.
    pub timeout: Duration,
    /// Longest connecting may take.
    pub connect_timeout: Duration,
}

impl Default for ClientOptions {
    /// 30 s per request, 5 s to connect.
    fn default() -> Self {
        Self { timeout: Duration::from_secs(30), connect_timeout: Duration::from_secs(5) }
    }
}

/// Which tasks [`crate::Client::tasks`] lists.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ListTasks {
    /// Page size, 1 to 100 (server default 20).
    pub limit: Option<usize>,
    /// Where the previous page ended.
    pub cursor: Option<String>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
    /// Any of these statuses.
    pub status: Vec<TaskStatus>,
    /// Any of these priorities.
    pub priority: Vec<Priority>,
    /// Held or last held by this agent.
    pub agent_id: Option<String>,
    /// Children of this task.
    pub parent_id: Option<TaskId>,
    /// Created at or after.
    pub created_after: Option<Timestamp>,
    /// Created before.
    pub created_before: Option<Timestamp>,
}

impl ListTasks {
    pub(crate) fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        let join = |items: Vec<&str>| items.join(",");
        if let Some(limit) = self.limit {
            q.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &self.cursor {
            q.push(("cursor", cursor.clone()));
        }
        if self.newest_first {
            q.push(("sort", "-created_at".to_owned()));
        }
        if !self.status.is_empty() {
            q.push(("status", join(self.status.iter().map(|s| s.as_str()).collect())));
        }
        if !self.priority.is_empty() {
            q.push(("priority", join(self.priority.iter().map(|p| p.as_str()).collect())));
        }
        if let Some(agent) = &self.agent_id {
            q.push(("agent_id", agent.clone()));
        }
        if let Some(parent) = self.parent_id {
            q.push(("parent_id", parent.to_string()));
        }
        if let Some(t) = self.created_after {
            q.push(("created_after", t.to_string()));
        }
        if let Some(t) = self.created_before {
            q.push(("created_before", t.to_string()));
        }
        q
    }
}

/// Filters for [`Client::audit`]; entries come newest first.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ListAudit {
    /// Only this tenant's entries (default: every tenant).
    pub tenant: Option<String>,
    /// An action (`tasks.create`) or a prefix ending in a dot (`tasks.`).
    pub action: Option<String>,
    /// Only entries with this outcome.
    pub outcome: Option<AuditOutcome>,
    /// Only entries made with this credential (a key id, or `jwt:<subject>`).
    pub credential: Option<String>,
    /// Entries at or after this instant.
    pub since: Option<Timestamp>,
    /// Entries before this instant.
    pub until: Option<Timestamp>,
    /// Page size, 1 to 100 (server default 20).
    pub limit: Option<usize>,
    /// Where the previous page ended.
    pub cursor: Option<String>,
}

impl ListAudit {
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        let texts = [
            ("tenant", self.tenant.clone()),
            ("action", self.action.clone()),
            ("outcome", self.outcome.map(|o| o.as_str().to_owned())),
            ("credential", self.credential.clone()),
            ("since", self.since.map(|t| t.to_string())),
            ("until", self.until.map(|t| t.to_string())),
            ("limit", self.limit.map(|l| l.to_string())),
            ("cursor", self.cursor.clone()),
        ];
        for (name, value) in texts {
            if let Some(value) = value {
                q.push((name, value));
            }
        }
        q
    }
}

/// Filters for [`Client::sessions`].
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct ListSessions {
    /// Any of these states.
    pub state: Vec<SessionState>,
    /// On this agent.
    pub agent_id: Option<String>,
    /// Running this task.
    pub task_id: Option<TaskId>,
    /// At most this many (1 to 100).
    pub limit: Option<usize>,
}

impl Client {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:7373`), with default timeouts.
    pub fn new(base_url: &str) -> Result<Self> {
        Self::with_options(base_url, ClientOptions::default())
    }

    /// A client with explicit timeouts.
    pub fn with_options(base_url: &str, options: ClientOptions) -> Result<Self> {
        Self::with_tls(base_url, options, &TlsOptions::default())
    }

    /// A client with explicit timeouts that checks an `https://` server's
    /// certificate as `tls` says (e.g. against a private CA's file).
    pub fn with_tls(base_url: &str, options: ClientOptions, tls: &TlsOptions) -> Result<Self> {
        let tls = Tls::load(tls)?;
        let base = base_url.trim_end_matches('/').to_owned();
        let invalid = |message: &str| Error::InvalidUrl { url: base_url.to_owned(), message: message.to_owned() };
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"))
            .ok_or_else(|| invalid("expected http://host:port or https://host:port"))?;
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(invalid("expected a host after the scheme"));
        }
        let builder = reqwest::Client::builder()
            .timeout(options.timeout)
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("godel-sdk/", env!("CARGO_PKG_VERSION")));
        let http = tls.http(builder)?.build().map_err(|e| invalid(&e.to_string()))?;
        Ok(Self { http, base, auth: None, tls })
    }

    /// The same client, sending `key` (a `gdl_…` API key or a JWT) as
    /// `Authorization: Bearer` on every request and on the `/events`
    /// WebSocket. A key that cannot go in a header (a line break, say) is
    /// refused here.
    ///
    /// ```
    /// # fn demo() -> godel_sdk::Result<()> {
    /// let client = godel_sdk::Client::new("http://127.0.0.1:7373")?.with_api_key("gdl_…")?;
    /// assert!(!format!("{client:?}").contains("gdl_"));
    /// # Ok(()) }
    /// # demo().unwrap();
    /// ```
    pub fn with_api_key(mut self, key: impl AsRef<str>) -> Result<Self> {
        let mut value = HeaderValue::from_str(&format!("Bearer {}", key.as_ref().trim()))
            .map_err(|_| Error::InvalidApiKey { message: "it has characters a header cannot carry".to_owned() })?;
        value.set_sensitive(true);
        self.auth = Some(value);
        Ok(self)
    }

    /// Whether the client sends an API key.
    pub fn has_api_key(&self) -> bool {
        self.auth.is_some()
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Submits a task.
    pub async fn submit(&self, task: &SubmitTask) -> Result<Task> {
        self.send(Method::POST, "/api/v1/tasks", Some(task)).await
    }

    /// Submits many tasks in one transaction (all or none).
    pub async fn submit_batch(&self, tasks: &[SubmitTask]) -> Result<Vec<Task>> {
        let batch = SubmitBatch { tasks: tasks.to_vec() };
        let created: SubmitBatch<Task> = self.send(Method::POST, "/api/v1/tasks/batch", Some(&batch)).await?;
        Ok(created.tasks)
    }

    /// One task.
    pub async fn task(&self, id: TaskId) -> Result<Task> {
        self.get(&format!("/api/v1/tasks/{id}"), &[]).await
    }

    /// A page of tasks.
    pub async fn tasks(&self, query: &ListTasks) -> Result<Page<Task>> {
        self.get("/api/v1/tasks", &query.query()).await
    }

    /// Cancels a task: at once if pending, by asking its engine if running.
    pub async fn cancel(&self, id: TaskId) -> Result<Cancelled> {
        self.send(Method::POST, &format!("/api/v1/tasks/{id}/cancel"), None::<&()>).await
    }

    /// Like [`Client::cancel`], without the grace period.
    pub async fn kill(&self, id: TaskId) -> Result<Cancelled> {
        self.send(Method::POST, &format!("/api/v1/tasks/{id}/kill"), None::<&()>).await
    }

    /// Runs a dead-lettered, failed or cancelled task again with fresh attempts.
    pub async fn retry(&self, id: TaskId) -> Result<Task> {
        self.send(Method::POST, &format!("/api/v1/tasks/{id}/retry"), None::<&()>).await
    }

    /// Deletes a finished task and its history.
    pub async fn purge(&self, id: TaskId) -> Result<()> {
        self.send_empty(Method::DELETE, &format!("/api/v1/tasks/{id}?purge=true")).await
    }

    /// A task's lifecycle changes and output, oldest first.
    pub async fn task_events(&self, id: TaskId) -> Result<Vec<TaskEvent>> {
        let page: Page<TaskEvent> = self.get(&format!("/api/v1/tasks/{id}/events"), &[]).await?;
        Ok(page.items)
    }

    /// Ready tasks per priority.
    pub async fn queue_depth(&self) -> Result<QueueDepth> {
        self.get("/api/v1/queue/depth", &[]).await
    }

    /// The queue's health.
    pub async fn queue_health(&self) -> Result<QueueHealth> {
        self.get("/api/v1/queue/health", &[]).await
    }

    /// A page of dead-lettered tasks (`status` in the query is ignored).
    pub async fn dead_letters(&self, query: &ListTasks) -> Result<Page<Task>> {
        let query = ListTasks { status: Vec::new(), ..query.clone() };
        self.get("/api/v1/dead-letters", &query.query()).await
    }

    /// Replays one dead-lettered task.
    pub async fn replay_dead_letter(&self, id: TaskId) -> Result<Task> {
        self.send(Method::POST, &format!("/api/v1/dead-letters/{id}/replay"), None::<&()>).await
    }

    /// Replays every dead-lettered task of these priorities (all if empty); returns how many.
    pub async fn replay_dead_letters(&self, priorities: &[Priority]) -> Result<u64> {
        let body = ReplayDeadLetters { priority: priorities.to_vec(), ..ReplayDeadLetters::default() };
        let reply: Replayed = self.send(Method::POST, "/api/v1/dead-letters/replay", Some(&body)).await?;
        Ok(reply.replayed)
    }

    /// Every dead-lettered task as NDJSON, one task per line.
    pub async fn export_dead_letters(&self) -> Result<String> {
        let url = format!("{}/api/v1/dead-letters/export", self.base);
        let response = self.execute(self.request(Method::GET, &url), &url).await?;
        response.text().await.map_err(|e| Error::from_reqwest(&url, e))
    }

    /// The agents.
    pub async fn agents(&self) -> Result<Vec<Agent>> {
        let page: Page<Agent> = self.get("/api/v1/agents", &[]).await?;
        Ok(page.items)
    }

    /// One agent.
    pub async fn agent(&self, id: &str) -> Result<Agent> {
        self.get(&format!("/api/v1/agents/{id}"), &[]).await
    }

    /// Registers a local process agent on the server.
    pub async fn register_agent(&self, agent: &RegisterAgent) -> Result<Agent> {
        self.send(Method::POST, "/api/v1/agents", Some(agent)).await
    }

    /// Deregisters an agent: it finishes what it runs and takes nothing new.
    pub async fn deregister_agent(&self, id: &str) -> Result<()> {
        self.send_empty(Method::DELETE, &format!("/api/v1/agents/{id}")).await
    }

    /// Tells the server an agent is alive.
    pub async fn agent_heartbeat(&self, id: &str) -> Result<()> {
        self.send_empty(Method::POST, &format!("/api/v1/agents/{id}/heartbeat")).await
    }

    /// Drains an agent of the answering node: it finishes what it runs and
    /// takes nothing new; a remote worker then leaves.
    pub async fn drain_agent(&self, id: &str) -> Result<()> {
        let _: serde_json::Value = self.send(Method::POST, &format!("/api/v1/agents/{id}/drain"), None::<&()>).await?;
        Ok(())
    }

    /// The OpenClaw gateways: the answering node's, live, then other nodes' views.
    pub async fn instances(&self) -> Result<Vec<Instance>> {
        let page: Page<Instance> = self.get("/api/v1/instances", &[]).await?;
        Ok(page.items)
    }

    /// Registers a gateway; every server node sharing the store connects to it.
    pub async fn register_instance(&self, instance: &RegisterInstance) -> Result<Instance> {
        self.send(Method::POST, "/api/v1/instances", Some(instance)).await
    }

    /// Deregisters a gateway registered through the API.
    pub async fn deregister_instance(&self, name: &str) -> Result<()> {
        self.send_empty(Method::DELETE, &format!("/api/v1/instances/{name}")).await
    }

    /// A gateway's health as the answering node sees it.
    pub async fn instance_health(&self, name: &str) -> Result<InstanceHealth> {
        self.get(&format!("/api/v1/instances/{name}/health"), &[]).await
    }

    /// Sessions, newest first.
    pub async fn sessions(&self, query: &ListSessions) -> Result<Vec<Session>> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if !query.state.is_empty() {
            q.push(("state", query.state.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")));
        }
        if let Some(agent) = &query.agent_id {
            q.push(("agent_id", agent.clone()));
        }
        if let Some(task) = query.task_id {
            q.push(("task_id", task.to_string()));
        }
        if let Some(limit) = query.limit {
            q.push(("limit", limit.to_string()));
        }
        let page: Page<Session> = self.get("/api/v1/sessions", &q).await?;
        Ok(page.items)
    }

    /// One session.
    pub async fn session(&self, id: SessionId) -> Result<Session> {
        self.get(&format!("/api/v1/sessions/{id}"), &[]).await
    }

    /// Stops the task a session runs (force).
    pub async fn terminate_session(&self, id: SessionId) -> Result<()> {
        let _: Value = self.send(Method::POST, &format!("/api/v1/sessions/{id}/terminate"), None::<&()>).await?;
        Ok(())
    }

    /// The deep health report. An unhealthy server answers 503 with the report;
    /// this returns the report either way.
    pub async fn health(&self) -> Result<Health> {
        let url = format!("{}/health", self.base);
        let response = self.request(Method::GET, &url).send().await.map_err(|e| Error::from_reqwest(&url, e))?;
        if response.status() == StatusCode::OK || response.status() == StatusCode::SERVICE_UNAVAILABLE {
            return response.json().await.map_err(|e| self.protocol(&e.to_string()));
        }
        Err(api_error(response, &url).await)
    }

    /// Ok if the server is ready to take work; the API error says why not.
    pub async fn ready(&self) -> Result<()> {
        let _: Value = self.get("/health/ready", &[]).await?;
        Ok(())
    }

    /// Prometheus metrics, as text.
    pub async fn metrics(&self) -> Result<String> {
        let url = format!("{}/metrics", self.base);
        let response = self.execute(self.request(Method::GET, &url), &url).await?;
        response.text().await.map_err(|e| Error::from_reqwest(&url, e))
    }

    /// Events matching `patterns` (`*`, `task.*`, `task.completed`, …; none
    /// means every event), live, as a stream that reconnects with backoff and
    /// resumes after the last event it delivered, so that no event is
    /// delivered twice or out of order. Events that could not be recovered are
    /// reported as [`Error::EventsMissed`] items, never skipped silently.
    ///
    /// The stream connects when first polled; await
    /// [`EventStream::subscribed`] first to be sure it listens before you
    /// submit work you want to follow.
    pub fn events(&self, patterns: &[&str]) -> EventStream {
        EventStream::new(
            &self.base,
            self.auth.clone(),
            patterns.iter().map(|p| (*p).to_owned()).collect(),
            None,
            self.tls.connector(),
        )
    }

    /// Like [`Client::events`], starting after sequence number `since` (an
    /// [`Event::seq`](crate::Event::seq) from this server run): the server
    /// first replays the kept events after it. If it no longer keeps them, or
    /// has restarted since, the first item is [`Error::EventsMissed`].
    pub fn events_since(&self, patterns: &[&str], since: u64) -> EventStream {
        EventStream::new(
            &self.base,
            self.auth.clone(),
            patterns.iter().map(|p| (*p).to_owned()).collect(),
            Some(since),
            self.tls.connector(),
        )
    }

    /// Every API key, or one tenant's, newest first (admin only).
    pub async fn keys(&self, tenant: Option<&str>) -> Result<Vec<KeyView>> {
        let query: Vec<(&str, String)> = tenant.map(|t| ("tenant", t.to_owned())).into_iter().collect();
        let page: Page<KeyView> = self.get("/api/v1/keys", &query).await?;
        Ok(page.items)
    }

    /// One API key.
    pub async fn key(&self, id: KeyId) -> Result<KeyView> {
        self.get(&format!("/api/v1/keys/{id}"), &[]).await
    }

    /// Makes an API key; the answer holds its secret, which the server never shows again.
    pub async fn create_key(&self, key: &CreateKey) -> Result<CreatedKey> {
        self.send(Method::POST, "/api/v1/keys", Some(key)).await
    }

    /// Revokes a key at once; it never authenticates again. Revoking twice is not an error.
    pub async fn revoke_key(&self, id: KeyId) -> Result<KeyView> {
        self.send(Method::DELETE, &format!("/api/v1/keys/{id}"), None::<&()>).await
    }

    /// Replaces a key with a new one of the same name, tenant and role; the
    /// old one keeps working for `grace` (0 to 30 days), then expires.
    pub async fn rotate_key(&self, id: KeyId, grace: Duration) -> Result<RotatedKey> {
        let body = RotateKey { grace: Some(format!("{}ms", grace.as_millis())) };
        self.send(Method::POST, &format!("/api/v1/keys/{id}/rotate"), Some(&body)).await
    }

    /// A page of quarantined task rows (rows that did not decode), oldest
    /// task first; `limit` 1 to 100 (server default 20), `cursor` from the previous page.
    pub async fn quarantine(&self, limit: Option<usize>, cursor: Option<&str>) -> Result<Page<Quarantined>> {
        let mut query = Vec::new();
        if let Some(limit) = limit {
            query.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor.to_owned()));
        }
        self.get("/api/v1/quarantine", &query).await
    }

    /// One quarantined row: the row as stored and why it did not decode.
    pub async fn quarantined(&self, id: TaskId) -> Result<Quarantined> {
        self.get(&format!("/api/v1/quarantine/{id}"), &[]).await
    }

    /// Deletes one quarantined row.
    pub async fn drop_quarantined(&self, id: TaskId) -> Result<()> {
        self.send_empty(Method::DELETE, &format!("/api/v1/quarantine/{id}")).await
    }

    /// Deletes every quarantined row; returns how many went.
    pub async fn purge_quarantine(&self) -> Result<u64> {
        let reply: QuarantinePurged = self.send(Method::POST, "/api/v1/quarantine/purge", None::<&()>).await?;
        Ok(reply.purged)
    }

    /// A page of the audit log, newest first (admin only).
    pub async fn audit(&self, query: &ListAudit) -> Result<Page<AuditEntry>> {
        self.get("/api/v1/audit", &query.query()).await
    }

    /// A request to `url` with the client's credential.
    fn request(&self, method: Method, url: &str) -> RequestBuilder {
        let request = self.http.request(method, url);
        match &self.auth {
            Some(auth) => request.header(AUTHORIZATION, auth.clone()),
            None => request,
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let response = self.execute(self.request(Method::GET, &url).query(query), &url).await?;
        response.json().await.map_err(|e| self.protocol(&e.to_string()))
    }

    async fn send<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<&impl Serialize>) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let mut request = self.request(method, &url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.execute(request, &url).await?;
        response.json().await.map_err(|e| self.protocol(&e.to_string()))
    }

    async fn send_empty(&self, method: Method, path: &str) -> Result<()> {
        let url = format!("{}{path}", self.base);
        self.execute(self.request(method, &url), &url).await?;
        Ok(())
    }

    async fn execute(&self, request: RequestBuilder, url: &str) -> Result<reqwest::Response> {
        let response = request.send().await.map_err(|e| Error::from_reqwest(url, e))?;
        if response.status().is_success() { Ok(response) } else { Err(api_error(response, url).await) }
    }

    fn protocol(&self, message: &str) -> Error {
        Error::Protocol { url: self.base.clone(), message: message.to_owned() }
    }
}

/// Reads the error envelope; anything else becomes a protocol error with the status.
async fn api_error(response: reqwest::Response, url: &str) -> Error {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorEnvelope>(&text) {
        Ok(ErrorEnvelope { error }) => Error::Api {
            status,
            code: ErrorCode::parse(&error.code),
            message: error.message,
            retryable: error.retryable,
        },
        _ => Error::Protocol {
            url: url.to_owned(),
            message: format!("HTTP {status} without an error envelope: {}", text.chars().take(200).collect::<String>()),
        },
    }
}
