//! A fake OpenAI-compatible chat-completions endpoint: a real HTTP server on
//! loopback speaking `POST /v1/chat/completions`, as strict as the real one
//! about the bearer key and the request body (unknown or missing fields are a
//! 400 with OpenAI's error JSON), answering in plain JSON or as a stream of
//! server-sent events (`data: {chunk}` … `data: [DONE]`, usage in a final
//! chunk when `stream_options.include_usage` asks for it).
//!
//! Each model follows a script of [`Reply`]s, one per request, the last one
//! repeating: answer, fail with a status, rate-limit with `Retry-After`, or
//! stall until the client goes away. Counters tell a test how many requests
//! each model got, and how many the client abandoned mid-answer.
//!
//! ```no_run
//! # async fn demo() {
//! use godel_fakes::openai::{FakeOpenAi, Reply};
//! let fake = FakeOpenAi::start("sk-test").await;
//! fake.script("gpt-a", [Reply::rate_limited(Some(60))]);
//! fake.script("gpt-b", [Reply::answer("Hello!", 10, 2)]);
//! // point a client at fake.base_url() with the key "sk-test"
//! # }
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::Stream;
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;
use warp::Filter;
use warp::http::{HeaderValue, Response, StatusCode};
use warp::hyper::Body;

/// How often a stalled answer sends a keep-alive (an SSE comment, or a space
/// before a JSON body): writing is how the server learns the client left.
const KEEP_ALIVE: Duration = Duration::from_millis(10);

/// What a model does with one request.
#[derive(Clone, PartialEq, Debug)]
pub enum Reply {
    /// Answers with this text (split into word deltas when streaming) and usage.
    Answer {
        /// The assistant's message.
        text: String,
        /// Reported `usage.prompt_tokens`.
        prompt_tokens: u64,
        /// Reported `usage.completion_tokens`.
        completion_tokens: u64,
    },
    /// Fails with this status and OpenAI's error JSON carrying `message`.
    Error {
        /// The HTTP status (400, 500, 503, …).
        status: u16,
        /// The error's message.
        message: String,
    },
    /// A 429, with `Retry-After: <seconds>` when given.
    RateLimited {
        /// The `Retry-After` header, in seconds.
        retry_after: Option<u64>,
    },
    /// Starts answering (a first delta when streaming, whitespace otherwise),
    /// then never finishes; the request is counted as cancelled when the
    /// client drops it.
    Stall,
    /// Sends the headers, then nothing at all: not even a keep-alive.
    Hang,
    /// Sends this text's deltas (or the first half of a plain answer) and
    /// ends the body early: no finishing chunk, no `[DONE]`.
    Cut {
        /// What gets through.
        text: String,
    },
}

impl Reply {
    /// [`Reply::Answer`].
    pub fn answer(text: &str, prompt_tokens: u64, completion_tokens: u64) -> Self {
        Reply::Answer { text: text.to_owned(), prompt_tokens, completion_tokens }
    }

    /// [`Reply::Error`].
    pub fn error(status: u16, message: &str) -> Self {
        Reply::Error { status, message: message.to_owned() }
    }

    /// [`Reply::RateLimited`].
    pub fn rate_limited(retry_after: Option<u64>) -> Self {
        Reply::RateLimited { retry_after }
    }
}

/// The running fake. Stops serving when dropped.
#[derive(Debug)]
pub struct FakeOpenAi {
    addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

#[derive(Debug)]
struct State {
    /// `None`: any request is authorized, as on a local server (vLLM, Ollama).
    api_key: Option<String>,
    models: Mutex<HashMap<String, Model>>,
    /// When set, streamed bodies are written in slices of this many bytes, so
    /// that events and multi-byte characters arrive split.
    split: Mutex<Option<usize>>,
    /// Answer with one JSON body even when asked to stream, as servers without streaming do.
    never_stream: AtomicBool,
}

#[derive(Debug, Default)]
struct Model {
    script: Vec<Reply>,
    next: usize,
    requests: usize,
    cancelled: usize,
    last_body: Option<Value>,
}

impl FakeOpenAi {
    /// Starts serving on a free loopback port; requests must carry `Authorization: Bearer <api_key>`.
    pub async fn start(api_key: &str) -> Self {
        Self::serve(Some(api_key.to_owned()))
    }

    /// Starts serving without a key, like a local inference server.
    pub async fn start_keyless() -> Self {
        Self::serve(None)
    }

