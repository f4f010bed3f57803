//! The openclaw adapter against strict fake gateways on loopback, driven by
//! a real orchestrator over a memory store: a task's whole life, dropped
//! connections, pairing, bad credentials, reduced scopes, version mismatch,
//! cancel and timeout, failover across three gateways and backpressure.
//! Timers are shortened; every wait polls a condition with a deadline.

use std::sync::Arc;
use std::time::Duration;

use godel_core::adapter::openclaw::{
    DeviceIdentity, GatewayAuth, GatewayConfig, GatewaySnapshot, GatewayState, GatewayTiming, OpenclawRegistry,
};
use godel_core::event::OutputStream;
use godel_core::store::{MemoryStore, Store};
use godel_core::{
    AgentId, AgentStatus, CancellationToken, EngineConfig, NewTask, Orchestrator, Task, TaskErrorKind, TaskId,
    TaskStatus,
};
use godel_fakes::openclaw::{FakeAuth, FakeConfig, FakeGateway, RunEnd, RunScript, Step};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::support::fast_engine;

fn timing() -> GatewayTiming {
    GatewayTiming {
        connect_timeout: Duration::from_secs(2),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        reconcile_timeout: Duration::from_secs(1),
        abort_timeout: Duration::from_secs(2),
        lifecycle_error_grace: Duration::from_millis(300),
        final_grace: Duration::from_millis(200),
        open_wait: Duration::from_millis(500),
        request_timeout: Duration::from_secs(2),
    }
}

fn engine_config() -> EngineConfig {
    EngineConfig { kill_grace: Duration::from_millis(300), shutdown_grace: Duration::from_secs(2), ..fast_engine() }
}

fn fake_config() -> FakeConfig {
    FakeConfig { tick_interval: Duration::from_millis(100), ..FakeConfig::default() }
}

fn gateway(name: &str, fake: &FakeGateway) -> GatewayConfig {
    GatewayConfig { timing: timing(), ..GatewayConfig::new(name, fake.url()) }
}

/// A script whose steps are the message's characters, `delay` apart.
fn slow(delay: Duration) -> godel_fakes::openclaw::Script {
    Arc::new(move |message: &str| RunScript {
        steps: message.chars().map(|c| Step::Text(c.to_string())).collect(),
        step_delay: delay,
        usage: (3, 4),
        end: RunEnd::Ok,
    })
}

fn hang() -> godel_fakes::openclaw::Script {
    Arc::new(|_: &str| RunScript {
        steps: vec![Step::Text("working".into())],
        step_delay: Duration::ZERO,
        usage: (1, 1),
        end: RunEnd::Hang,
    })
}

struct Fleet {
    orchestrator: Orchestrator,
    registry: OpenclawRegistry,
    shutdown: CancellationToken,
    engine: Option<JoinHandle<Result<(), godel_core::StoreError>>>,
}

impl Fleet {
    async fn start(gateways: Vec<GatewayConfig>) -> Self {
        Self::start_with(DeviceIdentity::generate(), gateways).await
    }

    async fn start_with(device: DeviceIdentity, gateways: Vec<GatewayConfig>) -> Self {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let registry = OpenclawRegistry::new(device);
        let mut builder = Orchestrator::builder(store).config(engine_config());
        for g in gateways {
            builder = builder.agent(registry.add(g).unwrap().into());
        }
        let orchestrator = builder.build().unwrap();
        let shutdown = CancellationToken::new();
        let engine = tokio::spawn({
            let (o, s) = (orchestrator.clone(), shutdown.clone());
            async move { o.run(s).await }
        });
        Self { orchestrator, registry, shutdown, engine: Some(engine) }
    }

    /// Connects to a gateway and registers its agent, as the server does:
    /// the registry never calls the engine itself.
    fn attach(&self, config: GatewayConfig) -> Result<GatewaySnapshot, String> {
        let name = config.name.clone();
        let gateway = self.registry.add(config).map_err(|e| e.to_string())?;
        if let Err(e) = self.orchestrator.add_agent(gateway.into()) {
            self.registry.remove(&name);
            return Err(e.to_string());
        }
        self.registry.get(&name).ok_or_else(|| "vanished".to_owned())
    }

    /// Deregisters a gateway's agent and stops its connection.
    fn detach(&self, name: &str) -> Result<(), String> {
        let gateway = self.registry.get(name).ok_or_else(|| format!("no gateway {name}"))?;
        let _ = self.orchestrator.remove_agent(&gateway.agent);
        self.registry.remove(name);
        Ok(())
    }

    async fn submit(&self, task: NewTask) -> TaskId {
        self.orchestrator.submit(task).await.unwrap().id
    }

    async fn task(&self, id: TaskId) -> Task {
        self.orchestrator.get(id).await.unwrap()
    }

