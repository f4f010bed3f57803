//! [`OpenclawAdapter`]: one gateway, as an engine adapter. A task attempt is
//! one gateway run started with `agent`, on its own session key and with an
//! idempotency key per attempt, so re-sending after a dropped connection
//! returns the same run instead of starting a second one.
//!
//! A run ends with whichever comes first of the `agent` request's final
//! response, the run's lifecycle or chat events, or `agent.wait` after a
//! reconnect; the other sources only fill in what the first one lacked (the
//! final text, usage, model). Before deciding, the session drains the events
//! already received so that no streamed text is lost to a race between
//! channels.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::adapter::openclaw::GatewayState;
use crate::adapter::openclaw::connection::{RequestError, RunEvent, Shared};
use crate::adapter::openclaw::protocol::{
    AgentParams, AgentWaitParams, ChatAbortParams, ChatHistoryParams, GatewayError, Response, SessionsAbortParams,
    str_at,
};
use crate::adapter::{AbortMode, Adapter, AdapterError, AgentSession, Outcome, OutputSink};
use crate::output::OutputStream;
use crate::task::{Task, TaskError, TaskErrorKind};

/// Runs tasks on one OpenClaw gateway. Built by
/// [`crate::adapter::openclaw::OpenclawRegistry::add`].
#[derive(Debug, Clone)]
pub struct OpenclawAdapter {
    shared: Arc<Shared>,
}

impl OpenclawAdapter {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl Adapter for OpenclawAdapter {
    async fn open_session(&self, task: &Task) -> Result<Box<dyn AgentSession>, AdapterError> {
        let shared = &self.shared;
        let name = &shared.config.name;
        let Some(prompt) = task.payload.prompt.clone() else {
            return Err(AdapterError::permanent(
                "an openclaw task needs a prompt (payload.prompt); commands cannot run on a gateway",
            ));
        };
        let mut conn = shared.subscribe();
        let ready = tokio::time::timeout(shared.config.timing.open_wait, conn.wait_for(|c| c.ready)).await;
        let status = shared.status();
        if status.state == GatewayState::Unusable || !matches!(ready, Ok(Ok(_))) {
            // Retryable: the task goes back to the queue, and the health check
            // takes this gateway out of rotation until it recovers.
            let why = status.message.unwrap_or_else(|| status.state.to_string());
            return Err(AdapterError::transient(format!("openclaw gateway {name} is {}: {why}", status.state)));
        }
        let active = ActiveGuard::take(shared.clone())
            .ok_or_else(|| AdapterError::transient(format!("openclaw gateway {name} is at its session limit")))?;
        let hello = status.hello.unwrap_or_default();
        let agent_id = task
            .capabilities
            .iter()
            .find_map(|c| c.strip_prefix("agent:"))
            .map(str::to_owned)
            .or_else(|| shared.config.agents.first().cloned())
            .or(hello.default_agent)
            .unwrap_or_else(|| "main".to_owned());
        let rest = match &task.affinity_key {
            Some(key) => format!("godel-{}", key.replace(|c: char| c.is_whitespace() || c == ':', "-")),
            None => format!("godel-{}", task.id),
        };
        let session_key = format!("agent:{agent_id}:{rest}");
        let idempotency_key = format!("godel-{}-{}", task.id, task.attempt);
        let previous = (task.attempt > 1).then(|| format!("godel-{}-{}", task.id, task.attempt - 1));
        let extra_system_prompt =
            task.payload.extra.get("extra_system_prompt").and_then(Value::as_str).map(str::to_owned);
        let (abort, _) = watch::channel(None);
        Ok(Box::new(OpenclawSession {
            shared: shared.clone(),
            params: AgentParams {
                message: prompt,
                session_key,
                idempotency_key,
                agent_id: Some(agent_id),
                label: Some(format!("godel {}", task.id)),
                extra_system_prompt,
                timeout: task.timeout.map(|t| t.as_secs().max(1)),
                deliver: Some(false),
            },
            previous,
            abort,
            _active: active,
        }))
    }