    fn serve(api_key: Option<String>) -> Self {
        let state = Arc::new(State {
            api_key,
            models: Mutex::new(HashMap::new()),
            split: Mutex::new(None),
            never_stream: AtomicBool::new(false),
        });
        let route = warp::post()
            .and(warp::path!("v1" / "chat" / "completions"))
            .and(warp::header::optional::<String>("authorization"))
            .and(warp::body::bytes())
            .and(with(state.clone()))
            .map(|auth: Option<String>, body: warp::hyper::body::Bytes, state: Arc<State>| {
                state.handle(auth.as_deref(), &body)
            });
        let fallback = warp::any().map(|| {
            error_response(StatusCode::NOT_FOUND, "Invalid URL: only POST /v1/chat/completions is served", None, None)
        });
        let (addr, server) = warp::serve(route.or(fallback).unify()).bind_ephemeral(([127, 0, 0, 1], 0));
        Self { addr, state, server: tokio::spawn(server) }
    }

    /// The base URL clients configure, e.g. `http://127.0.0.1:41234/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Sets `model`'s script: one reply per request, in order, the last one
    /// repeating. A model without a script does not exist (404).
    pub fn script(&self, model: &str, replies: impl IntoIterator<Item = Reply>) {
        let script: Vec<Reply> = replies.into_iter().collect();
        assert!(!script.is_empty(), "a script needs at least one reply");
        let mut models = self.state.lock_models();
        let entry = models.entry(model.to_owned()).or_default();
        entry.script = script;
        entry.next = 0;
    }

    /// Writes streamed bodies in slices of `bytes` (`None`: one write per event).
    pub fn split_writes(&self, bytes: Option<usize>) {
        *self.state.split.lock().unwrap_or_else(PoisonError::into_inner) = bytes.map(|b| b.max(1));
    }

    /// Answers every request with one JSON body, even those asking for a stream.
    pub fn never_stream(&self, yes: bool) {
        self.state.never_stream.store(yes, Ordering::Relaxed);
    }

    /// Requests that reached `model` (authorized and well formed).
    pub fn requests(&self, model: &str) -> usize {
        self.state.lock_models().get(model).map_or(0, |m| m.requests)
    }

    /// Stalled answers of `model` that the client abandoned.
    pub fn cancelled(&self, model: &str) -> usize {
        self.state.lock_models().get(model).map_or(0, |m| m.cancelled)
    }

    /// The body of the last request that reached `model`.
    pub fn last_body(&self, model: &str) -> Option<Value> {
        self.state.lock_models().get(model).and_then(|m| m.last_body.clone())
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn with(state: Arc<State>) -> impl Filter<Extract = (Arc<State>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

impl State {
    fn lock_models(&self) -> std::sync::MutexGuard<'_, HashMap<String, Model>> {
        self.models.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn handle(self: Arc<Self>, auth: Option<&str>, body: &[u8]) -> Response<Body> {
        match auth.and_then(|a| a.strip_prefix("Bearer ")) {
            _ if self.api_key.is_none() => {}
            None => {
                return error_response(
                    StatusCode::UNAUTHORIZED,
                    "You didn't provide an API key. You need to provide your API key in an Authorization header \
                     using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    None,
                    None,
                );
            }
            Some(key) if Some(key) != self.api_key.as_deref() => {
                return error_response(
                    StatusCode::UNAUTHORIZED,
                    "Incorrect API key provided.",
                    None,
                    Some("invalid_api_key"),
                );
            }
            Some(_) => {}
        }
        let request = match Request::parse(body) {
            Ok(request) => request,
            Err((message, param)) => {
                return error_response(StatusCode::BAD_REQUEST, &message, param.as_deref(), None);
            }
        };
        let reply = {
            let mut models = self.lock_models();
            let Some(model) = models.get_mut(&request.model) else {
                drop(models);
                let message = format!("The model `{}` does not exist or you do not have access to it.", request.model);
                return error_response(StatusCode::NOT_FOUND, &message, None, Some("model_not_found"));
            };
            model.requests += 1;
            model.last_body = Some(request.body.clone());
            let reply = model.script[model.next.min(model.script.len() - 1)].clone();
            model.next += 1;
            reply
        };
        match reply {
            Reply::Error { status, message } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                error_response(status, &message, None, None)
            }
            Reply::RateLimited { retry_after } => {
                let mut response = error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Rate limit reached for requests. Please try again later.",
                    None,
                    Some("rate_limit_exceeded"),
                );
                if let Some(secs) = retry_after {
                    response.headers_mut().insert("retry-after", HeaderValue::from(secs));
                }
                response
            }
            Reply::Answer { text, prompt_tokens, completion_tokens } => {
                let usage = json!({
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                });
                if request.stream && !self.never_stream.load(Ordering::Relaxed) {
                    let events = stream_events(&request.model, &text, request.include_usage.then_some(usage));
                    let split = *self.split.lock().unwrap_or_else(PoisonError::into_inner);
                    sse_response(Body::wrap_stream(futures::stream::iter(split_events(events, split))))
                } else {
                    let body = json!({
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "created": 1_700_000_000,
                        "model": request.model,
                        "choices": [{
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }],
                        "usage": usage,
                    });
                    json_response(StatusCode::OK, &body)
                }
            }
            Reply::Hang => {
                let mut response =
                    Response::new(Body::wrap_stream(futures::stream::pending::<Result<Vec<u8>, Infallible>>()));
                let kind = if request.stream { "text/event-stream" } else { "application/json" };
                response.headers_mut().insert("content-type", HeaderValue::from_static(kind));
                response
            }
            Reply::Cut { text } => {
                if request.stream {
                    let mut events = stream_events(&request.model, &text, None);
                    events.truncate(events.len() - 2);
                    let split = *self.split.lock().unwrap_or_else(PoisonError::into_inner);
                    sse_response(Body::wrap_stream(futures::stream::iter(split_events(events, split))))
                } else {
                    let whole = json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]});
                    let mut whole = whole.to_string().into_bytes();
                    whole.truncate(whole.len() / 2);
                    let mut response = Response::new(Body::from(whole));
                    response.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
                    response
                }
            }
            Reply::Stall => {
                let guard = CancelGuard { state: self.clone(), model: request.model.clone() };
                let first = if request.stream {
                    let chunk = chunk_json(&request.model, json!({"role": "assistant", "content": "thinking"}), None);
                    format!("data: {chunk}\n\n")
                } else {
                    " ".to_owned()
                };
                let keep_alive = if request.stream { ": keep-alive\n\n" } else { " " };
                let body = stall(guard, first, keep_alive);
                if request.stream {
                    sse_response(Body::wrap_stream(body))
                } else {
                    let mut response = Response::new(Body::wrap_stream(body));
                    response.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
                    response
                }
            }
        }
    }
}