    async fn settled(&self, id: TaskId) -> Task {
        let o = self.orchestrator.clone();
        wait_until(&format!("task {id} to settle"), || {
            let o = o.clone();
            async move { o.get(id).await.unwrap().status.is_terminal() }
        })
        .await;
        self.task(id).await
    }

    fn state(&self, name: &str) -> (GatewayState, String) {
        let g = self.registry.get(name).unwrap();
        (g.state, g.message.unwrap_or_default())
    }

    fn agent_status(&self, name: &str) -> AgentStatus {
        let id = AgentId::new(format!("gateway-{name}")).unwrap();
        self.orchestrator.agents().into_iter().find(|a| a.id == id).unwrap().status
    }

    /// Waits until the engine has health-checked `name` twice more.
    async fn two_health_checks(&self, name: &str) {
        let first = self.registry.get(name).unwrap().last_check;
        wait_until("a health check", || async { self.registry.get(name).unwrap().last_check > first }).await;
        let second = self.registry.get(name).unwrap().last_check;
        wait_until("another health check", || async { self.registry.get(name).unwrap().last_check > second }).await;
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(engine) = self.engine.take() {
            engine.await.unwrap().unwrap();
        }
        self.registry.shutdown().await;
    }
}

impl Fleet {
    /// Submits a task and returns once its first output event was published.
    async fn submit_and_see_output(&self, task: NewTask) -> TaskId {
        let mut events = self.orchestrator.subscribe(vec![godel_core::EventPattern::new("task.output").unwrap()]);
        let id = self.submit(task).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let e = tokio::time::timeout_at(deadline, events.recv()).await.expect("no output").unwrap();
            if matches!(e.event.kind, godel_core::EventKind::TaskOutput { task, .. } if task == id) {
                return id;
            }
        }
    }
}