    async fn health(&self) -> Result<(), AdapterError> {
        self.shared.touch_check();
        let status = self.shared.status();
        if status.state == GatewayState::Ready && self.shared.conn_state().ready {
            return Ok(());
        }
        // Not retryable on purpose: the engine then takes the gateway out of
        // rotation at once (status error) instead of after agent_offline_after,
        // so tasks fail over instead of failing here; it returns to rotation
        // at the first health check after the connection is ready again.
        let why = status.message.unwrap_or_else(|| "connecting".into());
        Err(AdapterError::permanent(format!("openclaw gateway {} is {}: {why}", self.shared.config.name, status.state)))
    }
}

/// Counts an open session against the gateway's limit until dropped.
#[derive(Debug)]
struct ActiveGuard(Arc<Shared>);

impl ActiveGuard {
    fn take(shared: Arc<Shared>) -> Option<Self> {
        let limit = shared.config.max_sessions;
        shared.active.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < limit).then_some(n + 1)).ok()?;
        Some(Self(shared))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

struct OpenclawSession {
    shared: Arc<Shared>,
    params: AgentParams,
    /// The run id of the previous attempt, which may still hold the session key.
    previous: Option<String>,
    abort: watch::Sender<Option<AbortMode>>,
    _active: ActiveGuard,
}

/// What the events of a run have said so far.
#[derive(Debug, Default)]
struct RunState {
    run_id: String,
    session_key: String,
    accepted: bool,
    text: String,
    final_text: Option<String>,
    /// A gap in the run's sequence numbers: streamed text may be incomplete.
    gap: bool,
    last_seq: Option<u64>,
    provider: Option<String>,
    model: Option<String>,
    usage: [Option<u64>; 3],
    aborted: bool,
    error: Option<String>,
    error_kind: Option<String>,
}

/// What an event means for the run's end.
enum Signal {
    Nothing,
    Ended,
    Errored,
    Restarted,
    Gap,
}

#[async_trait]
impl AgentSession for OpenclawSession {
    async fn run(&self, _task: &Task, output: OutputSink) -> Outcome {
        let shared = &self.shared;
        let t = shared.config.timing.clone();
        let mut run = RunState {
            run_id: self.params.idempotency_key.clone(),
            session_key: self.params.session_key.clone(),
            ..RunState::default()
        };
        // Routed before the request leaves: events can precede the first response.
        let (mut events, _route) = shared.route(&run.run_id);
        let mut conn = shared.subscribe();
        let mut generation = conn.borrow_and_update().generation;
        let mut abort_rx = self.abort.subscribe();
        if let Some(previous) = &self.previous {
            self.abort_previous(previous).await;
        }
        let mut responses = self.send_agent().ok();
        let mut waiter: Option<mpsc::UnboundedReceiver<Response>> = None;
        let mut lost_at = responses.is_none().then(|| Instant::now() + t.reconcile_timeout);
        let mut settle_at: Option<Instant> = None;
        let mut error_at: Option<Instant> = None;
        let mut abort_at: Option<Instant> = None;
        let mut abort_wanted = false;

        loop {
            tokio::select! {
                r = recv(&mut responses) => match r {
                    Some(resp) => {
                        if let Some(outcome) = run.on_response(resp) {
                            self.drain(&mut run, &mut events, &output).await;
                            return run.merge(outcome);
                        }
                    }
                    None => responses = None,
                },
                r = recv(&mut waiter) => {
                    waiter = None;
                    if let Some(Response { result: Ok(p), .. }) = r {
                        if let Some(outcome) = self.waited(&mut run, &p, &mut events, &output).await {
                            return outcome;
                        }
                        waiter = self.send_wait(&run);
                    }
                }
                Some(ev) = events.recv() => match run.on_event(&ev, &output).await {
                    Signal::Nothing => {}
                    Signal::Ended => { settle_at.get_or_insert(Instant::now() + t.final_grace); }
                    Signal::Errored => { error_at.get_or_insert(Instant::now() + t.lifecycle_error_grace); }
                    Signal::Restarted => error_at = None,
                    Signal::Gap => {
                        if waiter.is_none() {
                            waiter = self.send_wait(&run);
                        }
                    }
                },
                changed = conn.changed() => {
                    if changed.is_err() {
                        return lost("the gateway connection was stopped");
                    }
                    let c = *conn.borrow_and_update();
                    if !c.ready {
                        lost_at.get_or_insert(Instant::now() + t.reconcile_timeout);
                    } else if c.generation != generation {
                        generation = c.generation;
                        lost_at = None;
                        // Events sent while the socket was down are gone (even
                        // with no visible gap), and a gateway that restarted
                        // numbers a re-run from 1 again.
                        run.gap = true;
                        run.last_seq = None;
                        tracing::info!(run = %run.run_id, gateway = %shared.config.name, "reconnected; reconciling the run");
                        if run.accepted {
                            waiter = self.send_wait_now(&run);
                        }
                        // The final response of the first request is lost with its
                        // connection. Re-sending under the same idempotency key
                        // returns the existing run (or its cached result) rather
                        // than starting a second one; only a gateway that lost the
                        // run (a restart) starts it again, under the same run id.
                        responses = self.send_agent().ok();
                        if abort_wanted {
                            self.send_abort(&run).await;
                        }
                    }
                }
                changed = abort_rx.changed() => {
                    if changed.is_ok() && abort_rx.borrow_and_update().is_some() {
                        abort_wanted = true;
                        self.send_abort(&run).await;
                        abort_at.get_or_insert(Instant::now() + t.abort_timeout);
                    }
                }
                () = sleep_until(lost_at) => {
                    return lost(&format!(
                        "the connection to openclaw gateway {} was lost and the run was not reconciled within {:?}",
                        shared.config.name, t.reconcile_timeout
                    ));
                }
                () = sleep_until(settle_at) => return self.settle(&mut run, &mut events, &output).await,
                () = sleep_until(error_at) => return self.settle(&mut run, &mut events, &output).await,
                () = sleep_until(abort_at) => {
                    return Outcome::Failed {
                        error: TaskError::new(TaskErrorKind::Aborted, format!("the abort was not confirmed within {:?}", t.abort_timeout)),
                        retryable: false,
                    };
                }
            }
        }
    }

