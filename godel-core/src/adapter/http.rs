//! The `http` adapter: a task's prompt sent to an OpenAI-compatible
//! chat-completions endpoint (`POST {url}/chat/completions`), answered as a
//! stream of server-sent events or as one JSON body.
//!
//! The agent names a chain of models, tried in order. A 429 whose
//! `Retry-After` is within [`HttpConfig::max_retry_after`] is waited out once
//! on the same model; any other failure (a longer 429, a 5xx, a 408, a broken
//! connection, a stalled response, and also a 4xx, which may be the model's
//! own limit such as its context length) moves on to the next model. When
//! every model failed, the outcome is retryable or not according to the last
//! error: 429, 408, 5xx and transport failures are; other 4xx are not.
//!
//! Streamed deltas go to the task's output as they come; the result carries
//! the text, the model that answered, the token usage the endpoint reported
//! and its cost from the price table, in micros (see [`Price`]). The engine
//! adds that cost to the tenant's spend (`engine/budget.rs`).
//!
//! SSE is parsed by hand from the response's chunks: lines are split on the
//! raw bytes and decoded only whole, so an event or a multi-byte character
//! cut across chunks arrives intact.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::InvalidInput;
use crate::adapter::{AbortMode, Adapter, AdapterError, AgentSession, Outcome, OutputSink};
use crate::money::Micros;
use crate::output::OutputStream;
use crate::task::{Task, TaskError, TaskErrorKind};

/// The most of a response body (plain answer or error) read into memory.
const MAX_BODY: usize = 16 << 20;

/// What one model costs, in micros (millionths of a currency unit) per
/// million tokens: `2_500_000` is 2.50 per million.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Price {
    /// Per million prompt tokens.
    pub input_per_million: Micros,
    /// Per million completion tokens.
    pub output_per_million: Micros,
}

impl Price {
    /// The cost of a call, rounded up to the next micro so that spend is
    /// never under-counted.
    ///
    /// ```
    /// use godel_core::adapter::Price;
    /// let price = Price { input_per_million: 2_500_000, output_per_million: 10_000_000 };
    /// assert_eq!(price.cost(1_000, 500), 2_500 + 5_000);
    /// ```
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> Micros {
        let total = u128::from(input_tokens) * u128::from(self.input_per_million)
            + u128::from(output_tokens) * u128::from(self.output_per_million);
        Micros::try_from(total.div_ceil(1_000_000)).unwrap_or(Micros::MAX)
    }
}

/// How to reach an endpoint and what to ask it.
#[derive(Clone)]
pub struct HttpConfig {
    /// Base URL of the API, e.g. `http://127.0.0.1:8080/v1`; requests go to `{url}/chat/completions`.
    pub url: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// The fallback chain, tried in order; at least one.
    pub models: Vec<String>,
    /// Ask for a stream of deltas (`stream: true`) rather than one body.
    pub stream: bool,
    /// Sent as a system message before the task's prompt.
    pub system_prompt: Option<String>,
    /// The longest wait for the response to start, and then for each next piece of it.
    pub request_timeout: Duration,
    /// The longest `Retry-After` waited out (once per model) before trying the same model again.
    pub max_retry_after: Duration,
    /// Prices per model; a model without one has no `cost_micros` in its results.
    pub prices: BTreeMap<String, Price>,
}

impl HttpConfig {
    /// A streaming configuration for `url` and `models`, with a 60 s request
    /// timeout, a 5 s cap on `Retry-After`, no key and no prices.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(url: impl Into<String>, models: I) -> Self {
        Self {
            url: url.into(),
            api_key: None,
            models: models.into_iter().map(Into::into).collect(),
            stream: true,
            system_prompt: None,
            request_timeout: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(5),
            prices: BTreeMap::new(),
        }
    }
}

/// Leaves the key out.
impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("models", &self.models)
            .field("stream", &self.stream)
            .field("system_prompt", &self.system_prompt)
            .field("request_timeout", &self.request_timeout)
            .field("max_retry_after", &self.max_retry_after)
            .field("prices", &self.prices)
            .finish()
    }
}

