//! One reply relayed as Server-Sent Events in OpenAI's `chat.completion.chunk` format.
//!
//! The relay is subscribed to the hub before it reads anything, then catches up from the
//! reply's Redis stream (after `Last-Event-ID`, or from the start), then forwards live
//! entries whose id is greater than the last one sent. A lag on the hub or a hub
//! reconnection makes it catch up from Redis again, so nothing is lost or repeated. Every
//! event carries its entry's id; the stream ends with `data: [DONE]` after the reply ended.

use std::convert::Infallible;
use std::time::Duration;

use actix_web::web::Bytes;
use colloquy_infra::reply_streams::{EntryId, ReplyStreams, StreamEntry, StreamUsage};
use futures::Stream;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use uuid::Uuid;

use super::hub::{HubEvent, Subscription};
use super::Active;

/// The keepalive comment.
const PING: &[u8] = b": ping\n\n";
/// The end of every stream.
const DONE: &str = "data: [DONE]\n\n";

/// Turns a reply's entries into SSE events in OpenAI's chunk format.
#[derive(Debug, Clone)]
pub struct ChunkFormatter {
    completion_id: String,
    model: String,
    created: i64,
    usage_chunk: bool,
}

fn event(out: &mut String, id: Option<&str>, data: &Value) {
    if let Some(id) = id {
        out.push_str("id: ");
        out.push_str(id);
        out.push('\n');
    }
    out.push_str("data: ");
    // JSON text never holds a raw line break: one `data:` line.
    out.push_str(&data.to_string());
    out.push_str("\n\n");
}

fn done(out: &mut String) {
    out.push_str(DONE);
}

/// A 200 answer that is an event stream, with the headers that keep proxies from buffering
/// or caching it.
pub fn event_stream() -> actix_web::HttpResponseBuilder {
    let mut response = actix_web::HttpResponse::Ok();
    response
        .insert_header((actix_web::http::header::CONTENT_TYPE, "text/event-stream"))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"));
    response
}

/// The end of a stream whose reply does not exist (or is not the caller's).
pub fn not_found_events() -> String {
    let mut out = String::new();
    let error = json!({"error": {"message": "reply not found", "type": "reply_not_found", "code": "reply_not_found"}});
    event(&mut out, None, &error);
    done(&mut out);
    out
}

impl ChunkFormatter {
    /// A formatter for `reply_id`'s chunks (`id` = `chatcmpl-<reply_id>`).
    pub fn new(reply_id: Uuid) -> Self {
        Self { completion_id: format!("chatcmpl-{reply_id}"), model: String::new(), created: 0, usage_chunk: true }
    }

    /// Whether a completed reply's usage follows its last chunk as a chunk of its own (with
    /// no choices). colloquy's own stream always sends it; the OpenAI-compatible route only
    /// when the request asked (`stream_options.include_usage`), as OpenAI does.
    pub fn with_usage_chunk(mut self, usage_chunk: bool) -> Self {
        self.usage_chunk = usage_chunk;
        self
    }

    /// Takes the model and creation time from a `Started` entry (for a client resuming
    /// after it).
    pub fn learn(&mut self, entry: &StreamEntry) {
        if let StreamEntry::Started { model, created } = entry {
            self.model.clone_from(model);
            self.created = *created;
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        })
    }

    fn usage(&self, usage: &StreamUsage) -> Value {
        json!({
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": {
                "prompt_tokens": usage.input_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.input_tokens + usage.output_tokens,
            },
        })
    }

    /// Appends the events of entry `id` to `out`; true when the reply ended with it
    /// (`[DONE]` written).
    pub fn write(&mut self, id: &str, entry: &StreamEntry, out: &mut String) -> bool {
        match entry {
            StreamEntry::Started { .. } => {
                self.learn(entry);
                event(out, Some(id), &self.chunk(json!({"role": "assistant", "content": ""}), None));
                false
            }
            StreamEntry::Delta { text } => {
                event(out, Some(id), &self.chunk(json!({"content": text}), None));
                false
            }
            StreamEntry::Completed { finish_reason, usage } => {
                event(out, Some(id), &self.chunk(json!({}), Some(finish_reason)));
                if self.usage_chunk {
                    event(out, Some(id), &self.usage(usage));
                }
                done(out);
                true
            }
            StreamEntry::Failed { code, message } => {
                let error = json!({"error": {"message": message, "type": "reply_failed", "code": code}});
                event(out, Some(id), &error);
                done(out);
                true
            }
            StreamEntry::Cancelled { .. } => {
                event(out, Some(id), &self.chunk(json!({}), Some("cancelled")));
                done(out);
                true
            }
        }
    }
}

