//! Reply streams: the progress of each assistant reply (started, text deltas, how it ended)
//! in a Redis stream of its own, which any API instance relays to clients, and the cancel
//! signal a worker listens for.
//!
//! Token deltas are not events: they live here only, bounded (`MAXLEN ~ max_len`) and
//! expiring (`ttl_after_finish_secs` after the reply ended, `idle_ttl_secs` after the last
//! entry of a reply whose worker died). Every append is also published, as a
//! [`ReplyMessage`], on the owner's channel (`<prefix>user:<owner>:replies`), so an API
//! instance needs one pub/sub connection for all of its clients.
//!
//! Keys, with `<id>` the reply id in a hash tag so that a reply's keys share a cluster slot
//! (the append script touches two of them): `<prefix>reply:{<id>}` (the stream; each entry
//! one field `e`, the [`StreamEntry`] as JSON), `<prefix>reply:{<id>}:target` (a hash: the
//! conversation and owner), `<prefix>reply:{<id>}:cancel` (the cancel flag). Cancel requests
//! are published on `<prefix>replies:cancel`.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::LazyLock;

use futures::{Stream, StreamExt};
use redis::aio::ConnectionManager;
use redis::{ErrorKind, RedisError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::redis_store::RedisStore;
use crate::settings::StreamSettings;

/// Seconds a cancel flag is kept: longer than any reply runs.
const CANCEL_FLAG_TTL_SECS: u64 = 3600;

/// Entries read per `XRANGE` call.
const PAGE: usize = 1000;

/// The field of a stream entry that holds the [`StreamEntry`].
const FIELD: &str = "e";

/// One round trip per append: add the entry (trimming the stream), remember the target on
/// the first entry, refresh the expiry (short once the reply ended), publish to the owner.
static APPEND: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r#"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'e', ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'conversation_id', ARGV[3], 'owner_id', ARGV[4])
end
local ttl = ARGV[8]
if ARGV[6] == '1' then ttl = ARGV[7] end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('PUBLISH', ARGV[5],
  '{"reply_id":"' .. ARGV[9] .. '","conversation_id":"' .. ARGV[3] .. '","id":"' .. id .. '","entry":' .. ARGV[2] .. '}')
return id
"#,
    )
});

/// Reads and writes reply streams, their targets and cancel flags. Cheap to clone.
#[derive(Clone)]
pub struct ReplyStreams {
    conn: ConnectionManager,
    client: redis::Client,
    prefix: String,
    settings: StreamSettings,
}

/// Whose a reply stream is: stored with its first entry, checked before it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyTarget {
    /// The reply.
    pub reply_id: Uuid,
    /// The conversation it answers in.
    pub conversation_id: Uuid,
    /// The conversation's owner, the only user who may read the stream.
    pub owner_id: Uuid,
}

/// Tokens a reply consumed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamUsage {
    /// Prompt tokens.
    pub input_tokens: u32,
    /// Generated tokens.
    pub output_tokens: u32,
}

/// One step of a reply's progress.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEntry {
    /// The model began answering.
    Started {
        /// The model that answers.
        model: String,
        /// When (seconds since the epoch).
        created: i64,
    },
    /// More text.
    Delta {
        /// The text, appended to what came before.
        text: String,
    },
    /// The reply is complete.
    Completed {
        /// Why the model stopped (`stop`, `length`, ...).
        finish_reason: String,
        /// What it cost.
        usage: StreamUsage,
    },
    /// The reply failed; the text so far is all there is.
    Failed {
        /// A stable code.
        code: String,
        /// For people.
        message: String,
    },
    /// The reply was cancelled; the text so far is all there is.
    Cancelled {
        /// What it cost so far.
        usage: StreamUsage,
    },
}

impl StreamEntry {
    /// Whether the reply ends with this entry (nothing follows it).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Completed { .. } | Self::Failed { .. } | Self::Cancelled { .. })
    }
}

/// What is published on the owner's channel for every appended entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ReplyMessage {
    /// The reply.
    pub reply_id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// The entry's id in the reply's stream.
    pub id: String,
    /// The entry.
    pub entry: StreamEntry,
}

/// A stream entry id (`<milliseconds>-<sequence>`), ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl EntryId {
    /// Parses `<ms>-<seq>`; `None` for anything else.
    pub fn parse(id: &str) -> Option<Self> {
        let (ms, seq) = id.split_once('-')?;
        Some(Self { ms: ms.parse().ok()?, seq: seq.parse().ok()? })
    }
}

