//! A fake AI provider for tests and benchmarks (cargo feature `testing`): a real HTTP server
//! on `127.0.0.1:0` speaking the real wire formats of OpenAI's `POST /v1/chat/completions`
//! (SSE `chat.completion.chunk`s ending in `data: [DONE]`, the usage chunk when asked),
//! Anthropic's `POST /v1/messages` (SSE with `event:` names) and `POST /v1/embeddings`.
//!
//! Each test scripts what it answers: a FIFO of [`Script`]s per [`Route`]; when a route's
//! queue is empty the default script answers (an echo of the last user message). It records
//! every request and every client that went away before its response was complete (so a
//! test can assert that the upstream connection was closed).
//!
//! The server is hand-written over Tokio's TCP so that it controls exactly what goes on the
//! wire (a stream cut mid-chunk, a response held open) and notices a client's disconnect
//! while it has nothing to send.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

/// An endpoint of the fake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// OpenAI's `POST /v1/chat/completions`.
    ChatCompletions,
    /// Anthropic's `POST /v1/messages`.
    Messages,
    /// OpenAI's `POST /v1/embeddings`.
    Embeddings,
}

impl Route {
    fn of_path(path: &str) -> Option<Self> {
        let path = path.split('?').next().unwrap_or(path);
        match path {
            p if p.ends_with("/chat/completions") => Some(Self::ChatCompletions),
            p if p.ends_with("/messages") => Some(Self::Messages),
            p if p.ends_with("/embeddings") => Some(Self::Embeddings),
            _ => None,
        }
    }
}

/// How a finished reply says it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// OpenAI `stop`, Anthropic `end_turn`.
    Stop,
    /// OpenAI `length`, Anthropic `max_tokens`.
    Length,
}

/// One text chunk and the wait before it is sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// Wait before sending it.
    pub delay: Duration,
    /// Its text.
    pub text: String,
}

/// What the fake answers to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Script {
    /// A complete streamed reply: the chunks, usage (OpenAI: only when the request asks for
    /// it with `stream_options.include_usage`; `None`: input = words of the prompt, output =
    /// chunks), the finish reason.
    Reply {
        /// The text chunks.
        chunks: Vec<Chunk>,
        /// `(input, output)` tokens.
        usage: Option<(u32, u32)>,
        /// The finish reason.
        finish: Finish,
    },
    /// An HTTP error: the status, an optional `Retry-After`, and a body (by default the
    /// route's own error JSON for the status).
    Status {
        /// The HTTP status.
        status: u16,
        /// The `Retry-After` header's value.
        retry_after: Option<String>,
        /// The body; `None` for the provider's usual error JSON.
        body: Option<String>,
    },
    /// The chunks, then an error inside the stream (Anthropic: `event: error`; OpenAI:
    /// `data: {"error": ...}`), e.g. `overloaded_error`.
    ErrorEvent {
        /// Text chunks before the error.
        chunks: Vec<Chunk>,
        /// The error type (`overloaded_error`).
        error_type: String,
        /// Its message.
        message: String,
    },
    /// The chunks, then the connection is closed in the middle of the body (no end of
    /// stream, no `[DONE]`).
    Cut {
        /// Text chunks before the cut.
        chunks: Vec<Chunk>,
    },
    /// The chunks, then nothing: the response stays open until the client goes away.
    Hold {
        /// Text chunks sent before holding.
        chunks: Vec<Chunk>,
    },
    /// The last user message echoed back a word per chunk, each after `delay`
    /// (`Duration::ZERO`: the "instant" mode for benchmarks).
    Echo {
        /// Wait before each chunk.
        delay: Duration,
    },
}

fn chunks_of(texts: &[&str]) -> Vec<Chunk> {
    texts.iter().map(|t| Chunk { delay: Duration::ZERO, text: (*t).to_string() }).collect()
}

impl Script {
    /// A reply of these chunks, sent at once, finishing with `stop`.
    pub fn reply(texts: &[&str]) -> Self {
        Self::Reply { chunks: chunks_of(texts), usage: None, finish: Finish::Stop }
    }

    /// An HTTP error with the provider's usual error body.
    pub fn status(status: u16) -> Self {
        Self::Status { status, retry_after: None, body: None }
    }

