//! The `http` adapter through a real orchestrator over SQLite, against the
//! fake OpenAI-compatible endpoint of `godel-fakes` on loopback: streamed
//! and plain answers, the fallback chain (429, 5xx, permanent 4xx), aborts
//! that cancel the request, and spend and budgets per tenant, also across
//! two orchestrators sharing one store.

use std::sync::Arc;
use std::time::Duration;

use godel_core::adapter::{HttpAdapter, HttpConfig, Price};
use godel_core::engine::{Budget, Budgets};
use godel_core::event::{EventKind, OutputStream};
use godel_core::store::{SqliteStore, Store, StoreError};
use godel_core::{
    AgentConfig, AgentId, AgentKind, CancellationToken, EngineConfig, EngineError, EventPattern, NewTask, Orchestrator,
    Subscription, Task, TaskErrorKind, TaskId, TaskStatus, TenantId, Timestamp,
};
use godel_fakes::openai::{FakeOpenAi, Reply};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::task::JoinHandle;

use crate::support::fast_engine;

const KEY: &str = "sk-godel-test";
/// Costs 2.00 per million input tokens and 8.00 per million output tokens.
const PRICE: Price = Price { input_per_million: 2_000_000, output_per_million: 8_000_000 };
/// What an answer with 12 input and 5 output tokens costs at [`PRICE`], in micros.
const COST: u64 = 12 * 2 + 5 * 8;

fn http_config(fake: &FakeOpenAi, models: &[&str]) -> HttpConfig {
    let mut config = HttpConfig::new(fake.base_url(), models.iter().copied());
    config.api_key = Some(KEY.to_owned());
    config.request_timeout = Duration::from_secs(5);
    for model in models {
        config.prices.insert((*model).to_owned(), PRICE);
    }
    config
}

fn http_agent(config: HttpConfig) -> AgentConfig {
    let adapter = HttpAdapter::new(config).expect("a valid http configuration");
    AgentConfig::new(AgentId::new("llm").unwrap(), AgentKind::Http, Arc::new(adapter)).capacity(4)
}

fn prompt(text: &str) -> NewTask {
    NewTask::prompt(text)
}

/// An orchestrator over a SQLite store, running until dropped.
struct Harness {
    orchestrator: Orchestrator,
    shutdown: CancellationToken,
    engine: Option<JoinHandle<Result<(), StoreError>>>,
}

impl Harness {
    fn new(store: Arc<dyn Store>, agent: AgentConfig, config: EngineConfig) -> Self {
        let orchestrator = Orchestrator::builder(store).config(config).agent(agent).build().unwrap();
        Self { orchestrator, shutdown: CancellationToken::new(), engine: None }
    }

    fn start(&mut self) {
        let (orchestrator, shutdown) = (self.orchestrator.clone(), self.shutdown.clone());
        self.engine = Some(tokio::spawn(async move { orchestrator.run(shutdown).await }));
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(engine) = self.engine.take() {
            engine.await.unwrap().unwrap();
        }
    }

    fn subscribe(&self) -> Subscription {
        self.orchestrator.subscribe(vec![EventPattern::new("*").unwrap()])
    }

    async fn wait_status(&self, id: TaskId, done: impl Fn(TaskStatus) -> bool) -> Task {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let task = self.orchestrator.get(id).await.unwrap();
            if done(task.status) {
                return task;
            }
            assert!(tokio::time::Instant::now() < deadline, "task {id} still {} after 20 s", task.status);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_terminal(&self, id: TaskId) -> Task {
        self.wait_status(id, TaskStatus::is_terminal).await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn sqlite() -> (Arc<dyn Store>, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("godel.db")).await.unwrap();
    (Arc::new(store), dir)
}

/// Events until (and including) the first for which `last` holds.
async fn events_until(subscription: &mut Subscription, last: impl Fn(&EventKind) -> bool) -> Vec<EventKind> {
    let mut events = Vec::new();
    let collect = async {
        loop {
            let published = subscription.recv().await.expect("no lag in a small test");
            let kind = published.event.kind.clone();
            let stop = last(&kind);
            events.push(kind);
            if stop {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), collect).await.expect("the awaited event within 20 s");
    events
}

fn output_of(events: &[EventKind], id: TaskId, wanted: OutputStream) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            EventKind::TaskOutput { task, stream, data, .. } if *task == id && *stream == wanted => Some(data.as_str()),
            _ => None,
        })
        .collect()
}