/// A request body that passed the checks OpenAI makes.
struct Request {
    body: Value,
    model: String,
    stream: bool,
    include_usage: bool,
}

/// Parameters the endpoint accepts; anything else is "Unrecognized request argument".
const KNOWN: [&str; 19] = [
    "model",
    "messages",
    "stream",
    "stream_options",
    "temperature",
    "top_p",
    "n",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "seed",
    "response_format",
    "tools",
    "tool_choice",
    "logprobs",
];

impl Request {
    /// Checks the body; an error carries OpenAI's message and the offending parameter.
    fn parse(body: &[u8]) -> Result<Self, (String, Option<String>)> {
        let body: Value = serde_json::from_slice(body).map_err(|_| {
            (
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your \
              HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON."
                    .to_owned(),
                None,
            )
        })?;
        let object = body.as_object().ok_or_else(|| (format!("{body} is not of type 'object'"), None))?;
        if let Some(unknown) = object.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err((format!("Unrecognized request argument supplied: {unknown}"), None));
        }
        let model = match object.get("model") {
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            Some(Value::String(_)) | None => {
                return Err(("you must provide a model parameter".to_owned(), None));
            }
            Some(other) => return Err((format!("{other} is not of type 'string' - 'model'"), Some("model".into()))),
        };
        check_messages(object)?;
        let stream = match object.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err((format!("{other} is not of type 'boolean' - 'stream'"), Some("stream".into()))),
        };
        let include_usage = match object.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(_) if !stream => {
                return Err((
                    "The 'stream_options' parameter is only allowed when 'stream' is enabled.".to_owned(),
                    Some("stream_options".into()),
                ));
            }
            Some(Value::Object(options)) => {
                if let Some(unknown) = options.keys().find(|k| *k != "include_usage") {
                    return Err((
                        format!("Unrecognized request argument supplied: stream_options.{unknown}"),
                        Some("stream_options".into()),
                    ));
                }
                match options.get("include_usage") {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(other) => {
                        return Err((
                            format!("{other} is not of type 'boolean' - 'stream_options.include_usage'"),
                            Some("stream_options.include_usage".into()),
                        ));
                    }
                }
            }
            Some(other) => {
                return Err((
                    format!("{other} is not of type 'object' - 'stream_options'"),
                    Some("stream_options".into()),
                ));
            }
        };
        Ok(Self { body, model, stream, include_usage })
    }
}