    async fn abort(&self, mode: AbortMode) {
        self.abort.send_replace(Some(mode));
    }

    async fn close(&self, _outcome: &Outcome) {}
}

impl OpenclawSession {
    fn send_agent(&self) -> Result<mpsc::UnboundedReceiver<Response>, RequestError> {
        let params = serde_json::to_value(&self.params).unwrap_or(Value::Null);
        self.shared.send("agent", &params)
    }

    /// `agent.wait` that answers when the run ends (re-sent while it runs).
    fn send_wait(&self, run: &RunState) -> Option<mpsc::UnboundedReceiver<Response>> {
        let timeout_ms = u64::try_from(self.shared.config.timing.request_timeout.as_millis()).unwrap_or(u64::MAX);
        let params = serde_json::to_value(AgentWaitParams { run_id: run.run_id.clone(), timeout_ms }).ok()?;
        self.shared.send("agent.wait", &params).ok()
    }

    /// `agent.wait` that answers at once: has the run ended?
    fn send_wait_now(&self, run: &RunState) -> Option<mpsc::UnboundedReceiver<Response>> {
        let params = serde_json::to_value(AgentWaitParams { run_id: run.run_id.clone(), timeout_ms: 0 }).ok()?;
        self.shared.send("agent.wait", &params).ok()
    }

    /// Reads an `agent.wait` answer; an outcome if the run has ended.
    async fn waited(
        &self,
        run: &mut RunState,
        p: &Value,
        events: &mut mpsc::UnboundedReceiver<RunEvent>,
        output: &OutputSink,
    ) -> Option<Outcome> {
        let ended = p.get("endedAt").is_some_and(|v| !v.is_null());
        let status = str_at(p, "status").unwrap_or("");
        if status == "timeout" && !ended {
            return None; // only the wait expired; the run goes on
        }
        self.drain(run, events, output).await;
        match status {
            "ok" => {
                // The gateway's word wins over an error event a later retry inside it overcame.
                run.error = None;
                Some(self.settle(run, events, output).await)
            }
            "error" => {
                run.error.get_or_insert_with(|| str_at(p, "error").unwrap_or("the run failed").to_owned());
                Some(run.by_events())
            }
            "timeout" => {
                if str_at(p, "stopReason") == Some("aborted") {
                    run.aborted = true;
                }
                Some(if run.aborted { aborted() } else { timed_out() })
            }
            _ => None,
        }
    }