fn this_month() -> String {
    let now = Timestamp::now().to_string();
    now[..7].to_owned()
}

#[tokio::test]
async fn a_streamed_answer_arrives_as_output_with_usage_and_cost() {
    let fake = FakeOpenAi::start(KEY).await;
    let text = "Grüße aus dem Modell: ✓ déjà vu, 🦀 and done";
    fake.script("gpt-a", [Reply::answer(text, 12, 5)]);
    // Seven-byte writes cut events, and the multi-byte characters, across chunks.
    fake.split_writes(Some(7));
    let mut config = http_config(&fake, &["gpt-a"]);
    config.system_prompt = Some("Be brief.".into());
    let (store, _dir) = sqlite().await;
    let mut h = Harness::new(store.clone(), http_agent(config), fast_engine());
    let mut events = h.subscribe();
    h.start();

    let task = h.orchestrator.submit(prompt("Say hello")).await.unwrap();
    let seen =
        events_until(&mut events, |e| matches!(e, EventKind::TaskCompleted { task: t, .. } if *t == task.id)).await;
    let done = h.wait_terminal(task.id).await;

    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(output_of(&seen, task.id, OutputStream::Stdout), text, "the deltas, in order, make the text");
    let deltas = seen.iter().filter(|e| matches!(e, EventKind::TaskOutput { task: t, .. } if *t == task.id)).count();
    assert!(deltas > 1, "streamed as several deltas, got {deltas}");
    let result = done.result.unwrap();
    assert_eq!(
        result,
        json!({
            "text": text,
            "model": "gpt-a",
            "provider": "http",
            "usage": {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17},
            "cost_micros": COST,
        })
    );
    let body = fake.last_body("gpt-a").unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        body["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}])
    );
    assert_eq!(store.spend(&TenantId::default_tenant(), &this_month()).await.unwrap(), COST);
    h.stop().await;
}