/// Where the relay stands with the reply's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The stream exists and is the caller's, in the requested conversation.
    Verified,
    /// No stream yet; the conversation is the caller's. The stream's target is checked
    /// when its first entry shows up.
    Pending,
}

/// One client's relay of one reply.
pub struct SseRelay {
    streams: ReplyStreams,
    sub: Subscription,
    reply_id: Uuid,
    conversation_id: Uuid,
    owner: Uuid,
    target: Target,
    last: Option<(EntryId, String)>,
    formatter: ChunkFormatter,
    knows_start: bool,
    started: bool,
    catch_up: bool,
    wait_until: Instant,
    keepalive: Duration,
    next_keepalive: Instant,
    finished: bool,
    cancel_on_disconnect: Option<CancelOnDrop>,
    _active: Active,
}

/// Asks for a reply to be cancelled when dropped while armed: a client that goes away
/// before its reply ended stops the generation (the OpenAI-compatible route's behaviour,
/// as with OpenAI's API), wherever the worker runs.
pub struct CancelOnDrop {
    streams: ReplyStreams,
    reply_id: Uuid,
    armed: bool,
}

impl CancelOnDrop {
    /// Armed for `reply_id`.
    pub fn new(streams: ReplyStreams, reply_id: Uuid) -> Self {
        Self { streams, reply_id, armed: true }
    }

    /// The reply ended: nothing to cancel any more.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (streams, reply_id) = (self.streams.clone(), self.reply_id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = streams.request_cancel(reply_id).await {
                    tracing::warn!(error = %e, %reply_id, "Could not cancel the reply of a client that went away.");
                } else {
                    tracing::info!(%reply_id, "Client went away before its reply ended; reply cancelled.");
                }
            });
        }
    }
}

/// What a relay is asked to relay.
pub struct RelayRequest {
    /// The reply.
    pub reply_id: Uuid,
    /// Its conversation (from the path).
    pub conversation_id: Uuid,
    /// The caller.
    pub owner: Uuid,
    /// What the route found out about the stream.
    pub target: Target,
    /// `Last-Event-ID`: resume after this entry.
    pub after: Option<EntryId>,
    /// Whether the usage chunk is sent (see [`ChunkFormatter::with_usage_chunk`]).
    pub usage_chunk: bool,
    /// Cancel the reply if the client goes away before it ended.
    pub cancel_on_disconnect: bool,
}

impl SseRelay {
    /// A relay for `request`, whose hub subscription `sub` was taken before anything was
    /// read; `active` counts it in the SSE gauge.
    pub fn new(streams: ReplyStreams, sub: Subscription, request: RelayRequest, active: Active) -> Self {
        let settings = streams.settings();
        let keepalive = Duration::from_secs(settings.sse_keepalive_secs.max(1));
        let now = Instant::now();
        let cancel_on_disconnect =
            request.cancel_on_disconnect.then(|| CancelOnDrop::new(streams.clone(), request.reply_id));
        Self {
            wait_until: now + Duration::from_secs(settings.wait_for_start_secs),
            streams,
            sub,
            reply_id: request.reply_id,
            conversation_id: request.conversation_id,
            owner: request.owner,
            target: request.target,
            last: request.after.map(|id| (id, id.to_string())),
            formatter: ChunkFormatter::new(request.reply_id).with_usage_chunk(request.usage_chunk),
            cancel_on_disconnect,
            knows_start: request.after.is_none(),
            started: false,
            catch_up: true,
            keepalive,
            next_keepalive: now + keepalive,
            finished: false,
            _active: active,
        }
    }