    /// The outcome the events describe, once they said the run ended; the
    /// final text comes from `chat.history` when events may have been lost.
    async fn settle(
        &self,
        run: &mut RunState,
        events: &mut mpsc::UnboundedReceiver<RunEvent>,
        output: &OutputSink,
    ) -> Outcome {
        self.drain(run, events, output).await;
        let succeeded = !run.aborted && run.error.is_none();
        if succeeded && run.final_text.is_none() && (run.gap || run.text.is_empty()) {
            self.history(run).await;
        }
        run.by_events()
    }

    /// Fills in the final text from `chat.history` (events were lost).
    async fn history(&self, run: &mut RunState) {
        let params = json!(ChatHistoryParams { session_key: run.session_key.clone(), limit: 5 });
        let Ok(p) = self.shared.request("chat.history", &params, self.shared.config.timing.request_timeout).await
        else {
            return;
        };
        let messages = p.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
        if let Some(text) =
            messages.iter().rev().find(|m| str_at(m, "role") == Some("assistant")).and_then(message_text)
        {
            run.final_text = Some(text);
        }
    }

    async fn send_abort(&self, run: &RunState) {
        let shared = &self.shared;
        let methods = shared.status().hello.map(|h| h.methods).unwrap_or_default();
        let (method, params) = if methods.iter().any(|m| m == "sessions.abort") {
            ("sessions.abort", json!(SessionsAbortParams { key: run.session_key.clone(), run_id: run.run_id.clone() }))
        } else {
            ("chat.abort", json!(ChatAbortParams { session_key: run.session_key.clone(), run_id: run.run_id.clone() }))
        };
        match shared.request(method, &params, shared.config.timing.request_timeout).await {
            Ok(p) => tracing::debug!(run = %run.run_id, method, answer = %p, "abort sent"),
            // After a reconnect the abort is sent again.
            Err(e) => tracing::warn!(run = %run.run_id, method, error = %e, "cannot send the abort yet"),
        }
    }

    /// Aborts what may be left of the previous attempt's run (its connection
    /// was lost, or Godel restarted): the gateway serializes runs on a session
    /// key, so a lingering run would hold this one back. Harmless when that
    /// run is over, unknown, or was on another gateway.
    async fn abort_previous(&self, previous: &str) {
        let shared = &self.shared;
        let methods = shared.status().hello.map(|h| h.methods).unwrap_or_default();
        let key = self.params.session_key.clone();
        let run_id = previous.to_owned();
        let (method, params) = if methods.iter().any(|m| m == "sessions.abort") {
            ("sessions.abort", json!(SessionsAbortParams { key, run_id }))
        } else {
            ("chat.abort", json!(ChatAbortParams { session_key: key, run_id }))
        };
        let answer = shared.request(method, &params, shared.config.timing.request_timeout).await;
        tracing::debug!(run = previous, method, ?answer, "aborted what was left of the previous attempt");
    }