#[tokio::test]
async fn a_plain_answer_has_usage_and_cost() {
    let fake = FakeOpenAi::start(KEY).await;
    fake.script("gpt-a", [Reply::answer("plain text answer", 12, 5)]);
    let mut config = http_config(&fake, &["gpt-a"]);
    config.stream = false;
    let (store, _dir) = sqlite().await;
    let mut h = Harness::new(store, http_agent(config), fast_engine());
    let mut events = h.subscribe();
    h.start();

    let task = h.orchestrator.submit(prompt("Answer plainly")).await.unwrap();
    let seen =
        events_until(&mut events, |e| matches!(e, EventKind::TaskCompleted { task: t, .. } if *t == task.id)).await;
    let done = h.wait_terminal(task.id).await;

    let result = done.result.unwrap();
    assert_eq!(result["text"], "plain text answer");
    assert_eq!(result["usage"], json!({"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}));
    assert_eq!(result["cost_micros"], COST);
    assert_eq!(output_of(&seen, task.id, OutputStream::Stdout), "plain text answer");
    let body = fake.last_body("gpt-a").unwrap();
    assert_eq!(body["stream"], false);
    assert!(body.get("stream_options").is_none(), "the strict endpoint refuses stream_options without stream");
    assert_eq!(body["messages"], json!([{"role": "user", "content": "Answer plainly"}]));
    h.stop().await;
}

#[tokio::test]
async fn a_rate_limited_model_falls_back_to_the_next() {
    let fake = FakeOpenAi::start(KEY).await;
    // Retry-After beyond the cap: not worth waiting for.
    fake.script("gpt-a", [Reply::rate_limited(Some(60))]);
    fake.script("gpt-b", [Reply::answer("from b", 12, 5)]);
    let (store, _dir) = sqlite().await;
    let mut h = Harness::new(store, http_agent(http_config(&fake, &["gpt-a", "gpt-b"])), fast_engine());
    let mut events = h.subscribe();
    h.start();

    let task = h.orchestrator.submit(prompt("hi")).await.unwrap();
    let seen =
        events_until(&mut events, |e| matches!(e, EventKind::TaskCompleted { task: t, .. } if *t == task.id)).await;
    let done = h.wait_terminal(task.id).await;

    assert_eq!(done.attempt, 1, "fallback happens inside one attempt");
    let result = done.result.unwrap();
    assert_eq!(result["model"], "gpt-b");
    assert_eq!(result["text"], "from b");
    assert_eq!(result["models_tried"], json!(["gpt-a", "gpt-b"]));
    assert_eq!(result["cost_micros"], COST);
    assert_eq!((fake.requests("gpt-a"), fake.requests("gpt-b")), (1, 1));
    let note = output_of(&seen, task.id, OutputStream::System);
    assert!(note.contains("gpt-a") && note.contains("429") && note.contains("gpt-b"), "{note}");
    h.stop().await;
}

#[tokio::test]
async fn a_short_retry_after_is_waited_out_on_the_same_model() {
    let fake = FakeOpenAi::start(KEY).await;
    fake.script("gpt-a", [Reply::rate_limited(Some(0)), Reply::answer("after the wait", 12, 5)]);
    fake.script("gpt-b", [Reply::answer("from b", 1, 1)]);
    let (store, _dir) = sqlite().await;
    let mut h = Harness::new(store, http_agent(http_config(&fake, &["gpt-a", "gpt-b"])), fast_engine());
    h.start();

    let task = h.orchestrator.submit(prompt("hi")).await.unwrap();
    let result = h.wait_terminal(task.id).await.result.unwrap();

    assert_eq!(result["model"], "gpt-a");
    assert_eq!(result["text"], "after the wait");
    assert!(result.get("models_tried").is_none(), "{result}");
    assert_eq!((fake.requests("gpt-a"), fake.requests("gpt-b")), (2, 0));
    h.stop().await;
}

#[tokio::test]
async fn a_server_error_is_retried_and_then_succeeds() {
    let fake = FakeOpenAi::start(KEY).await;
    fake.script("gpt-a", [Reply::error(500, "The server had an error"), Reply::answer("second time lucky", 12, 5)]);
    let (store, _dir) = sqlite().await;
    let mut h = Harness::new(store, http_agent(http_config(&fake, &["gpt-a"])), fast_engine());
    let mut events = h.subscribe();
    h.start();

    let task = h.orchestrator.submit(prompt("hi")).await.unwrap();
    let seen =
        events_until(&mut events, |e| matches!(e, EventKind::TaskCompleted { task: t, .. } if *t == task.id)).await;
    let done = h.wait_terminal(task.id).await;

    assert_eq!(done.status, TaskStatus::Completed);
    assert_eq!(done.attempt, 2, "the 500 cost one attempt");
    assert_eq!(done.result.unwrap()["text"], "second time lucky");
    let retried = seen.iter().find_map(|e| match e {
        EventKind::TaskRetrying { error, .. } => Some(error.message.clone()),
        _ => None,
    });
    let retried = retried.expect("a task.retrying event");
    assert!(retried.contains("HTTP 500") && retried.contains("The server had an error"), "{retried}");
    assert_eq!(fake.requests("gpt-a"), 2);
    h.stop().await;
}

#[tokio::test]
async fn a_permanent_client_error_fails_without_retry() {
    let fake = FakeOpenAi::start(KEY).await;
    fake.script("gpt-a", [Reply::error(400, "This model's maximum context length is 8192 tokens")]);
    fake.script("gpt-b", [Reply::error(500, "down")]);
    fake.script("gpt-c", [Reply::error(400, "Invalid 'messages[0].content': string too long")]);
    let (store, _dir) = sqlite().await;
    let mut h = Harness::new(store, http_agent(http_config(&fake, &["gpt-a", "gpt-b", "gpt-c"])), fast_engine());
    h.start();

    let task = h.orchestrator.submit(prompt("too long").max_attempts(3)).await.unwrap();
    let done = h.wait_terminal(task.id).await;

    // The chain went on past the 400 (another model may accept), and the last error decided.
    assert_eq!(done.status, TaskStatus::Failed, "{:?}", done.error);
    assert_eq!(done.attempt, 1, "not retried");
    let error = done.error.unwrap();
    assert_eq!(error.kind, TaskErrorKind::Error);
    assert!(error.message.contains("string too long") && error.message.contains("gpt-c"), "{}", error.message);
    assert_eq!((fake.requests("gpt-a"), fake.requests("gpt-b"), fake.requests("gpt-c")), (1, 1, 1));

    // The same chain ending on a retryable error is retried, then dead-lettered.
    fake.script("gpt-c", [Reply::rate_limited(None)]);
    let task = h.orchestrator.submit(prompt("again").max_attempts(2)).await.unwrap();
    let done = h.wait_terminal(task.id).await;
    assert_eq!(done.status, TaskStatus::DeadLetter);
    assert_eq!(done.attempt, 2);
    assert!(done.error.unwrap().message.contains("HTTP 429"));
    h.stop().await;
}

#[tokio::test]
async fn a_wrong_key_is_a_permanent_failure() {
    let fake = FakeOpenAi::start(KEY).await;
    fake.script("gpt-a", [Reply::answer("never", 1, 1)]);
    let mut config = http_config(&fake, &["gpt-a"]);
    config.api_key = Some("sk-wrong".into());
    let (store, _dir) = sqlite().await;
    let mut h = Harness::new(store, http_agent(config), fast_engine());
    h.start();

    let task = h.orchestrator.submit(prompt("hi").max_attempts(3)).await.unwrap();
    let done = h.wait_terminal(task.id).await;
    assert_eq!(done.status, TaskStatus::Failed);
    assert!(done.error.unwrap().message.contains("HTTP 401: Incorrect API key provided"));
    assert_eq!(fake.requests("gpt-a"), 0, "refused before reaching the model");

    // A task without a prompt cannot run on an http agent at all.
    let task = h.orchestrator.submit(NewTask::command(["true"]).max_attempts(3)).await.unwrap();
    let done = h.wait_terminal(task.id).await;
    assert_eq!(done.status, TaskStatus::Failed);
    assert!(done.error.unwrap().message.contains("prompt"));
    h.stop().await;
}

#[tokio::test]
async fn timeouts_and_cancels_abort_the_request() {
    let fake = FakeOpenAi::start(KEY).await;
    fake.script("slow", [Reply::Stall]);
    let (store, _dir) = sqlite().await;
    let mut h = Harness::new(store.clone(), http_agent(http_config(&fake, &["slow"])), fast_engine());
    h.start();

    // Streaming: the engine's deadline aborts the run mid-stream.
    let task = h.orchestrator.submit(prompt("take your time").timeout(Duration::from_millis(300)).max_attempts(1));
    let task = task.await.unwrap();
    let done = h.wait_terminal(task.id).await;
    assert_eq!(done.status, TaskStatus::DeadLetter);
    assert_eq!(done.error.unwrap().kind, TaskErrorKind::Timeout);
    wait_until(|| fake.cancelled("slow") == 1, "the fake saw the streamed request dropped").await;

    // Plain: a cancel aborts the run while the body trickles in.
    let mut config = http_config(&fake, &["slow"]);
    config.stream = false;
    let mut plain = Harness::new(store, http_agent(config), fast_engine());
    plain.start();
    let task = plain.orchestrator.submit(prompt("and you too")).await.unwrap();
    plain.wait_status(task.id, |s| s == TaskStatus::Running).await;
    wait_until(|| fake.requests("slow") == 2, "the plain request reached the fake").await;
    plain.orchestrator.cancel(task.id).await.unwrap();
    assert_eq!(plain.wait_terminal(task.id).await.status, TaskStatus::Cancelled);
    wait_until(|| fake.cancelled("slow") == 2, "the fake saw the plain request dropped").await;
    plain.stop().await;
    h.stop().await;
}

async fn wait_until(check: impl Fn() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn budget_events(events: &[EventKind]) -> Vec<(String, u64, u64, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            EventKind::BudgetExceeded { period, spent_micros, limit_micros, hard } => {
                Some((period.clone(), *spent_micros, *limit_micros, *hard))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn crossing_the_soft_limit_raises_one_event() {
    let fake = FakeOpenAi::start(KEY).await;
    fake.script("gpt-a", [Reply::answer("ok", 12, 5)]);
    let (store, _dir) = sqlite().await;
    let budgets = Budgets { default: Budget { soft: Some(100), hard: None }, ..Budgets::default() };
    let config = EngineConfig { budgets, ..fast_engine() };
    let mut h = Harness::new(store, http_agent(http_config(&fake, &["gpt-a"])), config);
    let mut events = h.subscribe();
    h.start();

    let mut seen = Vec::new();
    for _ in 0..3 {
        let task = h.orchestrator.submit(prompt("spend")).await.unwrap();
        let until = |e: &EventKind| matches!(e, EventKind::TaskCompleted { task: t, .. } if *t == task.id);
        seen.extend(events_until(&mut events, until).await);
    }

    // 64, then 128 (crosses 100), then 192: one event, at the crossing.
    assert_eq!(budget_events(&seen), [(this_month(), 2 * COST, 100, false)]);
    let published = seen.iter().find(|e| matches!(e, EventKind::BudgetExceeded { .. })).unwrap();
    assert_eq!(published.name(), "budget.exceeded");
    h.stop().await;
}

#[tokio::test]
async fn past_the_hard_limit_new_tasks_are_refused_and_queued_ones_finish() {
    let fake = FakeOpenAi::start(KEY).await;
    fake.script("gpt-a", [Reply::answer("ok", 12, 5)]);
    let (store, _dir) = sqlite().await;
    let acme = TenantId::new("acme").unwrap();
    let mut budgets = Budgets { default: Budget { soft: None, hard: Some(1) }, ..Budgets::default() };
    budgets.tenants.insert(acme.clone(), Budget { soft: Some(50), hard: Some(100) });
    let config = EngineConfig { tenant: acme.clone(), budgets, ..fast_engine() };
    let mut h = Harness::new(store.clone(), http_agent(http_config(&fake, &["gpt-a"])), config);
    let mut events = h.subscribe();

    // Queued before any spend, run after: all three run although the second already reaches the limit.
    let mut queued = vec![h.orchestrator.submit(prompt("one")).await.unwrap().id];
    let batch = h.orchestrator.submit_batch(vec![prompt("two"), prompt("three")]).await.unwrap();
    queued.extend(batch.iter().map(|t| t.id));
    h.start();
    let mut seen = Vec::new();
    for id in &queued {
        assert_eq!(h.wait_terminal(*id).await.status, TaskStatus::Completed);
    }
    while budget_events(&seen).len() < 2 {
        seen.extend(events_until(&mut events, |e| matches!(e, EventKind::BudgetExceeded { .. })).await);
    }
    assert_eq!(
        budget_events(&seen),
        [(this_month(), COST, 50, false), (this_month(), 2 * COST, 100, true)],
        "the soft limit at the first task, the hard one at the second"
    );
    assert_eq!(store.spend(&acme, &this_month()).await.unwrap(), 3 * COST);

    let refused = h.orchestrator.submit(prompt("four")).await.unwrap_err();
    match &refused {
        EngineError::BudgetExceeded { tenant, spent, limit, period } => {
            assert_eq!((tenant, *spent, *limit, period), (&acme, 3 * COST, 100, &this_month()));
        }
        other => panic!("expected BudgetExceeded, got {other:?}"),
    }
    assert!(!refused.is_retryable());
    let message = refused.to_string();
    assert!(message.contains("acme") && message.contains("0.000192") && message.contains("0.0001"), "{message}");
    assert!(matches!(h.orchestrator.enqueue(prompt("five")).await, Err(EngineError::BudgetExceeded { .. })));
    assert!(matches!(h.orchestrator.submit_batch(vec![prompt("six")]).await, Err(EngineError::BudgetExceeded { .. })));
    assert_eq!(fake.requests("gpt-a"), 3, "nothing refused reached the endpoint");

    // Another tenant on the same store has its own spend.
    assert_eq!(store.spend(&TenantId::default_tenant(), &this_month()).await.unwrap(), 0);
    h.stop().await;
}

#[tokio::test]
async fn spend_is_shared_by_orchestrators_on_one_store() {
    let fake = FakeOpenAi::start(KEY).await;
    fake.script("gpt-a", [Reply::answer("ok", 12, 5)]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("godel.db");
    let budgets = Budgets { default: Budget { soft: None, hard: Some(100) }, ..Budgets::default() };
    let config = EngineConfig { budgets, ..fast_engine() };
    // Two handles on one database file, as two nodes would have.
    let store_a: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let store_b: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let mut a = Harness::new(store_a, http_agent(http_config(&fake, &["gpt-a"])), config.clone());
    let mut b = Harness::new(store_b, http_agent(http_config(&fake, &["gpt-a"])), config);
    let mut b_events = b.subscribe();
    a.start();
    b.start();

    let first = a.orchestrator.submit(prompt("on a")).await.unwrap();
    assert_eq!(a.wait_terminal(first.id).await.status, TaskStatus::Completed);
    // 64 of 100 spent through a: b still accepts, and its task reaches the limit.
    let second = b.orchestrator.submit(prompt("on b")).await.unwrap();
    assert_eq!(b.wait_terminal(second.id).await.status, TaskStatus::Completed);
    let seen = events_until(&mut b_events, |e| matches!(e, EventKind::BudgetExceeded { .. })).await;
    assert_eq!(budget_events(&seen), [(this_month(), 2 * COST, 100, true)], "raised by the node that crossed");

    // a refuses because of what b spent.
    assert!(matches!(
        a.orchestrator.submit(prompt("refused")).await,
        Err(EngineError::BudgetExceeded { spent, .. }) if spent == 2 * COST
    ));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_result_without_cost_records_no_spend() {
    let fake = FakeOpenAi::start(KEY).await;
    fake.script("unpriced", [Reply::answer("free?", 12, 5)]);
    let mut config = http_config(&fake, &["unpriced"]);
    config.prices.clear();
    let (store, _dir) = sqlite().await;
    let mut h = Harness::new(store.clone(), http_agent(config), fast_engine());
    h.start();
    let task = h.orchestrator.submit(prompt("hi")).await.unwrap();
    let result: Value = h.wait_terminal(task.id).await.result.unwrap();
    assert_eq!(result["usage"]["total_tokens"], 17);
    assert!(result.get("cost_micros").is_none(), "no price, no cost: {result}");
    assert_eq!(store.spend(&TenantId::default_tenant(), &this_month()).await.unwrap(), 0);
    h.stop().await;
}

#[tokio::test]
async fn a_stream_cut_short_falls_back_and_keeps_its_partial_output() {
    let fake = FakeOpenAi::start(KEY).await;
    fake.script("gpt-a", [Reply::Cut { text: "half an ans".into() }]);
    fake.script("gpt-b", [Reply::answer("a whole answer", 12, 5)]);
    let (store, _dir) = sqlite().await;
    let mut h = Harness::new(store, http_agent(http_config(&fake, &["gpt-a", "gpt-b"])), fast_engine());
    let mut events = h.subscribe();
    h.start();

    let task = h.orchestrator.submit(prompt("hi")).await.unwrap();
    let seen =
        events_until(&mut events, |e| matches!(e, EventKind::TaskCompleted { task: t, .. } if *t == task.id)).await;
    let result = h.wait_terminal(task.id).await.result.unwrap();

    assert_eq!(result["model"], "gpt-b");
    assert_eq!(result["text"], "a whole answer", "only the answering model's text is the result");
    assert_eq!(output_of(&seen, task.id, OutputStream::Stdout), "half an ansa whole answer");
    let note = output_of(&seen, task.id, OutputStream::System);
    assert!(note.contains("gpt-a") && note.contains("without [DONE]"), "{note}");
    h.stop().await;
}

#[tokio::test]
async fn a_plain_answer_cut_short_falls_back() {
    let fake = FakeOpenAi::start(KEY).await;
    fake.script("gpt-a", [Reply::Cut { text: "half".into() }]);
    fake.script("gpt-b", [Reply::answer("whole", 12, 5)]);
    let mut config = http_config(&fake, &["gpt-a", "gpt-b"]);
    config.stream = false;
    let (store, _dir) = sqlite().await;
    let mut h = Harness::new(store, http_agent(config), fast_engine());
    h.start();
    let task = h.orchestrator.submit(prompt("hi")).await.unwrap();
    let result = h.wait_terminal(task.id).await.result.unwrap();
    assert_eq!((result["model"].as_str(), result["text"].as_str()), (Some("gpt-b"), Some("whole")));
    h.stop().await;
}

/// The fake refuses what OpenAI refuses, so the adapter's requests passing it means something.
#[tokio::test]
async fn the_fake_endpoint_is_as_strict_as_openai() {
    let fake = FakeOpenAi::start(KEY).await;
    fake.script("gpt-a", [Reply::answer("ok", 1, 1)]);
    let http = reqwest::Client::new();
    let url = format!("{}/chat/completions", fake.base_url());
    let call = |key: Option<&str>, body: Value| {
        let mut request = http.post(&url).json(&body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (None, json!({"model": "gpt-a", "messages": user}), 401, "API key"),
        (Some("sk-nope"), json!({"model": "gpt-a", "messages": user}), 401, "Incorrect API key"),
        (
            Some(KEY),
            json!({"model": "gpt-a", "messages": user, "colour": 1}),
            400,
            "Unrecognized request argument supplied: colour",
        ),
        (Some(KEY), json!({"messages": user}), 400, "you must provide a model parameter"),
        (Some(KEY), json!({"model": "gpt-a"}), 400, "Missing required parameter: 'messages'"),
        (Some(KEY), json!({"model": "gpt-a", "messages": []}), 400, "too short"),
        (Some(KEY), json!({"model": "gpt-a", "messages": [{"role": "user"}]}), 400, "messages.0.content"),
        (
            Some(KEY),
            json!({"model": "gpt-a", "messages": [{"role": "robot", "content": "x"}]}),
            400,
            "'robot' is not one of",
        ),
        (
            Some(KEY),
            json!({"model": "gpt-a", "messages": user, "stream_options": {"include_usage": true}}),
            400,
            "only allowed when 'stream' is enabled",
        ),
        (Some(KEY), json!({"model": "gpt-z", "messages": user}), 404, "does not exist"),
    ];
    for (key, body, status, message) in cases {
        let (got, answer) = call(key, body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        let said = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(said.contains(message), "{body}: {said}");
        assert!(answer["error"]["type"].is_string(), "OpenAI's error shape: {answer}");
    }
    assert_eq!(fake.requests("gpt-a"), 0, "no refused request reached the model");
    let (status, answer) = call(Some(KEY), json!({"model": "gpt-a", "messages": user, "temperature": 0.2})).await;
    assert_eq!((status, answer["choices"][0]["message"]["content"].as_str()), (200, Some("ok")));
    assert_eq!(answer["usage"]["total_tokens"], 2);
}

#[tokio::test]
async fn a_server_that_does_not_stream_is_read_as_plain() {
    let fake = FakeOpenAi::start(KEY).await;
    fake.script("gpt-a", [Reply::answer("all at once", 12, 5)]);
    fake.never_stream(true);
    let (store, _dir) = sqlite().await;
    let mut h = Harness::new(store, http_agent(http_config(&fake, &["gpt-a"])), fast_engine());
    h.start();
    let task = h.orchestrator.submit(prompt("stream please")).await.unwrap();
    let result = h.wait_terminal(task.id).await.result.unwrap();
    assert_eq!((result["text"].as_str(), result["cost_micros"].as_u64()), (Some("all at once"), Some(COST)));
    assert_eq!(fake.last_body("gpt-a").unwrap()["stream"], true);
    h.stop().await;
}

#[tokio::test]
async fn a_model_that_goes_silent_past_the_request_timeout_falls_back() {
    let fake = FakeOpenAi::start(KEY).await;
    fake.script("silent", [Reply::Hang]);
    fake.script("gpt-b", [Reply::answer("awake", 12, 5)]);
    for stream in [true, false] {
        let mut config = http_config(&fake, &["silent", "gpt-b"]);
        config.stream = stream;
        config.request_timeout = Duration::from_millis(200);
        let (store, _dir) = sqlite().await;
        let mut h = Harness::new(store, http_agent(config), fast_engine());
        let mut events = h.subscribe();
        h.start();
        let task = h.orchestrator.submit(prompt("hello?")).await.unwrap();
        let seen =
            events_until(&mut events, |e| matches!(e, EventKind::TaskCompleted { task: t, .. } if *t == task.id)).await;
        let result = h.wait_terminal(task.id).await.result.unwrap();
        assert_eq!((result["model"].as_str(), result["text"].as_str()), (Some("gpt-b"), Some("awake")), "{stream}");
        let note = output_of(&seen, task.id, OutputStream::System);
        assert!(note.contains("silent") && note.contains("stalled for 200ms"), "{stream}: {note}");
        h.stop().await;
    }
    assert_eq!(fake.requests("silent"), 2);
}