    /// A 429 with `Retry-After: seconds`.
    pub fn rate_limited(seconds: u64) -> Self {
        Self::Status { status: 429, retry_after: Some(seconds.to_string()), body: None }
    }

    /// An `overloaded_error` inside the stream after these chunks.
    pub fn overloaded_after(texts: &[&str]) -> Self {
        Self::ErrorEvent {
            chunks: chunks_of(texts),
            error_type: "overloaded_error".into(),
            message: "Overloaded".into(),
        }
    }

    /// These chunks, then the connection is cut.
    pub fn cut_after(texts: &[&str]) -> Self {
        Self::Cut { chunks: chunks_of(texts) }
    }

    /// These chunks, then the response is held open.
    pub fn hold_after(texts: &[&str]) -> Self {
        Self::Hold { chunks: chunks_of(texts) }
    }

    /// The echo of the last user message, without delays.
    pub fn instant() -> Self {
        Self::Echo { delay: Duration::ZERO }
    }

    /// Every chunk of this script waits `delay` before it is sent.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        match &mut self {
            Self::Reply { chunks, .. }
            | Self::ErrorEvent { chunks, .. }
            | Self::Cut { chunks }
            | Self::Hold { chunks } => chunks.iter_mut().for_each(|c| c.delay = delay),
            Self::Echo { delay: d } => *d = delay,
            Self::Status { .. } => {}
        }
        self
    }

    /// A reply's usage (`input`, `output` tokens).
    pub fn with_usage(mut self, input: u32, output: u32) -> Self {
        if let Self::Reply { usage, .. } = &mut self {
            *usage = Some((input, output));
        }
        self
    }

    /// A reply's finish reason.
    pub fn with_finish(mut self, reason: Finish) -> Self {
        if let Self::Reply { finish, .. } = &mut self {
            *finish = reason;
        }
        self
    }
}

/// A request the fake received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The endpoint, if it was one the fake knows.
    pub route: Option<Route>,
    /// The request path.
    pub path: String,
    /// Headers, names in lower case.
    pub headers: BTreeMap<String, String>,
    /// The body as JSON (`Null` when it was not JSON).
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
}

/// A client that went away before its response was complete.
#[derive(Debug, Clone)]
pub struct Disconnect {
    /// The endpoint.
    pub route: Route,
    /// Text chunks sent before the client went away.
    pub chunks_sent: usize,
    /// When it was noticed.
    pub at: Instant,
}

#[derive(Default)]
struct Shared {
    scripts: HashMap<Route, VecDeque<Script>>,
    default: Option<Script>,
    requests: Vec<RecordedRequest>,
    disconnects: Vec<Disconnect>,
    next_id: u64,
}

/// The fake provider server. Stops accepting when dropped.
pub struct FakeProvider {
    addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl std::fmt::Debug for FakeProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeProvider").field("addr", &self.addr).finish_non_exhaustive()
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeProvider {
    /// Starts a server on a free port of 127.0.0.1. Panics if it cannot listen (test
    /// support: a test cannot go on without it).
    pub async fn start() -> Self {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(e) => panic!("the fake provider cannot listen on 127.0.0.1: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(addr) => addr,
            Err(e) => panic!("the fake provider has no address: {e}"),
        };
        let shared = Arc::new(Mutex::new(Shared::default()));
        let accepting = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let _ = socket.set_nodelay(true);
                tokio::spawn(serve(socket, accepting.clone()));
            }
        });
        Self { addr, shared, accept }
    }

    /// The OpenAI-style base URL: `http://127.0.0.1:PORT/v1` (Anthropic's is the same).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Queues `script` as the answer to the next request to `route` not yet scripted.
    pub fn push(&self, route: Route, script: Script) {
        lock(&self.shared).scripts.entry(route).or_default().push_back(script);
    }

    /// The answer of chat requests when their route's queue is empty (by default an echo
    /// of the last user message). Embeddings answer [`fake_embedding`]s whatever the
    /// default; only a queued [`Script::Status`] makes them fail.
    pub fn set_default(&self, script: Script) {
        lock(&self.shared).default = Some(script);
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared).requests.clone()
    }

    /// The requests received so far on `route`.
    pub fn requests_to(&self, route: Route) -> Vec<RecordedRequest> {
        self.requests().into_iter().filter(|r| r.route == Some(route)).collect()
    }

    /// Every client that went away before its response was complete.
    pub fn disconnects(&self) -> Vec<Disconnect> {
        lock(&self.shared).disconnects.clone()
    }
}