    /// Processes events that arrived before the decision.
    async fn drain(&self, run: &mut RunState, events: &mut mpsc::UnboundedReceiver<RunEvent>, output: &OutputSink) {
        while let Ok(ev) = events.try_recv() {
            run.on_event(&ev, output).await;
        }
    }
}

impl RunState {
    /// Reads a response to `agent`; an outcome once it is final.
    fn on_response(&mut self, resp: Response) -> Option<Outcome> {
        match resp.result {
            Ok(p) => {
                let status = str_at(&p, "status").unwrap_or("");
                if matches!(status, "accepted" | "in_flight" | "started") {
                    self.accepted = true;
                    if let Some(id) = str_at(&p, "runId") {
                        self.run_id = id.to_owned();
                    }
                    return None;
                }
                self.accepted = true;
                let texts: Vec<&str> = p
                    .pointer("/result/payloads")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(|x| str_at(x, "text")).collect())
                    .unwrap_or_default();
                if !texts.is_empty() {
                    self.final_text = Some(texts.join("\n"));
                }
                if let Some(meta) = p.pointer("/result/meta/agentMeta") {
                    self.provider = str_at(meta, "provider").map(str::to_owned).or(self.provider.take());
                    self.model = str_at(meta, "model").map(str::to_owned).or(self.model.take());
                    if let Some(u) = meta.get("usage") {
                        self.read_usage(u);
                    }
                }
                Some(match status {
                    "ok" => self.completed(),
                    "timeout" if str_at(&p, "summary") == Some("aborted") || self.aborted => aborted(),
                    "timeout" => timed_out(),
                    _ => {
                        let why = p.get("error").map_or_else(
                            || str_at(&p, "summary").unwrap_or("the run failed").to_owned(),
                            |e| str_at(e, "message").map_or_else(|| e.to_string(), str::to_owned),
                        );
                        Outcome::Failed { error: TaskError::new(TaskErrorKind::Error, why), retryable: true }
                    }
                })
            }
            Err(e) => Some(refused(&e)),
        }
    }

    /// Reads a run event, streaming output; says whether the run ended.
    async fn on_event(&mut self, ev: &RunEvent, output: &OutputSink) -> Signal {
        let p = &ev.payload;
        let data = p.get("data").cloned().unwrap_or(Value::Null);
        if ev.event == "chat" {
            return match str_at(p, "state") {
                Some("final") => {
                    if let Some(text) = p.get("message").and_then(message_text) {
                        self.final_text = Some(text);
                    }
                    if let Some(u) = p.get("usage") {
                        self.read_usage(u);
                    }
                    Signal::Ended
                }
                Some("aborted") => {
                    self.aborted = true;
                    Signal::Ended
                }
                Some("error") => {
                    self.error = Some(str_at(p, "errorMessage").unwrap_or("the run failed").to_owned());
                    self.error_kind = str_at(p, "errorKind").map(str::to_owned);
                    Signal::Errored
                }
                _ => Signal::Nothing,
            };
        }
        let mut signal = Signal::Nothing;
        if let Some(seq) = p.get("seq").and_then(Value::as_u64) {
            match self.last_seq {
                Some(last) if seq <= last => return Signal::Nothing, // a duplicate
                Some(last) if seq != last + 1 => {
                    self.gap = true;
                    signal = Signal::Gap;
                }
                _ => {}
            }
            self.last_seq = Some(seq);
        }
        match str_at(p, "stream").unwrap_or("") {
            "assistant" => {
                // `delta` is the new text; `text` the whole reply so far. Older
                // gateways may send only one of them.
                let delta = match (str_at(&data, "text"), str_at(&data, "delta")) {
                    (Some(text), Some(d)) => {
                        self.text = text.to_owned();
                        d.to_owned()
                    }
                    (None, Some(d)) => {
                        self.text.push_str(d);
                        d.to_owned()
                    }
                    (Some(text), None) => {
                        let new = text.strip_prefix(self.text.as_str()).unwrap_or(text).to_owned();
                        self.text = text.to_owned();
                        new
                    }
                    (None, None) => String::new(),
                };
                if !delta.is_empty() {
                    output.send(OutputStream::Stdout, delta).await;
                }
            }
            "tool" => {
                let phase = str_at(&data, "phase").unwrap_or("");
                if phase == "start" || phase == "result" {
                    let name = str_at(&data, "name").unwrap_or("?");
                    let error =
                        if data.get("isError").and_then(Value::as_bool) == Some(true) { " (error)" } else { "" };
                    output.send(OutputStream::System, format!("tool {name} {phase}{error}\n")).await;
                }
            }
            "usage" => self.read_usage(&data),
            "lifecycle" => match str_at(&data, "phase").unwrap_or("") {
                "start" => return Signal::Restarted,
                "model" => {
                    self.provider = str_at(&data, "provider").map(str::to_owned).or(self.provider.take());
                    self.model = str_at(&data, "model").map(str::to_owned).or(self.model.take());
                }
                "end" => {
                    if data.get("aborted").and_then(Value::as_bool) == Some(true) {
                        self.aborted = true;
                    }
                    if let Some(text) = str_at(&data, "text") {
                        self.final_text = Some(text.to_owned());
                    }
                    self.error = None;
                    return Signal::Ended;
                }
                "error" => {
                    self.error = Some(str_at(&data, "error").unwrap_or("the run failed").to_owned());
                    if data.get("aborted").and_then(Value::as_bool) == Some(true) {
                        self.aborted = true;
                        return Signal::Ended;
                    }
                    return Signal::Errored;
                }
                _ => {}
            },
            _ => {}
        }
        signal
    }