impl PartialOrd for EntryId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EntryId {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ms, self.seq).cmp(&(other.ms, other.seq))
    }
}

impl std::fmt::Display for EntryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

fn invalid(what: &'static str, detail: String) -> RedisError {
    RedisError::from((ErrorKind::TypeError, what, detail))
}

/// Escapes the glob characters of a literal for a `PSUBSCRIBE` pattern.
fn glob_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

type Entries = Vec<(String, Vec<String>)>;

fn decode(raw: Entries) -> Result<Vec<(String, StreamEntry)>, RedisError> {
    raw.into_iter()
        .map(|(id, fields)| {
            let json = fields
                .chunks(2)
                .find(|pair| pair.first().map(String::as_str) == Some(FIELD))
                .and_then(|pair| pair.get(1))
                .ok_or_else(|| invalid("reply stream entry without its field", id.clone()))?;
            let entry = serde_json::from_str(json)
                .map_err(|e| invalid("unreadable reply stream entry", format!("{id}: {e}")))?;
            Ok((id, entry))
        })
        .collect()
}

impl ReplyStreams {
    /// Reply streams on `redis`'s server, under its key prefix.
    pub fn new(redis: &RedisStore, settings: &StreamSettings) -> Self {
        Self {
            conn: redis.conn.clone(),
            client: redis.client().clone(),
            prefix: redis.prefix().to_string(),
            settings: settings.clone(),
        }
    }

    /// The settings these streams were made with.
    pub fn settings(&self) -> &StreamSettings {
        &self.settings
    }

    fn stream_key(&self, reply_id: Uuid) -> String {
        format!("{}reply:{{{reply_id}}}", self.prefix)
    }

    fn target_key(&self, reply_id: Uuid) -> String {
        format!("{}reply:{{{reply_id}}}:target", self.prefix)
    }

    fn cancel_key(&self, reply_id: Uuid) -> String {
        format!("{}reply:{{{reply_id}}}:cancel", self.prefix)
    }

    fn cancel_channel(&self) -> String {
        format!("{}replies:cancel", self.prefix)
    }

    /// The channel every entry of `owner`'s replies is published on.
    pub fn user_channel(&self, owner: Uuid) -> String {
        format!("{}user:{owner}:replies", self.prefix)
    }

    /// The `PSUBSCRIBE` pattern matching every user's channel (and nothing else).
    pub fn user_channel_pattern(&self) -> String {
        format!("{}user:*:replies", glob_literal(&self.prefix))
    }

    /// The user a channel of [`Self::user_channel_pattern`] belongs to.
    pub fn user_of_channel(&self, channel: &str) -> Option<Uuid> {
        channel.strip_prefix(&self.prefix)?.strip_prefix("user:")?.strip_suffix(":replies")?.parse().ok()
    }

    /// Appends `entry` to the reply's stream and publishes it to the owner's channel, in one
    /// round trip; the first append stores `target`. Returns the entry's id.
    pub async fn append(&self, target: &ReplyTarget, entry: &StreamEntry) -> Result<String, RedisError> {
        let json = serde_json::to_string(entry).map_err(|e| invalid("unserialisable entry", e.to_string()))?;
        let mut conn = self.conn.clone();
        APPEND
            .key(self.stream_key(target.reply_id))
            .key(self.target_key(target.reply_id))
            .arg(self.settings.max_len.max(1))
            .arg(json)
            .arg(target.conversation_id.to_string())
            .arg(target.owner_id.to_string())
            .arg(self.user_channel(target.owner_id))
            .arg(if entry.is_terminal() { "1" } else { "0" })
            .arg(self.settings.ttl_after_finish_secs.max(1))
            .arg(self.settings.idle_ttl_secs.max(1))
            .arg(target.reply_id.to_string())
            .invoke_async(&mut conn)
            .await
    }