    /// The response body: chunks of events, keepalive comments while idle.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> {
        futures::stream::unfold(self, |mut relay| async move { relay.next_chunk().await.map(|b| (Ok(b), relay)) })
    }

    fn end_not_found(&mut self) -> Option<Bytes> {
        self.finished = true;
        Some(Bytes::from(not_found_events()))
    }

    /// Formats the entries newer than the last one sent; `None` when there are none.
    fn emit(&mut self, entries: &[(String, StreamEntry)]) -> Option<Bytes> {
        let mut out = String::new();
        for (raw, entry) in entries {
            let Some(id) = EntryId::parse(raw) else { continue };
            if self.last.as_ref().is_some_and(|(last, _)| id <= *last) {
                continue;
            }
            self.last = Some((id, raw.clone()));
            if self.formatter.write(raw, entry, &mut out) {
                self.finished = true;
                if let Some(guard) = self.cancel_on_disconnect.as_mut() {
                    guard.disarm();
                }
                break;
            }
        }
        if out.is_empty() {
            return None;
        }
        self.next_keepalive = Instant::now() + self.keepalive;
        Some(Bytes::from(out))
    }

    /// Reads what the client has not had yet from Redis. `Err` ends the stream (without
    /// `[DONE]`, so the client reconnects with its `Last-Event-ID`).
    async fn read_missed(&mut self) -> Result<Option<Bytes>, redis::RedisError> {
        let after = self.last.as_ref().map(|(_, raw)| raw.clone());
        let entries = self.streams.read_after(self.reply_id, after.as_deref()).await?;
        if !self.started {
            let exists =
                !entries.is_empty() || (self.last.is_some() && self.streams.last(self.reply_id).await?.is_some());
            if !exists {
                return Ok(None);
            }
            if self.target == Target::Pending {
                match self.streams.target(self.reply_id).await? {
                    Some(t) if t.conversation_id == self.conversation_id && t.owner_id == self.owner => {
                        self.target = Target::Verified
                    }
                    _ => return Ok(self.end_not_found()),
                }
            }
            self.started = true;
        }
        if !self.knows_start {
            // A resumed client: the model and time come from the reply's start, and a
            // client that had everything but `[DONE]` gets just that.
            self.knows_start = true;
            if let Some((_, first)) = self.streams.first(self.reply_id).await? {
                self.formatter.learn(&first);
            }
            if entries.is_empty() {
                let ended = self.streams.last(self.reply_id).await?.is_some_and(|(id, entry)| {
                    entry.is_terminal()
                        && EntryId::parse(&id).zip(self.last.as_ref()).is_some_and(|(id, (l, _))| id <= *l)
                });
                if ended {
                    self.finished = true;
                    return Ok(Some(Bytes::from_static(DONE.as_bytes())));
                }
            }
        }
        Ok(self.emit(&entries))
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.finished {
                return None;
            }
            if self.catch_up {
                self.catch_up = false;
                match self.read_missed().await {
                    Ok(Some(bytes)) => return Some(bytes),
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, reply_id = %self.reply_id, "Reply stream unreadable; ending the SSE stream.");
                        self.finished = true;
                        return None;
                    }
                }
            }
            let wake = match self.started {
                true => self.next_keepalive,
                false => self.next_keepalive.min(self.wait_until),
            };
            tokio::select! {
                event = self.sub.recv() => match event {
                    Ok(HubEvent::Entry(m)) if m.reply_id == self.reply_id => {
                        if m.conversation_id != self.conversation_id {
                            return self.end_not_found();
                        }
                        if !self.started || !self.knows_start {
                            self.catch_up = true;
                        } else if let Some(bytes) = self.emit(&[(m.id.clone(), m.entry.clone())]) {
                            return Some(bytes);
                        }
                    }
                    Ok(HubEvent::Entry(_)) => {}
                    Ok(HubEvent::Resync) | Err(RecvError::Lagged(_)) => self.catch_up = true,
                    Err(RecvError::Closed) => {
                        self.finished = true;
                        return None;
                    }
                },
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if !self.started && now >= self.wait_until {
                        // One last look before giving up.
                        match self.read_missed().await {
                            Ok(Some(bytes)) => return Some(bytes),
                            Ok(None) if self.started => {}
                            Ok(None) => return self.end_not_found(),
                            Err(_) => return self.end_not_found(),
                        }
                    }
                    if !self.started {
                        // Also catches a start the hub missed.
                        self.catch_up = true;
                    }
                    if now >= self.next_keepalive {
                        self.next_keepalive = now + self.keepalive;
                        return Some(Bytes::from_static(PING));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_lines(out: &str) -> Vec<Value> {
        out.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| if d == "[DONE]" { Value::String("[DONE]".into()) } else { serde_json::from_str(d).unwrap() })
            .collect()
    }

    #[test]
    fn a_reply_becomes_openai_chunks_ending_with_done() {
        let reply = Uuid::new_v4();
        let mut f = ChunkFormatter::new(reply);
        let mut out = String::new();
        assert!(!f.write("1-0", &StreamEntry::Started { model: "m1".into(), created: 1_700_000_000 }, &mut out));
        assert!(!f.write("1-1", &StreamEntry::Delta { text: "Hel\nlo".into() }, &mut out));
        let end = StreamEntry::Completed {
            finish_reason: "stop".into(),
            usage: StreamUsage { input_tokens: 7, output_tokens: 2 },
        };
        assert!(f.write("1-2", &end, &mut out));
        let ids: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("id: ")).collect();
        assert_eq!(ids, ["1-0", "1-1", "1-2", "1-2"]);
        let data = data_lines(&out);
        let id = format!("chatcmpl-{reply}");
        assert_eq!(
            data[0],
            json!({"id": id, "object": "chat.completion.chunk", "created": 1_700_000_000, "model": "m1",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]})
        );
        assert_eq!(data[1]["choices"][0]["delta"], json!({"content": "Hel\nlo"}));
        assert_eq!(data[1]["model"], "m1");
        assert_eq!(data[2]["choices"][0], json!({"index": 0, "delta": {}, "finish_reason": "stop"}));
        assert_eq!(data[3]["choices"], json!([]));
        assert_eq!(data[3]["usage"], json!({"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}));
        assert_eq!(data[4], "[DONE]");
        assert_eq!(data.len(), 5);
        assert!(out.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn failures_and_cancellations_end_the_stream() {
        let mut f = ChunkFormatter::new(Uuid::new_v4());
        let mut out = String::new();
        let failed = StreamEntry::Failed { code: "provider_error".into(), message: "upstream closed".into() };
        assert!(f.write("2-0", &failed, &mut out));
        assert_eq!(
            data_lines(&out),
            vec![
                json!({"error": {"message": "upstream closed", "type": "reply_failed", "code": "provider_error"}}),
                json!("[DONE]")
            ]
        );
        let mut out = String::new();
        assert!(f.write("2-1", &StreamEntry::Cancelled { usage: StreamUsage::default() }, &mut out));
        let data = data_lines(&out);
        assert_eq!(data[0]["choices"][0]["finish_reason"], "cancelled");
        assert_eq!(data[1], "[DONE]");
        assert_eq!(data_lines(&not_found_events())[0]["error"]["code"], "reply_not_found");
    }
}