    fn read_usage(&mut self, u: &Value) {
        let n = |keys: [&str; 2]| keys.iter().find_map(|k| u.get(*k).and_then(Value::as_u64));
        let input = n(["input", "inputTokens"]);
        let output = n(["output", "outputTokens"]);
        let total = n(["total", "totalTokens"]);
        self.usage = [input.or(self.usage[0]), output.or(self.usage[1]), total.or(self.usage[2])];
    }

    fn completed(&self) -> Outcome {
        let [input, output, total] = self.usage;
        let total = total.or_else(|| Some(input? + output?));
        Outcome::Completed {
            result: json!({
                "text": self.final_text.clone().unwrap_or_else(|| self.text.clone()),
                "run_id": self.run_id,
                "session_key": self.session_key,
                "model": self.model,
                "provider": self.provider,
                "usage": {"input_tokens": input, "output_tokens": output, "total_tokens": total},
            }),
        }
    }

    /// The outcome the events alone describe.
    fn by_events(&self) -> Outcome {
        if self.aborted {
            return aborted();
        }
        match &self.error {
            Some(e) => {
                let permanent = matches!(self.error_kind.as_deref(), Some("refusal" | "context_length"));
                let kind = if self.error_kind.as_deref() == Some("timeout") {
                    TaskErrorKind::Timeout
                } else {
                    TaskErrorKind::Error
                };
                Outcome::Failed {
                    error: TaskError::new(kind, format!("the gateway run failed: {e}")),
                    retryable: !permanent,
                }
            }
            None => self.completed(),
        }
    }

    /// A final response wins, with what events saw filling its gaps.
    fn merge(&self, outcome: Outcome) -> Outcome {
        match outcome {
            Outcome::Completed { .. } => self.completed(),
            failed => failed,
        }
    }
}

fn message_text(m: &Value) -> Option<String> {
    match m.get("content") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(parts)) => {
            let texts: Vec<&str> =
                parts.iter().filter(|p| str_at(p, "type") == Some("text")).filter_map(|p| str_at(p, "text")).collect();
            (!texts.is_empty()).then(|| texts.concat())
        }
        _ => str_at(m, "text").map(str::to_owned),
    }
}

fn aborted() -> Outcome {
    Outcome::Failed {
        error: TaskError::new(TaskErrorKind::Aborted, "the run was aborted on the gateway"),
        retryable: false,
    }
}

fn timed_out() -> Outcome {
    Outcome::Failed { error: TaskError::new(TaskErrorKind::Timeout, "the gateway timed the run out"), retryable: true }
}

fn lost(message: &str) -> Outcome {
    Outcome::Failed { error: TaskError::new(TaskErrorKind::Error, message), retryable: true }
}

/// A refused `agent` request: retryable or not by the gateway's code.
fn refused(e: &GatewayError) -> Outcome {
    let kind = if e.code == "AGENT_TIMEOUT" { TaskErrorKind::Timeout } else { TaskErrorKind::Error };
    Outcome::Failed {
        error: TaskError::new(kind, format!("the gateway refused the run: {e}")),
        retryable: e.is_retryable(),
    }
}

async fn recv(rx: &mut Option<mpsc::UnboundedReceiver<Response>>) -> Option<Response> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