/// Runs tasks' prompts on an OpenAI-compatible endpoint.
#[derive(Clone, Debug)]
pub struct HttpAdapter {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: HttpConfig,
    endpoint: String,
    client: reqwest::Client,
}

impl HttpAdapter {
    /// Checks the configuration (an http or https URL, a non-empty chain of
    /// non-empty model names, a positive timeout) and builds the client.
    pub fn new(config: HttpConfig) -> Result<Self, InvalidInput> {
        let url = reqwest::Url::parse(&config.url).map_err(|e| {
            InvalidInput::new("url", format!("expected a URL like http://host:8080/v1, got {:?} ({e})", config.url))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(InvalidInput::new("url", format!("expected an http or https URL, got {:?}", config.url)));
        }
        if config.models.is_empty() {
            return Err(InvalidInput::new("models", "expected at least one model"));
        }
        if let Some(i) = config.models.iter().position(|m| m.trim().is_empty()) {
            return Err(InvalidInput::new("models", format!("model {i} has an empty name")));
        }
        if config.request_timeout.is_zero() {
            return Err(InvalidInput::new("request_timeout", "expected a positive duration"));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(config.request_timeout)
            .build()
            .map_err(|e| InvalidInput::new("url", format!("cannot build an HTTP client: {e}")))?;
        let endpoint = format!("{}/chat/completions", config.url.trim_end_matches('/'));
        Ok(Self { shared: Arc::new(Shared { config, endpoint, client }) })
    }

    /// Its configuration.
    pub fn config(&self) -> &HttpConfig {
        &self.shared.config
    }
}

#[async_trait]
impl Adapter for HttpAdapter {
    async fn open_session(&self, task: &Task) -> Result<Box<dyn AgentSession>, AdapterError> {
        match task.payload.prompt.as_deref() {
            Some(p) if !p.is_empty() => {}
            _ => return Err(AdapterError::permanent("an http agent runs prompts, and this task has none")),
        }
        Ok(Box::new(HttpSession { shared: self.shared.clone(), abort: CancellationToken::new() }))
    }

    /// Always healthy: a request is the only probe every compatible endpoint
    /// answers, and failed runs say what is wrong.
    async fn health(&self) -> Result<(), AdapterError> {
        Ok(())
    }
}

struct HttpSession {
    shared: Arc<Shared>,
    abort: CancellationToken,
}

#[async_trait]
impl AgentSession for HttpSession {
    async fn run(&self, task: &Task, output: OutputSink) -> Outcome {
        let prompt = task.payload.prompt.clone().unwrap_or_default();
        tokio::select! {
            biased;
            // Dropping the chain's future drops the in-flight request and its connection.
            () = self.abort.cancelled() => Outcome::Failed {
                error: TaskError::new(TaskErrorKind::Aborted, "the request was aborted"),
                retryable: true,
            },
            outcome = self.shared.run_chain(&prompt, &output) => outcome,
        }
    }

    async fn abort(&self, _mode: AbortMode) {
        // A request has nothing to clean up: graceful and forced are the same.
        self.abort.cancel();
    }

    async fn close(&self, _outcome: &Outcome) {}
}

/// What a model answered.
struct Answer {
    text: String,
    usage: Option<Usage>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Usage {
    input: u64,
    output: u64,
    total: u64,
}

/// Why one request failed.
#[derive(Debug)]
struct CallError {
    message: String,
    retryable: bool,
    /// A 429's `Retry-After`.
    retry_after: Option<Duration>,
}

impl CallError {
    fn transient(message: impl Into<String>) -> Self {
        Self { message: message.into(), retryable: true, retry_after: None }
    }
}

impl Shared {
    /// Tries the chain's models in order until one answers.
    async fn run_chain(&self, prompt: &str, output: &OutputSink) -> Outcome {
        let models = &self.config.models;
        let mut tried: Vec<&str> = Vec::new();
        let mut last: Option<CallError> = None;
        for (i, model) in models.iter().enumerate() {
            tried.push(model);
            let mut waited = false;
            let failure = loop {
                match self.call(model, prompt, output).await {
                    Ok(answer) => return self.completed(model, answer, &tried),
                    Err(e) => match e.retry_after {
                        Some(wait) if !waited && wait <= self.config.max_retry_after => {
                            tracing::debug!(model = %model, ?wait, "rate limited; waiting as Retry-After asks");
                            tokio::time::sleep(wait).await;
                            waited = true;
                        }
                        _ => break e,
                    },
                }
            };
            tracing::info!(model = %model, error = %failure.message, retryable = failure.retryable, "model failed");
            if let Some(next) = models.get(i + 1) {
                let note = format!("model {model} failed ({}); trying {next}\n", failure.message);
                output.send(OutputStream::System, note).await;
            }
            last = Some(failure);
        }
        let last = last.unwrap_or_else(|| CallError::transient("no model is configured"));
        let message = if tried.len() == 1 {
            format!("model {}: {}", tried[0], last.message)
        } else {
            format!("every model failed ({}); the last: {}", tried.join(", "), last.message)
        };
        Outcome::Failed { error: TaskError::new(TaskErrorKind::Error, message), retryable: last.retryable }
    }

    fn completed(&self, model: &str, answer: Answer, tried: &[&str]) -> Outcome {
        let mut result = json!({
            "text": answer.text,
            "model": model,
            "provider": "http",
            "usage": answer.usage.map(|u| json!({
                "input_tokens": u.input, "output_tokens": u.output, "total_tokens": u.total,
            })),
        });
        if let (Some(usage), Some(price)) = (answer.usage, self.config.prices.get(model)) {
            result["cost_micros"] = json!(price.cost(usage.input, usage.output));
        }
        if tried.len() > 1 {
            result["models_tried"] = json!(tried);
        }
        Outcome::Completed { result }
    }

    /// One request to one model.
    async fn call(&self, model: &str, prompt: &str, output: &OutputSink) -> Result<Answer, CallError> {
        let cfg = &self.config;
        let mut messages = Vec::new();
        if let Some(system) = &cfg.system_prompt {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        let mut body = json!({"model": model, "messages": messages, "stream": cfg.stream});
        if cfg.stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        let mut request = self.client.post(&self.endpoint).json(&body);
        if let Some(key) = &cfg.api_key {
            request = request.bearer_auth(key);
        }
        let response = match tokio::time::timeout(cfg.request_timeout, request.send()).await {
            Err(_) => return Err(CallError::transient(format!("no response within {:?}", cfg.request_timeout))),
            Ok(Err(e)) => return Err(CallError::transient(format!("request to {} failed: {e}", self.endpoint))),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            let body = self.read_body(response).await.unwrap_or_default();
            let detail = error_message(&body);
            let code = status.as_u16();
            let retryable = matches!(code, 408 | 429) || status.is_server_error() || !status.is_client_error();
            let message = if detail.is_empty() { format!("HTTP {code}") } else { format!("HTTP {code}: {detail}") };
            return Err(CallError { message, retryable, retry_after: if code == 429 { retry_after } else { None } });
        }
        // A server that does not stream answers with one JSON body even when asked to stream.
        let json = response.headers().get(reqwest::header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let json = json.is_some_and(|v| v.starts_with("application/json"));
        if cfg.stream && !json {
            self.read_stream(response, output).await
        } else {
            self.read_plain(response, output).await
        }
    }

    /// A plain answer: `choices[0].message.content` and `usage`.
    async fn read_plain(&self, response: reqwest::Response, output: &OutputSink) -> Result<Answer, CallError> {
        let body = self.read_body(response).await?;
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| CallError::transient(format!("the answer is not JSON: {e}")))?;
        let choice = &value["choices"][0];
        if choice.is_null() {
            return Err(CallError::transient("the answer has no choices"));
        }
        let text = choice["message"]["content"].as_str().unwrap_or_default().to_owned();
        if !text.is_empty() {
            output.send(OutputStream::Stdout, text.clone()).await;
        }
        Ok(Answer { text, usage: usage(&value["usage"]) })
    }

    /// A streamed answer: deltas to `output` as they come, usage from the
    /// chunk that carries it, and `[DONE]` required at the end.
    async fn read_stream(&self, mut response: reqwest::Response, output: &OutputSink) -> Result<Answer, CallError> {
        let timeout = self.config.request_timeout;
        let mut parser = SseParser::default();
        let mut text = String::new();
        let mut usage_seen = None;
        loop {
            let events = match tokio::time::timeout(timeout, response.chunk()).await {
                Err(_) => return Err(CallError::transient(format!("the stream stalled for {timeout:?}"))),
                Ok(Err(e)) => return Err(CallError::transient(format!("the stream broke: {e}"))),
                Ok(Ok(Some(bytes))) => parser.push(&bytes),
                Ok(Ok(None)) => parser.finish(),
            };
            for data in events {
                if data == "[DONE]" {
                    return Ok(Answer { text, usage: usage_seen });
                }
                let chunk: Value = serde_json::from_str(&data)
                    .map_err(|e| CallError::transient(format!("a stream event is not JSON: {e}")))?;
                if chunk["error"].is_object() {
                    return Err(CallError::transient(format!(
                        "error in the stream: {}",
                        error_message(data.as_bytes())
                    )));
                }
                if let Some(delta) = chunk["choices"][0]["delta"]["content"].as_str()
                    && !delta.is_empty()
                {
                    text.push_str(delta);
                    output.send(OutputStream::Stdout, delta.to_owned()).await;
                }
                if let Some(u) = usage(&chunk["usage"]) {
                    usage_seen = Some(u);
                }
            }
            if parser.ended {
                return Err(CallError::transient("the stream ended without [DONE]"));
            }
        }
    }

    /// Reads a whole body, up to [`MAX_BODY`], each piece within the request timeout.
    async fn read_body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, CallError> {
        let timeout = self.config.request_timeout;
        let mut body = Vec::new();
        loop {
            match tokio::time::timeout(timeout, response.chunk()).await {
                Err(_) => return Err(CallError::transient(format!("the answer stalled for {timeout:?}"))),
                Ok(Err(e)) => return Err(CallError::transient(format!("the answer broke off: {e}"))),
                Ok(Ok(None)) => return Ok(body),
                Ok(Ok(Some(bytes))) => {
                    if body.len() + bytes.len() > MAX_BODY {
                        return Err(CallError::transient(format!("the answer is larger than {MAX_BODY} bytes")));
                    }
                    body.extend_from_slice(&bytes);
                }
            }
        }
    }
}

/// `usage` as OpenAI reports it (`prompt_tokens`, `completion_tokens`, `total_tokens`).
fn usage(value: &Value) -> Option<Usage> {
    let input = value["prompt_tokens"].as_u64()?;
    let output = value["completion_tokens"].as_u64().unwrap_or(0);
    let total = value["total_tokens"].as_u64().unwrap_or(input + output);
    Some(Usage { input, output, total })
}

/// OpenAI's `error.message`, else the body as text (shortened).
fn error_message(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body)
        && let Some(message) = value["error"]["message"].as_str().or_else(|| value["error"].as_str())
    {
        return message.to_owned();
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(500) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// `retry-after-ms` (sent by OpenAI and Azure), else `retry-after` in seconds.
/// The HTTP-date form is not honoured: it means a long wait, better spent on the next model.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok().filter(|n| *n >= 0.0);
    if let Some(ms) = number("retry-after-ms") {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    number("retry-after").and_then(|s| Duration::try_from_secs_f64(s).ok())
}

/// Server-sent events from raw chunks: the `data` of each event, in order.
#[derive(Default, Debug)]
struct SseParser {
    /// Bytes of the line not yet ended.
    line: Vec<u8>,
    /// `data` lines of the event not yet dispatched.
    data: Option<String>,
    /// The body has ended.
    ended: bool,
}

impl SseParser {
    /// Feeds a chunk; returns the events it completed.
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.line_done(&line, &mut events);
            } else {
                self.line.push(b);
            }
        }
        events
    }

    /// The body ended: an event left without its blank line still counts.
    fn finish(&mut self) -> Vec<String> {
        let mut events = Vec::new();
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, &mut events);
        }
        self.line_done(b"", &mut events);
        self.ended = true;
        events
    }