/// The deterministic embedding the fake answers for `text` (8 dimensions, unit length).
pub fn fake_embedding(text: &str) -> Vec<f32> {
    let mut v = [0f32; 8];
    for (i, b) in text.bytes().enumerate() {
        v[i % 8] += f32::from(b) / 255.0;
    }
    v[7] += 1.0;
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

struct Request {
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

async fn read_request(reader: &mut OwnedReadHalf) -> Option<Request> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = reader.read(&mut chunk).await.ok()?;
        if n == 0 || buffer.len() > 1 << 20 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_string();
    let mut lines = head.split("\r\n");
    let path = lines.next()?.split(' ').nth(1)?.to_string();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = buffer[header_end + 4..].to_vec();
    while body.len() < length {
        let n = reader.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some(Request { path, headers, body })
}

/// What went wrong while answering: the client went away.
struct Gone;

/// The writing side of one response, watching the reading side for the client going away.
struct Conn {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
}

impl Conn {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), Gone> {
        self.writer.write_all(bytes).await.map_err(|_| Gone)?;
        self.writer.flush().await.map_err(|_| Gone)
    }

    /// Sends one HTTP chunk holding one SSE event.
    async fn event(&mut self, event: Option<&str>, data: &str) -> Result<(), Gone> {
        let mut sse = String::new();
        if let Some(name) = event {
            sse.push_str(&format!("event: {name}\n"));
        }
        sse.push_str(&format!("data: {data}\n\n"));
        self.write(format!("{:x}\r\n{sse}\r\n", sse.len()).as_bytes()).await
    }

    /// Waits `delay`, or less if the client goes away meanwhile.
    async fn wait(&mut self, delay: Duration) -> Result<(), Gone> {
        if delay.is_zero() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return Ok(()),
                closed = closed(&mut self.reader) => if closed { return Err(Gone) },
            }
        }
    }

    /// Waits until the client goes away.
    async fn hold(&mut self) -> Gone {
        while !closed(&mut self.reader).await {}
        Gone
    }
}

/// Reads whatever the client sends; `true` once it has closed the connection.
async fn closed<R: AsyncRead + Unpin>(reader: &mut R) -> bool {
    let mut buf = [0u8; 1024];
    !matches!(reader.read(&mut buf).await, Ok(n) if n > 0)
}

async fn serve(socket: TcpStream, shared: Arc<Mutex<Shared>>) {
    let (mut reader, writer) = socket.into_split();
    let Some(request) = read_request(&mut reader).await else { return };
    let route = Route::of_path(&request.path);
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    let (script, id) = {
        let mut shared = lock(&shared);
        shared.requests.push(RecordedRequest {
            route,
            path: request.path.clone(),
            headers: request.headers.clone(),
            body: body.clone(),
            at: Instant::now(),
        });
        shared.next_id += 1;
        let id = shared.next_id;
        let script = route.and_then(|r| shared.scripts.get_mut(&r).and_then(VecDeque::pop_front));
        (script.or_else(|| shared.default.clone()).unwrap_or(Script::Echo { delay: Duration::ZERO }), id)
    };
    let mut conn = Conn { reader, writer };
    let Some(route) = route else {
        let _ =
            respond(&mut conn, 404, None, r#"{"error":{"message":"no such route","type":"invalid_request_error"}}"#)
                .await;
        return;
    };
    let mut sent = 0;
    let result = match (&script, route) {
        (Script::Status { status, retry_after, body: error_body }, _) => {
            let error_body = error_body.clone().unwrap_or_else(|| default_error_body(route, *status));
            respond(&mut conn, *status, retry_after.as_deref(), &error_body).await
        }
        (_, Route::Embeddings) => embeddings(&mut conn, &body).await,
        (_, Route::ChatCompletions) => openai_stream(&mut conn, &script, &body, id, &mut sent).await,
        (_, Route::Messages) => anthropic_stream(&mut conn, &script, &body, id, &mut sent).await,
    };
    if result.is_err() {
        lock(&shared).disconnects.push(Disconnect { route, chunks_sent: sent, at: Instant::now() });
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        529 => "Overloaded",
        _ => "Status",
    }
}

async fn respond(conn: &mut Conn, status: u16, retry_after: Option<&str>, body: &str) -> Result<(), Gone> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        reason_phrase(status),
        body.len()
    );
    if let Some(after) = retry_after {
        head.push_str(&format!("retry-after: {after}\r\n"));
    }
    head.push_str("\r\n");
    conn.write(head.as_bytes()).await?;
    conn.write(body.as_bytes()).await
}

