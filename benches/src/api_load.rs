//! The API load generator: task creation and listing throughput over
//! HTTP/1.1 keep-alive, what checking the API key costs, and event delivery
//! latency to a WebSocket subscriber.
//!
//! By default it starts a server in this process (SQLite store in a temporary
//! directory) and loads it; `--url` points it at a running server instead.
//! Created tasks are scheduled a day ahead, so they stay queued without being
//! claimable and the figures measure the API and the store, not execution.
//! Each client authenticates with its own admin key, as separate callers
//! would (put in the store before the in-process server starts); against a
//! running server they share `--api-key` (or `GODEL_API_KEY`), and its
//! `auth.rate_limit.per_credential` must allow the whole load.
//!
//! The key check is measured by difference, in interleaved rounds of three
//! phases: task creation (keyed), `GET /api/v1/agents` (keyed; its handler
//! reads a few agents from memory) and `GET /health/live` (public: the guard
//! lets it through before looking at any credential). With the machine
//! saturated, a request's share of it is the inverse of the throughput, so
//! `1/agents - 1/live` bounds what authenticating, rate limiting and
//! authorizing a request costs (it includes the agents handler), and dividing
//! it by `1/create` gives that bound's share of a task's creation.
//!
//! `cargo run --release -p godel-benches --bin api-load`

#![allow(clippy::print_stdout, reason = "a benchmark prints its report")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use argh::FromArgs;
use futures::{SinkExt, StreamExt};
use godel_benches::{percentile, short, thousands};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Load the Godel API and report throughput and latency.
#[derive(FromArgs)]
struct Args {
    /// server to load (default: start one in-process)
    #[argh(option)]
    url: Option<String>,
    /// concurrent HTTP clients (default 32)
    #[argh(option, default = "32")]
    clients: usize,
    /// seconds per phase (default 10)
    #[argh(option, default = "10")]
    seconds: u64,
    /// interleaved rounds of the create / keyed / public phases (default 3)
    #[argh(option, default = "3")]
    rounds: usize,
    /// event-latency samples (default 1000)
    #[argh(option, default = "1000")]
    samples: usize,
    /// store for the in-process server (default sqlite in a temp dir)
    #[argh(option)]
    store: Option<String>,
    /// API key for `--url` (default: GODEL_API_KEY)
    #[argh(option)]
    api_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Args = argh::from_env();
    if args.rounds == 0 || args.clients == 0 {
        bail!("--rounds and --clients must be at least 1");
    }
    let dir = tempfile::tempdir()?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (url, server, keys) = match &args.url {
        Some(url) => {
            let key = args.api_key.clone().or_else(|| std::env::var("GODEL_API_KEY").ok());
            let key = key.context("--url needs --api-key or GODEL_API_KEY")?;
            (url.trim_end_matches('/').to_owned(), None, vec![key; args.clients])
        }
        None => {
            let store =
                args.store.clone().unwrap_or_else(|| format!("sqlite://{}", dir.path().join("load.db").display()));
            let keys = admin_keys(&store, args.clients).await?;
            let toml = format!("bind = \"127.0.0.1:0\"\nstore = \"{store}\"\n");
            let config = godel_server::ServerConfig::from_toml(&toml, &|_| None)?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let stop = shutdown.clone();
            let on_listening: godel_server::OnListening = Box::new(move |addr| {
                let _ = tx.send(addr);
            });
            let server = tokio::spawn(Box::pin(godel_server::run(config, stop, Some(on_listening))));
            let addr = rx.await.context("the server did not start")?;
            (format!("http://{addr}"), Some(server), keys)
        }
    };
    println!("api load: {url}, {} clients, {} s per phase, {} rounds", args.clients, args.seconds, args.rounds);
    println!("load average at start: {}", load_average());
    let clients = keys.iter().map(|key| client(key)).collect::<anyhow::Result<Vec<_>>>()?;
    let http = &clients[..];
    // One connection each, as the keyed clients have.
    let anonymous = (0..args.clients)
        .map(|_| reqwest::Client::builder().pool_max_idle_per_host(1).build())
        .collect::<Result<Vec<_>, _>>()?;

    let body = json!({"command": ["true"], "delay_ms": 86_400_000, "priority": "low"});
    let create_url = format!("{url}/api/v1/tasks");
    let create = move |http: reqwest::Client| {
        let (url, body) = (create_url.clone(), body.clone());
        async move {
            let r = http.post(&url).json(&body).send().await?;
            expect(r, reqwest::StatusCode::CREATED, "create").await
        }
    };
    let agents_url = format!("{url}/api/v1/agents");
    let keyed = move |http: reqwest::Client| {
        let url = agents_url.clone();
        async move { expect(http.get(&url).send().await?, reqwest::StatusCode::OK, "agents").await }
    };
    let live_url = format!("{url}/health/live");
    let unkeyed = move |http: reqwest::Client| {
        let url = live_url.clone();
        async move { expect(http.get(&url).send().await?, reqwest::StatusCode::OK, "health/live").await }
    };
    let mut rates = [Vec::new(), Vec::new(), Vec::new()];
    for round in 1..=args.rounds {
        println!("round {round}:");
        let latencies = phase(http, &args, create.clone()).await?;
        rates[0].push(report("  create task (POST /api/v1/tasks, keyed)", &latencies, args.seconds));
        let latencies = phase(http, &args, keyed.clone()).await?;
        rates[1].push(report("  list agents (GET /api/v1/agents, keyed)", &latencies, args.seconds));
        let latencies = phase(&anonymous, &args, unkeyed.clone()).await?;
        rates[2].push(report("  liveness (GET /health/live, public)", &latencies, args.seconds));
    }
    let [create_rate, keyed_rate, public_rate] = rates.map(|mut r| median(&mut r));
    let per = |rate: f64| 1e6 / rate;
    let check = per(keyed_rate) - per(public_rate);
    println!(
        "medians: create {} req/s ({:.1} µs of the machine each), keyed {} req/s ({:.1} µs), public {} req/s ({:.1} µs)",
        thousands(create_rate),
        per(create_rate),
        thousands(keyed_rate),
        per(keyed_rate),
        thousands(public_rate),
        per(public_rate)
    );
    println!(
        "key check and the agents handler: at most {check:.1} µs a request, {:.1}% of a task's creation",
        100.0 * check / per(create_rate)
    );