fn check_messages(object: &Map<String, Value>) -> Result<(), (String, Option<String>)> {
    let param = || Some("messages".to_owned());
    let messages = match object.get("messages") {
        None => return Err(("Missing required parameter: 'messages'.".to_owned(), param())),
        Some(Value::Array(m)) => m,
        Some(other) => return Err((format!("{other} is not of type 'array' - 'messages'"), param())),
    };
    if messages.is_empty() {
        return Err(("[] is too short - 'messages'".to_owned(), param()));
    }
    for (i, message) in messages.iter().enumerate() {
        let at = format!("messages.{i}");
        let Some(fields) = message.as_object() else {
            return Err((format!("{message} is not of type 'object' - '{at}'"), Some(at)));
        };
        if let Some(unknown) = fields.keys().find(|k| !["role", "content", "name"].contains(&k.as_str())) {
            return Err((
                format!("Additional properties are not allowed ('{unknown}' was unexpected) - '{at}'"),
                Some(at),
            ));
        }
        match fields.get("role").and_then(Value::as_str) {
            Some("system" | "developer" | "user" | "assistant") => {}
            Some(role) => {
                return Err((
                    format!("'{role}' is not one of ['system', 'developer', 'user', 'assistant'] - '{at}.role'"),
                    Some(format!("{at}.role")),
                ));
            }
            None => return Err((format!("Missing required parameter: '{at}.role'."), Some(format!("{at}.role")))),
        }
        match fields.get("content") {
            Some(Value::String(_)) => {}
            None => {
                return Err((format!("Missing required parameter: '{at}.content'."), Some(format!("{at}.content"))));
            }
            Some(other) => {
                return Err((
                    format!("{other} is not of type 'string' - '{at}.content'"),
                    Some(format!("{at}.content")),
                ));
            }
        }
    }
    Ok(())
}

/// The SSE events of a streamed answer: a role chunk, one chunk per word,
/// a finishing chunk, the usage chunk when asked, and `[DONE]`.
fn stream_events(model: &str, text: &str, usage: Option<Value>) -> Vec<String> {
    let mut events = vec![chunk_json(model, json!({"role": "assistant", "content": ""}), None)];
    for word in text.split_inclusive(' ') {
        events.push(chunk_json(model, json!({"content": word}), None));
    }
    events.push(chunk_json(model, json!({}), Some("stop")));
    if let Some(usage) = usage {
        let mut last = json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": model, "choices": [],
        });
        last["usage"] = usage;
        events.push(last.to_string());
    }
    events.push("[DONE]".to_owned());
    events.into_iter().map(|e| format!("data: {e}\n\n")).collect()
}

fn chunk_json(model: &str, delta: Value, finish: Option<&str>) -> String {
    json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
    .to_string()
}

/// The events as body writes: one per event, or fixed-size byte slices that
/// cut through events and characters alike.
fn split_events(events: Vec<String>, split: Option<usize>) -> Vec<Result<Vec<u8>, Infallible>> {
    match split {
        None => events.into_iter().map(|e| Ok(e.into_bytes())).collect(),
        Some(n) => events.concat().into_bytes().chunks(n).map(|c| Ok(c.to_vec())).collect(),
    }
}

/// Counts a stalled answer as cancelled when its body is dropped, which
/// happens only once the client has gone: a stall never finishes by itself.
struct CancelGuard {
    state: Arc<State>,
    model: String,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Some(model) = self.state.lock_models().get_mut(&self.model) {
            model.cancelled += 1;
        }
    }
}

/// `first`, then `keep_alive` every [`KEEP_ALIVE`] until the client goes away.
fn stall(
    guard: CancelGuard,
    first: String,
    keep_alive: &'static str,
) -> impl Stream<Item = Result<Vec<u8>, Infallible>> {
    futures::stream::unfold((guard, Some(first)), move |(guard, first)| async move {
        match first {
            Some(first) => Some((Ok(first.into_bytes()), (guard, None))),
            None => {
                tokio::time::sleep(KEEP_ALIVE).await;
                Some((Ok(keep_alive.as_bytes().to_vec()), (guard, None)))
            }
        }
    })
}

fn sse_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response.headers_mut().insert("content-type", HeaderValue::from_static("text/event-stream"));
    response.headers_mut().insert("cache-control", HeaderValue::from_static("no-cache"));
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", HeaderValue::from_static("application/json"));
    response
}

/// OpenAI's error JSON.
fn error_response(status: StatusCode, message: &str, param: Option<&str>, code: Option<&str>) -> Response<Body> {
    let kind = match status.as_u16() {
        429 => "requests",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    };
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    json_response(status, &body)
}
