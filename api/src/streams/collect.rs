//! One reply read to its end, for a client that wants the whole answer at once (a
//! non-streaming chat completion). Like the SSE relay it is subscribed to the hub before it
//! reads, reads the reply's Redis stream after the last entry it saw whenever the hub says
//! something happened (and every few seconds regardless, in case a notification was lost),
//! and so never misses or repeats an entry.

use std::time::Duration;

use colloquy_infra::reply_streams::{ReplyStreams, StreamEntry};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use uuid::Uuid;

use super::hub::{HubEvent, Subscription};

/// How often the stream is read without a notification.
const RESYNC_EVERY: Duration = Duration::from_secs(5);

/// A reply that ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Collected {
    /// The model that answered.
    pub model: String,
    /// When it started (seconds since the epoch).
    pub created: i64,
    /// The whole text (a failed or cancelled reply's partial text).
    pub content: String,
    /// The ending: `Completed`, `Failed` or `Cancelled`.
    pub end: StreamEntry,
}

/// Why no ending was read.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The reply did not start within the wait for a start.
    #[error("the reply did not start in time")]
    NotStarted,
    /// The reply did not end within the wait for an end.
    #[error("the reply did not end in time")]
    TimedOut,
    /// Redis failed.
    #[error("reply stream unreadable")]
    Redis(#[from] redis::RedisError),
}

/// Reads `reply_id` until it ends; `sub` is its hub subscription, taken before the reply
/// could have started. Waits `wait_for_start` for the first entry and `timeout` in all.
pub async fn collect(
    streams: &ReplyStreams,
    mut sub: Subscription,
    reply_id: Uuid,
    wait_for_start: Duration,
    timeout: Duration,
) -> Result<Collected, CollectError> {
    let now = Instant::now();
    let (start_by, end_by) = (now + wait_for_start, now + timeout);
    let mut last: Option<String> = None;
    let mut reply = Collected {
        model: String::new(),
        created: 0,
        content: String::new(),
        end: StreamEntry::Delta { text: String::new() },
    };
    loop {
        for (id, entry) in streams.read_after(reply_id, last.as_deref()).await? {
            last = Some(id);
            match entry {
                StreamEntry::Started { model, created } => (reply.model, reply.created) = (model, created),
                StreamEntry::Delta { text } => reply.content.push_str(&text),
                end => {
                    reply.end = end;
                    return Ok(reply);
                }
            }
        }
        // Checked after a read, so the ending that arrived with the deadline still counts.
        let give_up = if last.is_some() { end_by } else { start_by.min(end_by) };
        if Instant::now() >= give_up {
            return Err(if last.is_some() { CollectError::TimedOut } else { CollectError::NotStarted });
        }
        let wake = give_up.min(Instant::now() + RESYNC_EVERY);
        tokio::select! {
            event = sub.recv() => match event {
                Ok(HubEvent::Entry(_) | HubEvent::Resync) | Err(RecvError::Lagged(_)) => {}
                // The hub is gone (the API is stopping): read again at the next wake.
                Err(RecvError::Closed) => tokio::time::sleep_until(wake).await,
            },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}