    let list_url = format!("{url}/api/v1/tasks?limit=20&sort=-created_at");
    let list = phase(http, &args, move |http| {
        let url = list_url.clone();
        async move { expect(http.get(&url).send().await?, reqwest::StatusCode::OK, "list").await }
    })
    .await?;
    report("list tasks (GET /api/v1/tasks?limit=20)", &list, args.seconds);

    let latencies = event_latency(&clients[0], &keys[0], &url, args.samples).await?;
    println!(
        "event delivery (POST sent -> task.created received over /events), {} samples: p50 {} p99 {} max {}",
        latencies.len(),
        short(percentile(&latencies, 0.50)),
        short(percentile(&latencies, 0.99)),
        short(*latencies.last().expect("samples"))
    );

    println!("load average at the end: {}", load_average());
    shutdown.cancel();
    if let Some(server) = server {
        server.await??;
    }
    Ok(())
}

/// Runs `request` from `args.clients` concurrent loops for `args.seconds`; returns sorted latencies.
async fn phase<F, Fut>(clients: &[reqwest::Client], args: &Args, request: F) -> anyhow::Result<Vec<Duration>>
where
    F: Fn(reqwest::Client) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let mut loops = tokio::task::JoinSet::new();
    for http in clients {
        let (http, request, stop) = (http.clone(), request.clone(), stop.clone());
        loops.spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                request(http.clone()).await?;
                latencies.push(t0.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    while let Some(done) = loops.join_next().await {
        all.extend(done??);
    }
    all.sort();
    Ok(all)
}

/// One subscriber on `task.created`; tasks created one at a time.
async fn event_latency(http: &reqwest::Client, key: &str, url: &str, samples: usize) -> anyhow::Result<Vec<Duration>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ws_url = format!("{}/events?patterns=task.created", url.replacen("http://", "ws://", 1));
    let mut request = ws_url.into_client_request()?;
    request.headers_mut().insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    // Skip the welcome and subscribed messages.
    let mut ready = 0;
    while ready < 2 {
        if let Some(Ok(Message::Text(_))) = socket.next().await {
            ready += 1;
        }
    }
    let body = json!({"command": ["true"], "delay_ms": 86_400_000});
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t0 = Instant::now();
        let created: Value = http.post(format!("{url}/api/v1/tasks")).json(&body).send().await?.json().await?;
        let id = created["id"].as_str().context("no id")?.to_owned();
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    let event: Value = serde_json::from_str(text.as_str())?;
                    if event["data"]["task_id"] == id.as_str() {
                        latencies.push(t0.elapsed());
                        break;
                    }
                }
                Some(Ok(_)) => {}
                other => bail!("event stream ended: {other:?}"),
            }
        }
    }
    socket.send(Message::Close(None)).await.ok();
    latencies.sort();
    Ok(latencies)
}

/// Prints a phase's throughput and latency; returns the throughput.
fn report(name: &str, latencies: &[Duration], seconds: u64) -> f64 {
    let rate = latencies.len() as f64 / seconds as f64;
    println!(
        "{name}: {} req/s, p50 {} p99 {} ({} requests)",
        thousands(rate),
        short(percentile(latencies, 0.50)),
        short(percentile(latencies, 0.99)),
        latencies.len()
    );
    rate
}

/// Reads a response through, failing unless it has `status`. A 429 says
/// which setting to raise.
async fn expect(response: reqwest::Response, status: reqwest::StatusCode, what: &str) -> anyhow::Result<()> {
    if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
        bail!("{what} answered 429: raise the server's auth.rate_limit.per_credential for this load");
    }
    if response.status() != status {
        bail!("{what} answered {}", response.status());
    }
    response.bytes().await?;
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The 1, 5 and 15 minute load averages, as `uptime` shows them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// `n` admin keys of the default tenant, put straight into the store.
async fn admin_keys(store_url: &str, n: usize) -> anyhow::Result<Vec<String>> {
    if store_url.starts_with("memory") {
        bail!("a memory store cannot be shared with the server for its keys; use sqlite, postgres or redis");
    }
    let store = godel_core::store::open(store_url).await?;
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let new = godel_server::generate_key();
        store
            .create_key(&godel_core::ApiKey {
                id: godel_core::KeyId::new(),
                name: format!("api-load-{i}"),
                tenant: godel_core::TenantId::default_tenant(),
                role: godel_core::Role::Admin,
                hash: new.hash,
                prefix: new.prefix.clone(),
                created_at: godel_core::Timestamp::now(),
                expires_at: None,
                last_used_at: None,
                revoked_at: None,
            })
            .await?;
        keys.push(new.plaintext);
    }
    Ok(keys)
}

/// An HTTP client sending `key`, keeping its connection alive.
fn client(key: &str) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse()?);
    Ok(reqwest::Client::builder().default_headers(headers).pool_max_idle_per_host(1).build()?)
}
