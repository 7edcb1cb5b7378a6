//! One WebSocket session: every entry of every reply in the user's conversations, as JSON
//! text messages (`{"type": "reply.delta", "conversation_id", "reply_id", "id", "text"}`
//! and likewise `reply.started`, `reply.completed`, `reply.failed`, `reply.cancelled` with
//! their entry's fields).
//!
//! The server pings every `ws_ping_secs` and closes a client it has not heard from (no pong,
//! nothing) for `ws_timeout_secs`. What is sent waits in a queue of `ws_buffer` messages; a
//! client that lets it fill up is closed (code 1013, "try again later") and counted, so a
//! slow client never makes the server hold more. A client's `{"type": "ping"}` is answered
//! with `{"type": "pong"}`; anything else it sends is ignored.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::web::Bytes;
use actix_ws::{CloseCode, CloseReason, Message, MessageStream, Session};
use bytestring::ByteString;
use colloquy_infra::metrics::Metrics;
use colloquy_infra::reply_streams::{EntryId, ReplyMessage, ReplyStreams, StreamEntry};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::hub::{HubEvent, Subscription};
use super::Active;

/// Replies a session remembers, to catch up on them after a hub reconnection and never send
/// an entry twice.
const TRACKED_REPLIES: usize = 1000;

/// How long a closing handshake may take before the connection is just dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The JSON text message for one entry of one reply.
pub fn message_text(reply_id: Uuid, conversation_id: Uuid, id: &str, entry: &StreamEntry) -> Option<String> {
    let Ok(Value::Object(mut fields)) = serde_json::to_value(entry) else { return None };
    let kind = fields.get("type").and_then(Value::as_str).map(|t| format!("reply.{t}"))?;
    fields.insert("type".into(), Value::String(kind));
    fields.insert("conversation_id".into(), Value::String(conversation_id.to_string()));
    fields.insert("reply_id".into(), Value::String(reply_id.to_string()));
    fields.insert("id".into(), Value::String(id.to_string()));
    Some(Value::Object(fields).to_string())
}

enum Out {
    Text(ByteString),
    Ping,
    Pong(Bytes),
}

/// Why a session ended.
enum End {
    /// The client closed, or its connection went.
    Gone,
    /// The server closes it with this reason.
    Close(CloseReason),
    /// The client fell `ws_buffer` messages behind.
    Slow,
}

/// Writes queued messages to the client, one at a time, at the client's pace.
async fn write(mut session: Session, mut queue: mpsc::Receiver<Out>) -> Option<Session> {
    while let Some(out) = queue.recv().await {
        let sent = match out {
            Out::Text(text) => session.text(text).await,
            Out::Ping => session.ping(b"").await,
            Out::Pong(payload) => session.pong(&payload).await,
        };
        if sent.is_err() {
            return None;
        }
    }
    Some(session)
}

/// What a session sent of one reply.
struct Seen {
    conversation_id: Uuid,
    last: EntryId,
    finished: bool,
}

struct Relay {
    queue: mpsc::Sender<Out>,
    streams: ReplyStreams,
    /// Replies seen (at most [`TRACKED_REPLIES`]): after a hub reconnection the unfinished
    /// ones are caught up on, and nothing is sent twice.
    replies: HashMap<Uuid, Seen>,
}

impl Relay {
    /// Queues `out`; false when the queue is full (the client is too slow) or gone.
    fn send(&self, out: Out) -> bool {
        self.queue.try_send(out).is_ok()
    }

    /// Sends one entry unless it was sent already; false when the client cannot keep up.
    fn entry(&mut self, reply_id: Uuid, conversation_id: Uuid, raw: &str, entry: &StreamEntry) -> bool {
        let Some(id) = EntryId::parse(raw) else { return true };
        match self.replies.get_mut(&reply_id) {
            Some(seen) if id <= seen.last => return true,
            Some(seen) => {
                seen.last = id;
                seen.finished = entry.is_terminal();
            }
            None => {
                if self.replies.len() >= TRACKED_REPLIES {
                    self.replies.retain(|_, seen| !seen.finished);
                }
                if self.replies.len() < TRACKED_REPLIES {
                    let seen = Seen { conversation_id, last: id, finished: entry.is_terminal() };
                    self.replies.insert(reply_id, seen);
                }
            }
        }
        match message_text(reply_id, conversation_id, raw, entry) {
            Some(text) => self.send(Out::Text(text.into())),
            None => true,
        }
    }