    fn line_done(&mut self, line: &[u8], events: &mut Vec<String>) {
        if line.is_empty() {
            events.extend(self.data.take());
            return;
        }
        // Decoded only whole: a character cut across chunks has been reassembled by now.
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        // Comments (`: keep-alive`) have an empty field name; `event`, `id` and `retry` are not used.
        if field == "data" {
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(parser: &mut SseParser, pieces: &[&[u8]]) -> Vec<String> {
        let mut events = Vec::new();
        for piece in pieces {
            events.extend(parser.push(piece));
        }
        events
    }

    #[test]
    fn events_split_across_chunks_arrive_whole() {
        let body = "data: {\"a\":\"h\u{e9}llo \u{2713}\"}\n\n: keep-alive\n\ndata: [DONE]\n\n".as_bytes();
        // Every split point, including inside the two multi-byte characters.
        for cut in 0..body.len() {
            let mut parser = SseParser::default();
            let mut events = feed(&mut parser, &[&body[..cut], &body[cut..]]);
            events.extend(parser.finish());
            assert_eq!(events, ["{\"a\":\"h\u{e9}llo \u{2713}\"}", "[DONE]"], "cut at {cut}");
        }
        // One byte at a time.
        let mut parser = SseParser::default();
        let pieces: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(feed(&mut parser, &pieces), ["{\"a\":\"h\u{e9}llo \u{2713}\"}", "[DONE]"]);
    }

    #[test]
    fn crlf_multiline_data_and_a_missing_last_blank_line() {
        let mut parser = SseParser::default();
        let mut events = parser.push(b"event: x\r\ndata: one\r\ndata:two\r\nid: 7\r\n\r\ndata: [DONE]");
        assert_eq!(events, ["one\ntwo"]);
        events = parser.finish();
        assert_eq!(events, ["[DONE]"]);
        assert!(parser.ended);
    }

    #[test]
    fn cost_rounds_up_to_the_micro() {
        let price = Price { input_per_million: 150_000, output_per_million: 600_000 };
        assert_eq!(price.cost(0, 0), 0);
        assert_eq!(price.cost(1, 0), 1); // 0.15 micro rounds up
        assert_eq!(price.cost(1_000_000, 1_000_000), 750_000);
        assert_eq!(Price { input_per_million: Micros::MAX, output_per_million: 0 }.cost(u64::MAX, 0), Micros::MAX);
    }

    #[test]
    fn retry_after_reads_seconds_and_milliseconds() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
        headers.remove("retry-after-ms");
        headers.insert("retry-after", "Wed, 21 Oct 2026 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn bad_configurations_name_the_field() {
        let bad = |config: HttpConfig| HttpAdapter::new(config).unwrap_err().field;
        assert_eq!(bad(HttpConfig::new("not a url", ["m"])), "url");
        assert_eq!(bad(HttpConfig::new("ftp://host/v1", ["m"])), "url");
        assert_eq!(bad(HttpConfig::new("http://host/v1", Vec::<String>::new())), "models");
        assert_eq!(bad(HttpConfig::new("http://host/v1", ["m", " "])), "models");
        let mut config = HttpConfig::new("http://host/v1", ["m"]);
        config.request_timeout = Duration::ZERO;
        assert_eq!(bad(config), "request_timeout");
        let mut config = HttpConfig::new("http://host/v1/", ["m"]);
        config.api_key = Some("sk-secret".into());
        let adapter = HttpAdapter::new(config).unwrap();
        assert_eq!(adapter.shared.endpoint, "http://host/v1/chat/completions");
        assert!(!format!("{adapter:?}").contains("sk-secret"), "the key stays out of Debug");
    }
}