fn default_error_body(route: Route, status: u16) -> String {
    let (openai_type, anthropic_type, message) = match status {
        429 => ("rate_limit_exceeded", "rate_limit_error", "Rate limit reached"),
        529 | 503 => ("server_error", "overloaded_error", "Overloaded"),
        401 => ("invalid_request_error", "authentication_error", "Invalid API key"),
        404 => ("invalid_request_error", "not_found_error", "Not found"),
        s if s >= 500 => ("server_error", "api_error", "Internal server error"),
        _ => ("invalid_request_error", "invalid_request_error", "Invalid request"),
    };
    match route {
        Route::Messages => json!({"type": "error", "error": {"type": anthropic_type, "message": message}}).to_string(),
        _ => {
            json!({"error": {"message": message, "type": openai_type, "param": null, "code": openai_type}}).to_string()
        }
    }
}

async fn start_sse(conn: &mut Conn) -> Result<(), Gone> {
    conn.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
          transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
    )
    .await
}

async fn end_sse(conn: &mut Conn) -> Result<(), Gone> {
    conn.write(b"0\r\n\r\n").await
}

/// The text of the last user message of an OpenAI or Anthropic request body.
fn last_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|messages| messages.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join(""),
            _ => String::new(),
        })
        .unwrap_or_default()
}

fn prompt_words(body: &Value) -> u32 {
    let system = body["system"].as_str().map_or(0, |s| s.split_whitespace().count());
    let messages = body["messages"].as_array().map_or(0, |messages| {
        messages.iter().map(|m| m["content"].as_str().map_or(0, |c| c.split_whitespace().count())).sum()
    });
    u32::try_from(system + messages).unwrap_or(u32::MAX)
}

/// The chunks and ending a script streams.
enum Ending {
    Finish(Finish, Option<(u32, u32)>),
    Error(String, String),
    Cut,
    Hold,
}