    fn message(&mut self, m: &ReplyMessage) -> bool {
        self.entry(m.reply_id, m.conversation_id, &m.id, &m.entry)
    }

    /// After the hub lost its subscription: what the unfinished replies got meanwhile.
    async fn resync(&mut self) -> bool {
        let unfinished: Vec<(Uuid, Uuid, String)> = self
            .replies
            .iter()
            .filter(|(_, seen)| !seen.finished)
            .map(|(reply_id, seen)| (*reply_id, seen.conversation_id, seen.last.to_string()))
            .collect();
        for (reply_id, conversation_id, last) in unfinished {
            match self.streams.read_after(reply_id, Some(&last)).await {
                Ok(entries) => {
                    for (id, entry) in entries {
                        if !self.entry(reply_id, conversation_id, &id, &entry) {
                            return false;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, %reply_id, "Could not catch up on a reply stream."),
            }
        }
        true
    }
}

async fn serve(
    relay: &mut Relay,
    messages: &mut MessageStream,
    sub: &mut Subscription,
    ping: Duration,
    timeout: Duration,
) -> End {
    let mut heard = Instant::now();
    let mut pings = tokio::time::interval_at(Instant::now() + ping, ping);
    loop {
        tokio::select! {
            event = sub.recv() => {
                let kept_up = match event {
                    Ok(HubEvent::Entry(m)) => relay.message(&m),
                    Ok(HubEvent::Resync) => relay.resync().await,
                    Err(RecvError::Lagged(_)) => false,
                    Err(RecvError::Closed) => return End::Close(CloseReason::from(CloseCode::Restart)),
                };
                if !kept_up {
                    return End::Slow;
                }
            }
            incoming = messages.next() => {
                heard = Instant::now();
                match incoming {
                    Some(Ok(Message::Ping(payload))) => {
                        if !relay.send(Out::Pong(payload)) {
                            return End::Slow;
                        }
                    }
                    Some(Ok(Message::Text(text))) => {
                        let asked = serde_json::from_str::<Value>(&text).ok();
                        if asked.as_ref().and_then(|v| v.get("type")).and_then(Value::as_str) == Some("ping")
                            && !relay.send(Out::Text(ByteString::from_static(r#"{"type":"pong"}"#)))
                        {
                            return End::Slow;
                        }
                    }
                    Some(Ok(Message::Close(_))) => return End::Close(CloseReason::from(CloseCode::Normal)),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return End::Gone,
                }
            }
            _ = pings.tick() => {
                if heard.elapsed() >= timeout {
                    return End::Close(CloseReason {
                        code: CloseCode::Policy,
                        description: Some("no pong received in time".into()),
                    });
                }
                if !relay.send(Out::Ping) {
                    return End::Slow;
                }
            }
        }
    }
}

/// Runs a session until the client leaves, times out or falls behind. Spawn it on the
/// request's runtime (`actix_web::rt::spawn`).
pub async fn run(
    session: Session,
    mut messages: MessageStream,
    mut sub: Subscription,
    streams: ReplyStreams,
    metrics: Metrics,
) {
    let _active = Active::new(&metrics.ws_sessions_active);
    let settings = streams.settings().clone();
    let (queue, pending) = mpsc::channel(settings.ws_buffer.max(1));
    let mut writer = actix_web::rt::spawn(write(session, pending));
    let mut state = Relay { queue, streams, replies: HashMap::new() };
    let ping = Duration::from_secs(settings.ws_ping_secs.max(1));
    let timeout = Duration::from_secs(settings.ws_timeout_secs.max(1));
    let end = serve(&mut state, &mut messages, &mut sub, ping, timeout).await;
    // Nothing more is queued: the writer sends what is queued, then hands the session back.
    drop(state);
    drop(sub);
    match end {
        End::Slow => {
            metrics.ws_slow_clients_dropped.inc();
            tracing::info!("WebSocket client too slow; closing it.");
            // Its queue is full and it does not read: drop the connection, no handshake.
            writer.abort();
        }
        End::Gone => writer.abort(),
        End::Close(reason) => match tokio::time::timeout(CLOSE_GRACE, &mut writer).await {
            Ok(Ok(Some(session))) => {
                let _ = tokio::time::timeout(CLOSE_GRACE, session.close(Some(reason))).await;
            }
            Ok(_) => {}
            Err(_) => writer.abort(),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use colloquy_infra::redis_store::RedisStore;
    use colloquy_infra::reply_streams::{ReplyTarget, StreamUsage};
    use colloquy_infra::settings::{RedisSettings, StreamSettings};
    use serde_json::json;

    use super::*;

    fn queued_ids(pending: &mut mpsc::Receiver<Out>) -> Vec<String> {
        let mut ids = Vec::new();
        while let Ok(out) = pending.try_recv() {
            if let Out::Text(text) = out {
                ids.push(serde_json::from_str::<Value>(&text).unwrap()["id"].as_str().unwrap().to_string());
            }
        }
        ids
    }

    #[tokio::test]
    async fn a_session_sends_each_entry_once_and_catches_up_after_a_resync() {
        let prefix = format!("colloquy_test_{}:", &Uuid::new_v4().simple().to_string()[..12]);
        let redis = RedisStore::connect(&RedisSettings { key_prefix: prefix, ..Default::default() }).await.unwrap();
        let streams = ReplyStreams::new(&redis, &StreamSettings::default());
        let target =
            ReplyTarget { reply_id: Uuid::new_v4(), conversation_id: Uuid::new_v4(), owner_id: Uuid::new_v4() };
        let mut appended = Vec::new();
        for text in ["a", "b", "c"] {
            let entry = StreamEntry::Delta { text: text.into() };
            appended.push((streams.append(&target, &entry).await.unwrap(), entry));
        }
        let (queue, mut pending) = mpsc::channel(16);
        let mut relay = Relay { queue, streams: streams.clone(), replies: HashMap::new() };
        let send = |relay: &mut Relay, i: usize| {
            let (id, entry): &(String, StreamEntry) = &appended[i];
            relay.entry(target.reply_id, target.conversation_id, id, entry)
        };
        assert!(send(&mut relay, 0));
        assert!(send(&mut relay, 0), "a repeat is skipped, not a failure");
        assert_eq!(queued_ids(&mut pending), [appended[0].0.clone()]);
        // The hub reconnected: "b" and "c" were missed live.
        assert!(relay.resync().await);
        assert_eq!(queued_ids(&mut pending), [appended[1].0.clone(), appended[2].0.clone()]);
        // ... and "c" then arrives live too: not sent again.
        assert!(send(&mut relay, 2));
        assert!(queued_ids(&mut pending).is_empty());
        redis.delete_prefixed("").await.unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_means_the_client_is_too_slow() {
        let redis = RedisStore::connect(&RedisSettings::default()).await.unwrap();
        let (queue, _pending) = mpsc::channel(1);
        let mut relay =
            Relay { queue, streams: ReplyStreams::new(&redis, &StreamSettings::default()), replies: HashMap::new() };
        let (reply, conversation) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(relay.entry(reply, conversation, "1-0", &StreamEntry::Delta { text: "a".into() }));
        assert!(!relay.entry(reply, conversation, "1-1", &StreamEntry::Delta { text: "b".into() }));
    }

    #[test]
    fn entries_become_typed_messages_naming_their_reply() {
        let (reply, conversation) = (Uuid::new_v4(), Uuid::new_v4());
        let text = message_text(reply, conversation, "5-1", &StreamEntry::Delta { text: "hi".into() }).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"type": "reply.delta", "conversation_id": conversation, "reply_id": reply, "id": "5-1", "text": "hi"})
        );
        let done = StreamEntry::Completed {
            finish_reason: "stop".into(),
            usage: StreamUsage { input_tokens: 1, output_tokens: 2 },
        };
        let text: Value = serde_json::from_str(&message_text(reply, conversation, "6-0", &done).unwrap()).unwrap();
        assert_eq!(text["type"], "reply.completed");
        assert_eq!(text["usage"]["output_tokens"], 2);
        let started = StreamEntry::Started { model: "m".into(), created: 3 };
        let text: Value = serde_json::from_str(&message_text(reply, conversation, "1-0", &started).unwrap()).unwrap();
        assert_eq!((text["type"].as_str(), text["model"].as_str()), (Some("reply.started"), Some("m")));
    }
}
