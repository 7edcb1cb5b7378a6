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
use colloquy_infra::reply_streams::{ReplyMessage, ReplyStreams, StreamEntry};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio::time::Instant;
use uuid::Uuid;

use super::hub::{HubEvent, Subscription};
use super::Active;

/// Unfinished replies a session remembers, to catch up on them after a hub reconnection.
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

struct Relay {
    queue: mpsc::Sender<Out>,
    streams: ReplyStreams,
    /// Unfinished replies seen: conversation and last entry id sent.
    replies: HashMap<Uuid, (Uuid, String)>,
}

impl Relay {
    /// Queues `out`; false when the queue is full (the client is too slow) or gone.
    fn send(&self, out: Out) -> bool {
        self.queue.try_send(out).is_ok()
    }

    fn entry(&mut self, reply_id: Uuid, conversation_id: Uuid, id: &str, entry: &StreamEntry) -> bool {
        if entry.is_terminal() {
            self.replies.remove(&reply_id);
        } else if self.replies.len() < TRACKED_REPLIES || self.replies.contains_key(&reply_id) {
            self.replies.insert(reply_id, (conversation_id, id.to_string()));
        }
        match message_text(reply_id, conversation_id, id, entry) {
            Some(text) => self.send(Out::Text(text.into())),
            None => true,
        }
    }

    fn message(&mut self, m: &ReplyMessage) -> bool {
        self.entry(m.reply_id, m.conversation_id, &m.id, &m.entry)
    }

    /// After the hub lost its subscription: what the unfinished replies got meanwhile.
    async fn resync(&mut self) -> bool {
        let replies: Vec<(Uuid, (Uuid, String))> = self.replies.iter().map(|(r, v)| (*r, v.clone())).collect();
        for (reply_id, (conversation_id, last)) in replies {
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
    use colloquy_infra::reply_streams::StreamUsage;
    use serde_json::json;

    use super::*;

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