fn plan(script: &Script, body: &Value) -> (Vec<Chunk>, Ending) {
    match script {
        Script::Reply { chunks, usage, finish } => (chunks.clone(), Ending::Finish(*finish, *usage)),
        Script::ErrorEvent { chunks, error_type, message } => {
            (chunks.clone(), Ending::Error(error_type.clone(), message.clone()))
        }
        Script::Cut { chunks } => (chunks.clone(), Ending::Cut),
        Script::Hold { chunks } => (chunks.clone(), Ending::Hold),
        Script::Echo { delay } => {
            let text = last_user_text(body);
            let words: Vec<Chunk> =
                text.split_inclusive(' ').map(|w| Chunk { delay: *delay, text: w.to_string() }).collect();
            let chunks = match words.is_empty() {
                true => vec![Chunk { delay: *delay, text: "(nothing to echo)".into() }],
                false => words,
            };
            (chunks, Ending::Finish(Finish::Stop, None))
        }
        Script::Status { .. } => (Vec::new(), Ending::Cut),
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn openai_stream(conn: &mut Conn, script: &Script, body: &Value, id: u64, sent: &mut usize) -> Result<(), Gone> {
    let (chunks, ending) = plan(script, body);
    let model = body["model"].as_str().unwrap_or("fake").to_string();
    let include_usage = body["stream_options"]["include_usage"] == true;
    let created = now_secs();
    let chunk = |delta: Value, finish: Value, usage: Option<Value>| {
        let choices = match usage {
            Some(_) => json!([]),
            None => json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]),
        };
        json!({
            "id": format!("chatcmpl-fake-{id}"),
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": choices,
            "usage": usage.unwrap_or(Value::Null),
        })
        .to_string()
    };
    start_sse(conn).await?;
    conn.event(None, &chunk(json!({"role": "assistant", "content": ""}), Value::Null, None)).await?;
    for c in &chunks {
        conn.wait(c.delay).await?;
        conn.event(None, &chunk(json!({"content": c.text}), Value::Null, None)).await?;
        *sent += 1;
    }
    match ending {
        Ending::Finish(finish, usage) => {
            let reason = match finish {
                Finish::Stop => "stop",
                Finish::Length => "length",
            };
            conn.event(None, &chunk(json!({}), json!(reason), None)).await?;
            if include_usage {
                let (input, output) = usage.unwrap_or((prompt_words(body), u32::try_from(chunks.len()).unwrap_or(0)));
                let usage =
                    json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output});
                conn.event(None, &chunk(Value::Null, Value::Null, Some(usage))).await?;
            }
            conn.event(None, "[DONE]").await?;
            end_sse(conn).await
        }
        Ending::Error(kind, message) => {
            conn.event(
                None,
                &json!({"error": {"message": message, "type": kind, "param": null, "code": null}}).to_string(),
            )
            .await?;
            end_sse(conn).await
        }
        Ending::Cut => Ok(()),
        Ending::Hold => Err(conn.hold().await),
    }
}

async fn anthropic_stream(
    conn: &mut Conn,
    script: &Script,
    body: &Value,
    id: u64,
    sent: &mut usize,
) -> Result<(), Gone> {
    let (chunks, ending) = plan(script, body);
    let model = body["model"].as_str().unwrap_or("fake").to_string();
    let (input, output) = match &ending {
        Ending::Finish(_, Some(usage)) => *usage,
        _ => (prompt_words(body), u32::try_from(chunks.len()).unwrap_or(0)),
    };
    start_sse(conn).await?;
    let start = json!({"type": "message_start", "message": {
        "id": format!("msg_fake_{id}"), "type": "message", "role": "assistant", "content": [],
        "model": model, "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": input, "output_tokens": 1}}});
    conn.event(Some("message_start"), &start.to_string()).await?;
    conn.event(
        Some("content_block_start"),
        &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}).to_string(),
    )
    .await?;
    conn.event(Some("ping"), r#"{"type": "ping"}"#).await?;
    for c in &chunks {
        conn.wait(c.delay).await?;
        let delta = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": c.text}});
        conn.event(Some("content_block_delta"), &delta.to_string()).await?;
        *sent += 1;
    }
    match ending {
        Ending::Finish(finish, _) => {
            let reason = match finish {
                Finish::Stop => "end_turn",
                Finish::Length => "max_tokens",
            };
            conn.event(Some("content_block_stop"), r#"{"type": "content_block_stop", "index": 0}"#).await?;
            let delta = json!({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": null},
                "usage": {"output_tokens": output}});
            conn.event(Some("message_delta"), &delta.to_string()).await?;
            conn.event(Some("message_stop"), r#"{"type": "message_stop"}"#).await?;
            end_sse(conn).await
        }
        Ending::Error(kind, message) => {
            let error = json!({"type": "error", "error": {"type": kind, "message": message}});
            conn.event(Some("error"), &error.to_string()).await?;
            end_sse(conn).await
        }
        Ending::Cut => Ok(()),
        Ending::Hold => Err(conn.hold().await),
    }
}

async fn embeddings(conn: &mut Conn, body: &Value) -> Result<(), Gone> {
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().filter_map(|i| i.as_str().map(str::to_string)).collect(),
        _ => Vec::new(),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| json!({"object": "embedding", "index": index, "embedding": fake_embedding(text)}))
        .collect();
    let tokens: usize = inputs.iter().map(|i| i.split_whitespace().count()).sum();
    let response = json!({
        "object": "list",
        "model": body["model"].as_str().unwrap_or("fake"),
        "data": data,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    respond(conn, 200, None, &response.to_string()).await
}