    /// The reply's entries after the entry `after` (exclusive), or from the start, in order.
    pub async fn read_after(
        &self,
        reply_id: Uuid,
        after: Option<&str>,
    ) -> Result<Vec<(String, StreamEntry)>, RedisError> {
        let key = self.stream_key(reply_id);
        let mut conn = self.conn.clone();
        let mut start = match after {
            Some(id) => format!("({id}"),
            None => "-".to_string(),
        };
        let mut out = Vec::new();
        loop {
            let raw: Entries = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut conn)
                .await?;
            let full = raw.len() == PAGE;
            out.extend(decode(raw)?);
            match out.last() {
                Some((last, _)) if full => start = format!("({last}"),
                _ => return Ok(out),
            }
        }
    }

    /// The reply's first entry still kept (normally its `Started`).
    pub async fn first(&self, reply_id: Uuid) -> Result<Option<(String, StreamEntry)>, RedisError> {
        let mut conn = self.conn.clone();
        let raw: Entries = redis::cmd("XRANGE")
            .arg(self.stream_key(reply_id))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(decode(raw)?.into_iter().next())
    }

    /// The reply's latest entry (terminal once the reply ended).
    pub async fn last(&self, reply_id: Uuid) -> Result<Option<(String, StreamEntry)>, RedisError> {
        let mut conn = self.conn.clone();
        let raw: Entries = redis::cmd("XREVRANGE")
            .arg(self.stream_key(reply_id))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut conn)
            .await?;
        Ok(decode(raw)?.into_iter().next())
    }

    /// Whose the reply's stream is; `None` before its first entry or after it expired.
    pub async fn target(&self, reply_id: Uuid) -> Result<Option<ReplyTarget>, RedisError> {
        let mut conn = self.conn.clone();
        let fields: HashMap<String, String> =
            redis::cmd("HGETALL").arg(self.target_key(reply_id)).query_async(&mut conn).await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let uuid = |name: &'static str| {
            fields
                .get(name)
                .and_then(|v| v.parse::<Uuid>().ok())
                .ok_or_else(|| invalid("unreadable reply target", format!("{reply_id}: {name}")))
        };
        Ok(Some(ReplyTarget { reply_id, conversation_id: uuid("conversation_id")?, owner_id: uuid("owner_id")? }))
    }

    /// Every user's published entries, `(owner, message)`, on a pub/sub connection of its
    /// own (one `PSUBSCRIBE`), from the moment this returns. Unreadable messages are skipped.
    /// The stream ends when the connection is lost: entries published meanwhile are not
    /// delivered, so a caller that reconnects must read what it missed from the streams.
    pub async fn user_messages(&self) -> Result<impl Stream<Item = (Uuid, ReplyMessage)> + Send + 'static, RedisError> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.psubscribe(self.user_channel_pattern()).await?;
        let this = self.clone();
        Ok(pubsub.into_on_message().filter_map(move |msg| {
            let owner = this.user_of_channel(msg.get_channel_name());
            let message = msg.get_payload::<String>().ok().and_then(|p| serde_json::from_str::<ReplyMessage>(&p).ok());
            if owner.is_none() || message.is_none() {
                tracing::warn!(channel = msg.get_channel_name(), "Unreadable reply message skipped.");
            }
            async move { owner.zip(message) }
        }))
    }

    /// Asks whoever generates the reply to stop: sets its cancel flag (kept an hour, so a
    /// worker that starts the reply later still sees it) and publishes the reply id on the
    /// cancel channel, atomically.
    pub async fn request_cancel(&self, reply_id: Uuid) -> Result<(), RedisError> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .set_ex(self.cancel_key(reply_id), 1, CANCEL_FLAG_TTL_SECS)
            .ignore()
            .publish(self.cancel_channel(), reply_id.to_string())
            .ignore()
            .query_async::<()>(&mut conn)
            .await
    }

    /// Whether cancelling the reply was asked for.
    pub async fn cancel_requested(&self, reply_id: Uuid) -> Result<bool, RedisError> {
        let mut conn = self.conn.clone();
        redis::cmd("EXISTS").arg(self.cancel_key(reply_id)).query_async(&mut conn).await
    }

    /// The ids of replies whose cancelling is asked for from now on, on a pub/sub connection
    /// of its own. The stream ends when that connection is lost: call again, and check
    /// [`Self::cancel_requested`] for the replies in flight, since a request published
    /// meanwhile is not delivered.
    pub async fn cancel_requests(&self) -> Result<impl Stream<Item = Uuid> + Send + 'static, RedisError> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(self.cancel_channel()).await?;
        Ok(pubsub
            .into_on_message()
            .filter_map(|msg| async move { msg.get_payload::<String>().ok().and_then(|p| p.parse().ok()) }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use super::*;
    use crate::settings::RedisSettings;

    struct Fixture {
        redis: RedisStore,
        streams: ReplyStreams,
    }

    impl Fixture {
        async fn new(settings: StreamSettings) -> Self {
            let prefix = format!("colloquy_test_{}:", &Uuid::new_v4().simple().to_string()[..12]);
            let redis = RedisStore::connect(&RedisSettings { key_prefix: prefix, ..Default::default() })
                .await
                .expect("Redis on 127.0.0.1:6379");
            let streams = ReplyStreams::new(&redis, &settings);
            Self { redis, streams }
        }

        async fn ttl(&self, key: &str) -> i64 {
            let mut conn = self.redis.conn.clone();
            redis::cmd("TTL").arg(key).query_async(&mut conn).await.unwrap()
        }

        async fn cleanup(self) {
            self.redis.delete_prefixed("").await.unwrap();
        }
    }

    fn target() -> ReplyTarget {
        ReplyTarget { reply_id: Uuid::new_v4(), conversation_id: Uuid::new_v4(), owner_id: Uuid::new_v4() }
    }

    fn delta(text: &str) -> StreamEntry {
        StreamEntry::Delta { text: text.into() }
    }

    #[test]
    fn entries_serialise_tagged_and_snake_case() {
        let entry = StreamEntry::Completed {
            finish_reason: "stop".into(),
            usage: StreamUsage { input_tokens: 3, output_tokens: 5 },
        };
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "completed", "finish_reason": "stop",
                "usage": {"input_tokens": 3, "output_tokens": 5}})
        );
        assert!(entry.is_terminal());
        assert!(!delta("x").is_terminal());
        assert!(!StreamEntry::Started { model: "m".into(), created: 1 }.is_terminal());
    }

    #[test]
    fn entry_ids_order_numerically() {
        let a = EntryId::parse("999-5").unwrap();
        let b = EntryId::parse("1000-0").unwrap();
        let c = EntryId::parse("1000-10").unwrap();
        assert!(a < b && b < c);
        assert_eq!(c.to_string(), "1000-10");
        assert_eq!(EntryId::parse("1000"), None);
        assert_eq!(EntryId::parse("a-1"), None);
    }

    #[tokio::test]
    async fn channels_name_their_user_and_patterns_escape_the_prefix() {
        let f = Fixture::new(StreamSettings::default()).await;
        let user = Uuid::new_v4();
        let channel = f.streams.user_channel(user);
        assert_eq!(f.streams.user_of_channel(&channel), Some(user));
        assert_eq!(f.streams.user_of_channel("other:user:x:replies"), None);
        assert!(f.streams.user_channel_pattern().ends_with(":user:*:replies"));
        assert_eq!(glob_literal("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        f.cleanup().await;
    }

    #[tokio::test]
    async fn read_after_returns_entries_in_order_and_excludes_the_given_one() {
        let f = Fixture::new(StreamSettings::default()).await;
        let t = target();
        let started = StreamEntry::Started { model: "m".into(), created: 1_700_000_000 };
        let mut ids = vec![f.streams.append(&t, &started).await.unwrap()];
        for i in 0..5 {
            ids.push(f.streams.append(&t, &delta(&format!("t{i}"))).await.unwrap());
        }
        let all = f.streams.read_after(t.reply_id, None).await.unwrap();
        assert_eq!(all.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), ids);
        assert_eq!(all[0].1, started);
        assert_eq!(all[3].1, delta("t2"));
        let parsed: Vec<EntryId> = ids.iter().map(|id| EntryId::parse(id).unwrap()).collect();
        assert!(parsed.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

        let after = f.streams.read_after(t.reply_id, Some(&ids[2])).await.unwrap();
        assert_eq!(after.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), ids[3..].to_vec());
        assert!(f.streams.read_after(t.reply_id, Some(&ids[5])).await.unwrap().is_empty());
        assert!(f.streams.read_after(Uuid::new_v4(), None).await.unwrap().is_empty());

        assert_eq!(f.streams.first(t.reply_id).await.unwrap().map(|(id, _)| id), Some(ids[0].clone()));
        assert_eq!(f.streams.last(t.reply_id).await.unwrap(), Some((ids[5].clone(), delta("t4"))));
        assert_eq!(f.streams.last(Uuid::new_v4()).await.unwrap(), None);
        f.cleanup().await;
    }

    #[tokio::test]
    async fn read_after_pages_through_long_streams() {
        let f = Fixture::new(StreamSettings::default()).await;
        let t = target();
        for i in 0..(PAGE + 7) {
            f.streams.append(&t, &delta(&i.to_string())).await.unwrap();
        }
        let all = f.streams.read_after(t.reply_id, None).await.unwrap();
        assert_eq!(all.len(), PAGE + 7);
        assert!(all.iter().enumerate().all(|(i, (_, e))| *e == delta(&i.to_string())));
        f.cleanup().await;
    }

    #[tokio::test]
    async fn the_first_append_stores_the_target() {
        let f = Fixture::new(StreamSettings::default()).await;
        let t = target();
        assert_eq!(f.streams.target(t.reply_id).await.unwrap(), None);
        f.streams.append(&t, &delta("a")).await.unwrap();
        assert_eq!(f.streams.target(t.reply_id).await.unwrap(), Some(t));
        // A later append naming another target does not move the stream.
        let other = ReplyTarget { reply_id: t.reply_id, ..target() };
        f.streams.append(&other, &delta("b")).await.unwrap();
        assert_eq!(f.streams.target(t.reply_id).await.unwrap(), Some(t));
        f.cleanup().await;
    }

    #[tokio::test]
    async fn streams_are_bounded_by_max_len() {
        let f = Fixture::new(StreamSettings { max_len: 10, ..Default::default() }).await;
        let t = target();
        for i in 0..600 {
            f.streams.append(&t, &delta(&i.to_string())).await.unwrap();
        }
        let kept = f.streams.read_after(t.reply_id, None).await.unwrap();
        // `MAXLEN ~` trims whole nodes (100 entries by default): never below max_len, and
        // at most a node above it.
        assert!(kept.len() >= 10 && kept.len() <= 10 + 100, "{} kept", kept.len());
        assert_eq!(kept.last().map(|(_, e)| e.clone()), Some(delta("599")));
        f.cleanup().await;
    }

    #[tokio::test]
    async fn streams_expire_idle_and_soon_after_the_end() {
        let settings = StreamSettings { ttl_after_finish_secs: 600, idle_ttl_secs: 3600, ..Default::default() };
        let f = Fixture::new(settings).await;
        let t = target();
        f.streams.append(&t, &delta("a")).await.unwrap();
        let (stream, target_key) = (f.streams.stream_key(t.reply_id), f.streams.target_key(t.reply_id));
        let idle = f.ttl(&stream).await;
        assert!(idle > 600 && idle <= 3600, "{idle}");
        assert!(f.ttl(&target_key).await > 600);
        let end = StreamEntry::Failed { code: "provider_error".into(), message: "upstream closed".into() };
        f.streams.append(&t, &end).await.unwrap();
        for key in [&stream, &target_key] {
            let ttl = f.ttl(key).await;
            assert!(ttl > 0 && ttl <= 600, "{key}: {ttl}");
        }
        f.cleanup().await;
    }

    #[tokio::test]
    async fn appends_are_published_to_the_owner() {
        let f = Fixture::new(StreamSettings::default()).await;
        let t = target();
        let messages = f.streams.user_messages().await.unwrap();
        futures::pin_mut!(messages);
        // Another prefix's channels (another deployment on the same server) are not heard.
        let stranger = Fixture::new(StreamSettings::default()).await;
        stranger.streams.append(&target(), &delta("not yours")).await.unwrap();
        let id = f.streams.append(&t, &delta("hello \"world\"\n")).await.unwrap();
        let (owner, published) = tokio::time::timeout(Duration::from_secs(10), messages.next()).await.unwrap().unwrap();
        assert_eq!(owner, t.owner_id);
        assert_eq!(
            published,
            ReplyMessage {
                reply_id: t.reply_id,
                conversation_id: t.conversation_id,
                id,
                entry: delta("hello \"world\"\n")
            }
        );
        stranger.cleanup().await;
        f.cleanup().await;
    }

    #[tokio::test]
    async fn cancel_sets_the_flag_and_notifies_listeners() {
        let f = Fixture::new(StreamSettings::default()).await;
        let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
        let requests = f.streams.cancel_requests().await.unwrap();
        futures::pin_mut!(requests);
        assert!(!f.streams.cancel_requested(first).await.unwrap());
        f.streams.request_cancel(first).await.unwrap();
        f.streams.request_cancel(second).await.unwrap();
        assert!(f.streams.cancel_requested(first).await.unwrap());
        assert!(f.streams.cancel_requested(second).await.unwrap());
        let flag_ttl = f.ttl(&f.streams.cancel_key(first)).await;
        assert!(flag_ttl > 0 && flag_ttl <= 3600, "{flag_ttl}");
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(tokio::time::timeout(Duration::from_secs(10), requests.next()).await.unwrap().unwrap());
        }
        assert_eq!(got, vec![first, second]);
        f.cleanup().await;
    }
}