async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_runs_as_one_gateway_run_with_streamed_output_and_usage() {
    let fake = FakeGateway::start(fake_config()).await.unwrap();
    let fleet = Fleet::start(vec![gateway("one", &fake)]).await;
    let id = fleet.submit(NewTask::prompt("hello")).await;
    let task = fleet.settled(id).await;
    assert_eq!(task.status, TaskStatus::Completed, "{:?}", task.error);
    let result = task.result.unwrap();
    assert_eq!(result["text"], "echo: hello");
    assert_eq!(result["run_id"], format!("godel-{id}-1"));
    assert_eq!(result["session_key"], format!("agent:main:godel-{id}"));
    assert_eq!(result["model"], "fake-1");
    assert_eq!(result["provider"], "fake");
    assert_eq!(result["usage"], serde_json::json!({"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}));
    let output = fleet.orchestrator.store().output(&task.tenant, id).await.unwrap();
    let stdout: String = output.iter().filter(|o| o.stream == OutputStream::Stdout).map(|o| o.data.as_str()).collect();
    assert_eq!(stdout, "echo: hello");
    let system: Vec<&str> =
        output.iter().filter(|o| o.stream == OutputStream::System).map(|o| o.data.as_str()).collect();
    assert_eq!(system, ["tool read start\n", "tool read result\n"]);
    assert_eq!(fake.runs_started(&format!("godel-{id}-1")), 1);
    assert_eq!(fake.total_runs_started(), 1);
    let snapshot = fleet.registry.get("one").unwrap();
    assert_eq!(snapshot.state, GatewayState::Ready);
    assert_eq!(snapshot.protocol, Some(4));
    assert_eq!(snapshot.default_agent.as_deref(), Some("main"));
    assert_eq!(snapshot.current_sessions, 0);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_mid_run_completes_the_task_once() {
    let fake =
        FakeGateway::start(FakeConfig { script: slow(Duration::from_millis(60)), ..fake_config() }).await.unwrap();
    let fleet = Fleet::start(vec![gateway("one", &fake)]).await;
    let id = fleet.submit_and_see_output(NewTask::prompt("abcdefgh")).await;
    assert_eq!(fake.active_runs(), 1, "dropped mid-run");
    fake.drop_connections();
    wait_until("a second connection", || async { fake.connects() >= 2 }).await;
    let task = fleet.settled(id).await;
    assert_eq!(task.status, TaskStatus::Completed, "{:?}", task.error);
    assert_eq!(task.attempt, 1);
    assert_eq!(task.result.unwrap()["text"], "abcdefgh");
    assert_eq!(fake.runs_started(&format!("godel-{id}-1")), 1, "no second run");
    assert_eq!(fake.total_runs_started(), 1);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_required_tells_the_operator_then_works_once_approved() {
    let fake = FakeGateway::start(FakeConfig { require_pairing: true, ..fake_config() }).await.unwrap();
    let fleet = Fleet::start(vec![gateway("remote", &fake)]).await;
    wait_until("the pairing message", || async { fleet.state("remote").0 == GatewayState::Unusable }).await;
    let requests = fake.pairing_requests();
    assert_eq!(requests.len(), 1);
    let (_, message) = fleet.state("remote");
    let url = fake.url();
    let host = url.trim_start_matches("ws://");
    assert!(message.contains(&format!("run `openclaw devices approve {}` on {host}", requests[0])), "{message}");
    let id = fleet.submit(NewTask::prompt("after pairing")).await;
    fleet.two_health_checks("remote").await;
    assert_eq!(fleet.agent_status("remote"), AgentStatus::Error);
    assert_eq!(fleet.task(id).await.status, TaskStatus::Pending, "the task waits, neither failed nor lost");
    assert!(fleet.registry.queue_reasons(1).iter().any(|r| r.contains("openclaw devices approve")));
    assert!(fake.approve(&requests[0]));
    let task = fleet.settled(id).await;
    assert_eq!(task.status, TaskStatus::Completed, "{:?}", task.error);
    assert_eq!(task.attempt, 1, "no attempt was spent while the gateway was unusable");
    assert_eq!(fake.pairing_requests(), Vec::<String>::new());
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_makes_the_gateway_unusable_and_leaves_tasks_queued() {
    let fake = FakeGateway::start(FakeConfig { auth: FakeAuth::Token("right".into()), ..fake_config() }).await.unwrap();
    let mut config = gateway("guarded", &fake);
    config.auth = GatewayAuth::Token("wrong".into());
    let fleet = Fleet::start(vec![config]).await;
    wait_until("unusable", || async { fleet.state("guarded").0 == GatewayState::Unusable }).await;
    let (_, message) = fleet.state("guarded");
    assert!(message.contains("AUTH_TOKEN_MISMATCH") && message.contains("guarded"), "{message}");
    let id = fleet.submit(NewTask::prompt("never runs")).await;
    fleet.two_health_checks("guarded").await;
    assert_eq!(fleet.agent_status("guarded"), AgentStatus::Error);
    assert_eq!(fleet.task(id).await.status, TaskStatus::Pending);
    assert_eq!(fake.total_runs_started(), 0);
    fleet.stop().await;

    // The right token works.
    let mut config = gateway("guarded", &fake);
    config.auth = GatewayAuth::Token("right".into());
    let fleet = Fleet::start(vec![config]).await;
    let id = fleet.submit(NewTask::prompt("runs")).await;
    assert_eq!(fleet.settled(id).await.status, TaskStatus::Completed);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth_and_a_missing_password() {
    let fake = FakeGateway::start(FakeConfig { auth: FakeAuth::Password("pw".into()), ..fake_config() }).await.unwrap();
    let fleet = Fleet::start(vec![gateway("nopw", &fake)]).await;
    wait_until("unusable", || async { fleet.state("nopw").0 == GatewayState::Unusable }).await;
    assert!(fleet.state("nopw").1.contains("AUTH_PASSWORD_MISSING"), "{}", fleet.state("nopw").1);
    fleet.stop().await;
    let mut config = gateway("pw", &fake);
    config.auth = GatewayAuth::Password("pw".into());
    let fleet = Fleet::start(vec![config]).await;
    let id = fleet.submit(NewTask::prompt("x")).await;
    assert_eq!(fleet.settled(id).await.status, TaskStatus::Completed);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reduced_scopes_make_the_gateway_unusable() {
    let fake = FakeGateway::start(FakeConfig { grantable_scopes: Some(vec!["operator.read".into()]), ..fake_config() })
        .await
        .unwrap();
    let fleet = Fleet::start(vec![gateway("narrow", &fake)]).await;
    wait_until("unusable", || async { fleet.state("narrow").0 == GatewayState::Unusable }).await;
    let (_, message) = fleet.state("narrow");
    assert!(message.contains("missing scope") && message.contains("operator.write"), "{message}");
    assert!(message.contains(fleet.registry.device_id().unwrap()), "names the device to grant: {message}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_version_mismatch_is_reported() {
    let fake = FakeGateway::start(FakeConfig { protocols: (5, 6), ..fake_config() }).await.unwrap();
    let fleet = Fleet::start(vec![gateway("future", &fake)]).await;
    wait_until("unusable", || async { fleet.state("future").0 == GatewayState::Unusable }).await;
    let (_, message) = fleet.state("future");
    assert!(message.contains("protocol version mismatch"), "{message}");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_aborts_the_run_with_sessions_abort() {
    let fake = FakeGateway::start(FakeConfig { script: hang(), ..fake_config() }).await.unwrap();
    let fleet = Fleet::start(vec![gateway("one", &fake)]).await;
    let id = fleet.submit(NewTask::prompt("forever")).await;
    wait_until("the run to start", || async { fake.active_runs() == 1 }).await;
    fleet.orchestrator.cancel(id).await.unwrap();
    let task = fleet.settled(id).await;
    assert_eq!(task.status, TaskStatus::Cancelled);
    assert!(fake.aborts_received() >= 1);
    assert_eq!(fake.active_runs(), 0, "the run was aborted on the gateway");
    assert_eq!(fleet.registry.get("one").unwrap().current_sessions, 0);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_aborts_the_run_with_chat_abort_on_a_version_3_gateway() {
    let fake =
        FakeGateway::start(FakeConfig { script: hang(), sessions_abort: false, protocols: (3, 3), ..fake_config() })
            .await
            .unwrap();
    let fleet = Fleet::start(vec![gateway("old", &fake)]).await;
    let mut new = NewTask::prompt("forever");
    new.timeout = Some(Duration::from_millis(300));
    new.max_attempts = 1;
    let id = fleet.submit(new).await;
    let task = fleet.settled(id).await;
    assert_eq!(task.status, TaskStatus::DeadLetter);
    assert_eq!(task.error.unwrap().kind, TaskErrorKind::Timeout);
    assert!(fake.aborts_received() >= 1);
    wait_until("the run to end", || async { fake.active_runs() == 0 }).await;
    assert_eq!(fleet.registry.get("old").unwrap().protocol, Some(3));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_retried_under_a_new_idempotency_key() {
    let script: godel_fakes::openclaw::Script = Arc::new(|message: &str| RunScript {
        steps: vec![],
        step_delay: Duration::ZERO,
        usage: (0, 0),
        end: if message == "fail" { RunEnd::Error("model overloaded".into()) } else { RunEnd::Ok },
    });
    let fake = FakeGateway::start(FakeConfig { script, ..fake_config() }).await.unwrap();
    let fleet = Fleet::start(vec![gateway("one", &fake)]).await;
    let mut new = NewTask::prompt("fail");
    new.max_attempts = 2;
    let id = fleet.submit(new).await;
    let task = fleet.settled(id).await;
    assert_eq!(task.status, TaskStatus::DeadLetter, "retryable, then out of attempts");
    assert!(task.error.unwrap().message.contains("model overloaded"));
    assert_eq!(fake.runs_started(&format!("godel-{id}-1")), 1);
    assert_eq!(fake.runs_started(&format!("godel-{id}-2")), 1, "each attempt has its own idempotency key");

    // Payload extras the adapter understands pass the gateway's closed schema.
    let mut new = NewTask::prompt("x");
    new.payload.extra.insert("extra_system_prompt".into(), Value::String("be brief".into()));
    let id = fleet.submit(new).await;
    assert_eq!(fleet.settled(id).await.status, TaskStatus::Completed);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_gateways_one_killed_fail_over_and_lose_nothing() {
    let fakes = [
        FakeGateway::start(FakeConfig { script: slow(Duration::from_millis(40)), ..fake_config() }).await.unwrap(),
        FakeGateway::start(FakeConfig { script: slow(Duration::from_millis(40)), ..fake_config() }).await.unwrap(),
        FakeGateway::start(FakeConfig { script: slow(Duration::from_millis(40)), ..fake_config() }).await.unwrap(),
    ];
    let configs = ["a", "b", "c"].iter().zip(&fakes).map(|(n, f)| gateway(n, f)).collect();
    let fleet = Fleet::start(configs).await;
    let mut ids = Vec::new();
    for i in 0..15 {
        ids.push(fleet.submit(NewTask::prompt(format!("task{i:02}"))).await);
    }
    wait_until("runs on gateway a", || async { fakes[0].active_runs() > 0 }).await;
    fakes[0].stop();
    for id in &ids {
        let task = fleet.settled(*id).await;
        assert_eq!(task.status, TaskStatus::Completed, "{id}: {:?}", task.error);
        assert!(task.result.unwrap()["text"].as_str().unwrap().starts_with("task"));
    }
    let (state, _) = fleet.state("a");
    assert_ne!(state, GatewayState::Ready);
    assert_eq!(fleet.agent_status("a"), AgentStatus::Error);
    let elsewhere = fakes[1].total_runs_started() + fakes[2].total_runs_started();
    assert!(elsewhere >= 10, "the survivors ran the rest ({elsewhere})");
    // Every task completed exactly once: the completions are on distinct tasks.
    assert_eq!(ids.len(), 15);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_every_gateway_full_leaves_tasks_queued() {
    let a = FakeGateway::start(FakeConfig { script: hang(), ..fake_config() }).await.unwrap();
    let b = FakeGateway::start(FakeConfig { script: hang(), ..fake_config() }).await.unwrap();
    let mut configs = vec![gateway("a", &a), gateway("b", &b)];
    for c in &mut configs {
        c.max_sessions = 3; // 90% of 3 is 2.7: two sessions each
    }
    let fleet = Fleet::start(configs).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(fleet.submit(NewTask::prompt(format!("t{i}"))).await);
    }
    wait_until("both gateways full", || async { a.active_runs() == 2 && b.active_runs() == 2 }).await;
    fleet.two_health_checks("a").await;
    let mut pending = 0;
    for id in &ids {
        if fleet.task(*id).await.status == TaskStatus::Pending {
            pending += 1;
        }
    }
    assert_eq!(pending, 2, "two tasks wait in the queue");
    assert_eq!(a.active_runs() + b.active_runs(), 4);
    let reasons = fleet.registry.queue_reasons(2);
    assert!(reasons.iter().any(|r| r.contains("all 2 openclaw gateways are at capacity")), "{reasons:?}");
    for id in &ids {
        fleet.orchestrator.cancel(*id).await.unwrap();
    }
    for id in &ids {
        assert_eq!(fleet.settled(*id).await.status, TaskStatus::Cancelled);
    }
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_route_by_hosted_agent_and_region() {
    let coder =
        FakeGateway::start(FakeConfig { agents: vec!["coder".into()], default_agent: "coder".into(), ..fake_config() })
            .await
            .unwrap();
    let eu = FakeGateway::start(fake_config()).await.unwrap();
    let mut c = gateway("coder", &coder);
    c.agents = vec!["coder".into()];
    c.region = Some("us".into());
    let mut e = gateway("eu", &eu);
    e.agents = vec!["main".into()];
    e.region = Some("eu".into());
    let fleet = Fleet::start(vec![c, e]).await;
    let mut to_coder = NewTask::prompt("code");
    to_coder.capabilities = vec!["agent:coder".into()];
    let mut to_eu = NewTask::prompt("bonjour");
    to_eu.capabilities = vec!["region:eu".into()];
    let (x, y) = (fleet.submit(to_coder).await, fleet.submit(to_eu).await);
    let x = fleet.settled(x).await;
    let y = fleet.settled(y).await;
    assert_eq!(x.result.unwrap()["session_key"], format!("agent:coder:godel-{}", x.id));
    assert_eq!(y.result.unwrap()["session_key"], format!("agent:main:godel-{}", y.id));
    assert_eq!((coder.total_runs_started(), eu.total_runs_started()), (1, 1));
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_ticks_and_a_shutdown_event_lead_to_reconnects() {
    let fake = FakeGateway::start(fake_config()).await.unwrap();
    let fleet = Fleet::start(vec![gateway("one", &fake)]).await;
    wait_until("ready", || async { fleet.state("one").0 == GatewayState::Ready }).await;
    fake.set_silent(true);
    wait_until("the watchdog to reconnect", || async { fake.connects() >= 2 }).await;
    fake.set_silent(false);
    fake.announce_shutdown(Duration::from_millis(50));
    wait_until("a reconnect after the shutdown", || async { fake.connects() >= 3 }).await;
    wait_until("ready again", || async { fleet.state("one").0 == GatewayState::Ready }).await;
    let id = fleet.submit(NewTask::prompt("still works")).await;
    assert_eq!(fleet.settled(id).await.status, TaskStatus::Completed);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_restarted_mid_run_runs_it_again_under_the_same_key() {
    let fake =
        FakeGateway::start(FakeConfig { script: slow(Duration::from_millis(50)), ..fake_config() }).await.unwrap();
    let fleet = Fleet::start(vec![gateway("one", &fake)]).await;
    let id = fleet.submit(NewTask::prompt("abcdefghij")).await;
    wait_until("the run to start", || async { fake.active_runs() == 1 }).await;
    fake.stop();
    fake.restart().await.unwrap();
    let task = fleet.settled(id).await;
    assert_eq!(task.status, TaskStatus::Completed, "{:?}", task.error);
    assert_eq!(task.attempt, 1);
    assert_eq!(task.result.unwrap()["text"], "abcdefghij");
    // The restarted gateway had lost the run, so the re-sent request started it again under its key.
    assert_eq!(fake.runs_started(&format!("godel-{id}-1")), 2);
    assert_eq!(fake.total_runs_started(), 2);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_are_added_and_removed_at_runtime() {
    let fake = FakeGateway::start(fake_config()).await.unwrap();
    let fleet = Fleet::start(vec![]).await;
    let snapshot = fleet.attach(gateway("late", &fake)).unwrap();
    assert_eq!(snapshot.agent.as_str(), "gateway-late");
    assert!(fleet.attach(gateway("late", &fake)).is_err(), "names are unique");
    let id = fleet.submit(NewTask::prompt("x")).await;
    assert_eq!(fleet.settled(id).await.status, TaskStatus::Completed);
    fleet.detach("late").unwrap();
    assert!(fleet.registry.list().is_empty());
    wait_until("the connection to close", || async { fake.connections() == 0 }).await;
    fleet.stop().await;
}

#[test]
fn gateway_configs_are_checked() {
    let ok = GatewayConfig::new("g", "ws://127.0.0.1:18789");
    assert!(ok.validate().is_ok());
    assert_eq!(GatewayConfig { max_sessions: 10, ..ok.clone() }.capacity(), 9);
    assert_eq!(GatewayConfig { max_sessions: 1, ..ok.clone() }.capacity(), 1);
    assert_eq!(GatewayConfig { url: "http://x".into(), ..ok.clone() }.validate().unwrap_err().field, "url");
    assert_eq!(GatewayConfig { max_sessions: 0, ..ok.clone() }.validate().unwrap_err().field, "max_sessions");
    assert_eq!(GatewayConfig { name: "a b".into(), ..ok.clone() }.validate().unwrap_err().field, "name");
    let remote = GatewayConfig {
        url: "ws://10.0.0.1:18789".into(),
        autostart: Some(godel_core::adapter::openclaw::Autostart { command: vec!["openclaw".into()] }),
        ..ok.clone()
    };
    assert_eq!(remote.validate().unwrap_err().field, "autostart");
    let caps = GatewayConfig { agents: vec!["coder".into()], region: Some("eu".into()), ..ok }.routing_capabilities();
    assert_eq!(caps, ["agent:coder", "region:eu"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autostart_starts_a_local_gateway_when_none_answers_and_tasks_wait() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config =
        GatewayConfig { timing: timing(), ..GatewayConfig::new("local", format!("ws://127.0.0.1:{port}")) };
    let script = format!("echo started >> {}; sleep 30", marker.display());
    config.autostart =
        Some(godel_core::adapter::openclaw::Autostart { command: vec!["sh".into(), "-c".into(), script] });
    let fleet = Fleet::start(vec![config]).await;
    let id = fleet.submit(NewTask::prompt("waits")).await;
    wait_until("the autostart", || async { marker.exists() }).await;
    wait_until("the degraded message", || async { fleet.state("local").1.contains("started the local gateway") }).await;
    assert_eq!(fleet.state("local").0, GatewayState::Degraded);
    fleet.two_health_checks("local").await;
    assert_eq!(fleet.task(id).await.status, TaskStatus::Pending, "degraded mode queues");
    assert!(fleet.registry.queue_reasons(1).iter().any(|r| r.contains("openclaw gateway local is degraded")));
    fleet.stop().await;
    let starts = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(starts.lines().count(), 1, "started once while it was still running");
}

/// Opens a raw socket to a fake and returns it with the challenge's nonce.
async fn raw(
    url: &str,
) -> (tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, String) {
    use futures::StreamExt;
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    let v: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(v["event"], "connect.challenge", "the gateway speaks first");
    (ws, v["payload"]["nonce"].as_str().unwrap().to_owned())
}

/// Sends one request frame and returns the response's error (code, details.code).
async fn refused(url: &str, frame: impl FnOnce(&str) -> Value) -> (String, String) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, nonce) = raw(url).await;
    ws.send(Message::Text(frame(&nonce).to_string().into())).await.unwrap();
    loop {
        let msg = ws.next().await.unwrap().unwrap();
        let Ok(text) = msg.to_text() else { continue };
        let v: Value = serde_json::from_str(text).unwrap();
        if v["type"] == "res" {
            assert_eq!(v["ok"], false, "{v}");
            let detail = v["error"]["details"]["code"].as_str().unwrap_or("").to_owned();
            return (v["error"]["code"].as_str().unwrap().to_owned(), detail);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_gateway_is_as_strict_as_the_real_one() {
    let fake = FakeGateway::start(fake_config()).await.unwrap();
    let url = fake.url();
    let device = DeviceIdentity::generate();
    let connect = |nonce: &str, extra: Option<(&str, Value)>, signature: &str| {
        let mut params = serde_json::json!({
            "minProtocol": 3, "maxProtocol": 4,
            "client": {"id": "gateway-client", "version": "1", "platform": "linux", "mode": "backend"},
            "role": "operator", "scopes": ["operator.write"], "caps": ["tool-events"],
            "device": {"id": device.id(), "publicKey": device.public_key(), "signature": signature,
                       "signedAt": 1, "nonce": nonce},
        });
        if let Some((k, v)) = extra {
            params[k] = v;
        }
        serde_json::json!({"type": "req", "id": "c", "method": "connect", "params": params})
    };
    let (code, _) =
        refused(&url, |_| serde_json::json!({"type": "req", "id": "1", "method": "health", "params": {}})).await;
    assert_eq!(code, "INVALID_REQUEST", "connect must come first");
    let (code, _) = refused(&url, |n| connect(n, Some(("surprise", Value::Bool(true))), "x")).await;
    assert_eq!(code, "INVALID_REQUEST", "params are closed");
    let (code, _) = refused(&url, |n| connect(n, Some(("auth", serde_json::json!({"token": null}))), "x")).await;
    assert_eq!(code, "INVALID_REQUEST", "null is not an absent field");
    let (code, _) = refused(&url, |n| {
        let mut c = connect(n, None, "x");
        c["params"]["client"]["mode"] = "robot".into();
        c
    })
    .await;
    assert_eq!(code, "INVALID_REQUEST", "client modes are a closed list");
    let (_, detail) = refused(&url, |_| connect("not-the-nonce", None, "x")).await;
    assert_eq!(detail, "DEVICE_AUTH_NONCE_MISMATCH");
    let (_, detail) = refused(&url, |n| {
        let mut c = connect(n, None, "x");
        c["params"]["device"]["signedAt"] = Value::from(godel_core::Timestamp::now().as_millis());
        c
    })
    .await;
    assert_eq!(detail, "DEVICE_AUTH_SIGNATURE_INVALID");
    let (_, detail) = refused(&url, |n| {
        let mut c = connect(n, None, "x");
        c["params"]["device"]["id"] = "0".repeat(64).into();
        c
    })
    .await;
    assert_eq!(detail, "DEVICE_AUTH_DEVICE_ID_MISMATCH");
    assert_eq!(fake.connects(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_token_is_kept_and_presented_after_a_restart() {
    let fake =
        FakeGateway::start(FakeConfig { auth: FakeAuth::Token("shared".into()), ..fake_config() }).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = gateway("tok", &fake);
    config.auth = GatewayAuth::Token("shared".into());
    let fleet = Fleet::start_with(DeviceIdentity::load_or_create(dir.path()).unwrap(), vec![config]).await;
    wait_until("ready", || async { fleet.state("tok").0 == GatewayState::Ready }).await;
    fleet.stop().await;
    assert!(dir.path().join("openclaw-token-tok.json").exists());

    // Without the shared token, the kept device token gets in.
    let fleet =
        Fleet::start_with(DeviceIdentity::load_or_create(dir.path()).unwrap(), vec![gateway("tok", &fake)]).await;
    let id = fleet.submit(NewTask::prompt("with the device token")).await;
    assert_eq!(fleet.settled(id).await.status, TaskStatus::Completed);
    assert_eq!(fake.connects(), 2);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_a_runs_events_still_yields_the_whole_reply() {
    // Events 1 and 2 are lifecycle start and model; 4 is the delta "b".
    let config = FakeConfig { script: slow(Duration::from_millis(20)), lose_seq: Some(4), ..fake_config() };
    let fake = FakeGateway::start(config).await.unwrap();
    let fleet = Fleet::start(vec![gateway("one", &fake)]).await;
    let id = fleet.submit(NewTask::prompt("abcdef")).await;
    let task = fleet.settled(id).await;
    assert_eq!(task.status, TaskStatus::Completed, "{:?}", task.error);
    assert_eq!(task.result.unwrap()["text"], "abcdef");
    let output = fleet.orchestrator.store().output(&task.tenant, id).await.unwrap();
    let stdout: String = output.iter().map(|o| o.data.as_str()).collect();
    assert_eq!(stdout, "acdef", "the lost delta is not invented");
    assert_eq!(fake.total_runs_started(), 1);
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_ends_while_disconnected_is_reconciled_after_the_reconnect() {
    let fake =
        FakeGateway::start(FakeConfig { script: slow(Duration::from_millis(30)), ..fake_config() }).await.unwrap();
    let fleet = Fleet::start(vec![gateway("one", &fake)]).await;
    let id = fleet.submit_and_see_output(NewTask::prompt("abcdef")).await;
    assert_eq!(fake.active_runs(), 1, "dropped mid-run");
    fake.set_refusing(true);
    fake.drop_connections();
    wait_until("the run to end on the gateway", || async { fake.active_runs() == 0 }).await;
    assert_eq!(fleet.task(id).await.status, TaskStatus::Running, "nothing decided while disconnected");
    fake.set_refusing(false);
    let task = fleet.settled(id).await;
    assert_eq!(task.status, TaskStatus::Completed, "{:?}", task.error);
    assert_eq!(task.attempt, 1);
    assert_eq!(task.result.unwrap()["text"], "abcdef");
    assert_eq!(fake.total_runs_started(), 1, "reconciled, not run again");
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_registry_loads_the_device_key_with_its_first_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let registry = OpenclawRegistry::lazy(&state);
    assert_eq!(registry.device_id(), None);
    assert!(!state.exists(), "nothing is written without gateways");
    let fake = FakeGateway::start(fake_config()).await.unwrap();
    registry.add(gateway("first", &fake)).unwrap();
    let id = registry.device_id().unwrap().to_owned();
    assert_eq!(DeviceIdentity::load_or_create(&state).unwrap().id(), id);
    wait_until("ready", || async { registry.get("first").unwrap().state == GatewayState::Ready }).await;
    registry.shutdown().await;
}

/// A hand-made client: signs the v3 payload itself and connects with `scopes`.
async fn handshaken(
    url: &str,
    scopes: &[&str],
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ed25519_dalek::{Signer, SigningKey};
    use futures::SinkExt;
    use sha2::{Digest, Sha256};
    use tokio_tungstenite::tungstenite::Message;
    let key = SigningKey::from_bytes(&[7; 32]);
    let public = key.verifying_key().to_bytes();
    let id: String = Sha256::digest(public).iter().map(|b| format!("{b:02x}")).collect();
    let (mut ws, nonce) = raw(url).await;
    let signed_at = u64::try_from(godel_core::Timestamp::now().as_millis()).unwrap();
    let payload = format!("v3|{id}|test|test|operator|{}|{signed_at}||{nonce}|linux|", scopes.join(","));
    let connect = serde_json::json!({"type": "req", "id": "c", "method": "connect", "params": {
        "minProtocol": 4, "maxProtocol": 4,
        "client": {"id": "test", "version": "1", "platform": "Linux", "mode": "test"},
        "role": "operator", "scopes": scopes,
        "device": {"id": id, "publicKey": URL_SAFE_NO_PAD.encode(public),
                   "signature": URL_SAFE_NO_PAD.encode(key.sign(payload.as_bytes()).to_bytes()),
                   "signedAt": signed_at, "nonce": nonce},
    }});
    ws.send(Message::Text(connect.to_string().into())).await.unwrap();
    let hello = next_response(&mut ws, "c").await;
    assert_eq!(hello["ok"], true, "{hello}");
    assert_eq!(hello["payload"]["type"], "hello-ok");
    ws
}

async fn next_response(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    id: &str,
) -> Value {
    use futures::StreamExt;
    loop {
        let msg = ws.next().await.unwrap().unwrap();
        let Ok(text) = msg.to_text() else { continue };
        let v: Value = serde_json::from_str(text).unwrap();
        if v["type"] == "res" && v["id"] == id {
            return v;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_gateway_checks_scopes_params_and_answers_agent_twice() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let fake = FakeGateway::start(fake_config()).await.unwrap();
    let agent = |id: &str, extra: Option<(&str, Value)>| {
        let mut params = serde_json::json!({"message": "hi", "sessionKey": "agent:main:t", "idempotencyKey": id});
        if let Some((k, v)) = extra {
            params[k] = v;
        }
        Message::Text(
            serde_json::json!({"type": "req", "id": id, "method": "agent", "params": params}).to_string().into(),
        )
    };

    let mut reader = handshaken(&fake.url(), &["operator.read"]).await;
    reader.send(agent("r1", None)).await.unwrap();
    let refused = next_response(&mut reader, "r1").await;
    assert_eq!(refused["error"]["code"], "FORBIDDEN");
    assert_eq!(refused["error"]["details"]["code"], "MISSING_SCOPE");

    let mut writer = handshaken(&fake.url(), &["operator.write"]).await;
    writer.send(agent("w1", Some(("surprise", Value::Bool(true))))).await.unwrap();
    assert_eq!(next_response(&mut writer, "w1").await["error"]["code"], "INVALID_REQUEST");
    writer.send(agent("w2", None)).await.unwrap();
    let first = next_response(&mut writer, "w2").await;
    assert_eq!(first["payload"]["status"], "accepted");
    let last = next_response(&mut writer, "w2").await;
    assert_eq!(last["payload"]["status"], "ok", "the same id answers again with the result");
    assert_eq!(last["payload"]["result"]["payloads"][0]["text"], "echo: hi");
    writer.send(agent("w2", None)).await.unwrap();
    assert_eq!(next_response(&mut writer, "w2").await["payload"]["status"], "ok", "a repeated key returns the run");
    assert_eq!(fake.runs_started("w2"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_aborts_what_is_left_of_the_lost_attempt() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let script: godel_fakes::openclaw::Script = Arc::new(move |message: &str| {
        if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            RunScript {
                steps: vec![Step::Text("stuck".into())],
                step_delay: Duration::ZERO,
                usage: (0, 0),
                end: RunEnd::Hang,
            }
        } else {
            RunScript::echo(message)
        }
    });
    let fake = FakeGateway::start(FakeConfig { script, ..fake_config() }).await.unwrap();
    let fleet = Fleet::start(vec![gateway("one", &fake)]).await;
    let id = fleet.submit_and_see_output(NewTask::prompt("again")).await;
    fake.set_refusing(true);
    fake.drop_connections();
    let o = fleet.orchestrator.clone();
    wait_until("the lost attempt to fail", || {
        let o = o.clone();
        async move { o.get(id).await.unwrap().error.is_some() }
    })
    .await;
    assert_eq!(fake.active_runs(), 1, "the first run still holds the session key on the gateway");
    fake.set_refusing(false);
    let task = fleet.settled(id).await;
    assert_eq!(task.status, TaskStatus::Completed, "{:?}", task.error);
    assert_eq!(task.attempt, 2);
    assert_eq!(task.result.unwrap()["text"], "echo: again");
    assert_eq!(fake.active_runs(), 0, "the first run was aborted");
    assert!(fake.aborts_received() >= 1);
    assert_eq!((fake.runs_started(&format!("godel-{id}-1")), fake.runs_started(&format!("godel-{id}-2"))), (1, 1));
    fleet.stop().await;
}
