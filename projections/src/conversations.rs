//! The conversations read model (`rm_conversations`): one row per live conversation with
//! its message count and last activity, listed per owner with keyset pagination.
//!
//! `message_count` counts the messages the owner posted, as the Conversation aggregate
//! does; assistant replies are not counted (they are listed by the messages query, with
//! their status). Every event, a reply's start and end included, is activity: it moves
//! `last_activity_at` and `version`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use colloquy_domain::conversation::{ConversationEvent, ConversationKind};
use colloquy_domain::Conversation;
use colloquy_infra::event_store::StoredEvent;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::projection::{aggregate_uuid, domain_event, ApplyError, Projection};

/// Projects Conversation events into `rm_conversations`.
pub struct ConversationsProjection;

/// The projection's name.
pub const NAME: &str = "conversations";

/// One conversation as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ConversationSummary {
    /// The id.
    pub conversation_id: Uuid,
    /// The owner.
    pub owner_id: Uuid,
    /// The title.
    pub title: String,
    /// `chat` or `knowledge`.
    pub kind: String,
    /// The model.
    pub model: String,
    /// The system prompt.
    pub system_prompt: Option<String>,
    /// Whether archived.
    pub archived: bool,
    /// Whether replies quote passages of the owner's knowledge base (`knowledge`
    /// conversations start grounded; `PATCH` changes it).
    pub grounded: bool,
    /// Number of messages the owner posted (replies are not counted).
    pub message_count: i64,
    /// The aggregate version this row reflects.
    pub version: i64,
    /// When started.
    pub created_at: DateTime<Utc>,
    /// Time of the last change.
    pub last_activity_at: DateTime<Utc>,
    /// Where it came from: `app` (started here), `import` (from an export) or `api` (a chat
    /// completion asked through the OpenAI-compatible API).
    #[serde(default = "app_origin")]
    pub origin: String,
}

fn app_origin() -> String {
    "app".into()
}

fn enum_str<T: Serialize>(v: T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

#[async_trait]
impl Projection for ConversationsProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn table(&self) -> &'static str {
        "rm_conversations"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[Conversation::TYPE]
    }

    /// Runs of events that change nothing but the count, version and activity of their
    /// conversation (posted messages, replies: the bulk of any batch) become one UPDATE per
    /// run; everything else is applied one event at a time.
    async fn apply_many(
        &self,
        conn: &mut PgConnection,
        table: &str,
        events: &[&StoredEvent],
    ) -> Result<Vec<Option<Uuid>>, (usize, ApplyError)> {
        let mut touched = Vec::with_capacity(events.len());
        let mut run = ActivityRun::default();
        for (i, e) in events.iter().enumerate() {
            match domain_event::<ConversationEvent>(e).map(|event| counted(&event)) {
                Ok(Some(messages)) => {
                    run.push(i, aggregate_uuid(e).map_err(|x| (i, x))?, e, messages);
                    touched.push(None);
                    continue;
                }
                Ok(None) => {}
                Err(error) => return Err((i, error)),
            }
            run.update(conn, table, &mut touched).await?;
            touched.push(self.apply(conn, table, e).await.map_err(|x| (i, x))?);
        }
        run.update(conn, table, &mut touched).await?;
        Ok(touched)
    }

    async fn apply(&self, conn: &mut PgConnection, table: &str, e: &StoredEvent) -> Result<Option<Uuid>, ApplyError> {
        use ConversationEvent as E;
        let id = aggregate_uuid(e)?;
        // Every change but start and delete is one UPDATE of some columns, guarded by the
        // row's version: applying an event twice cannot count twice, whatever the caller.
        let event = domain_event::<ConversationEvent>(e)?;
        if let Some(messages) = counted(&event) {
            let set = if messages > 0 { "message_count = message_count + 1," } else { "" };
            return activity(conn, table, id, e, set, None).await;
        }
        let (set, text): (&str, Option<String>) = match event {
            E::ConversationStarted(s) => {
                sqlx::query(&format!(
                    "INSERT INTO {table} (conversation_id, owner_id, title, kind, model, system_prompt, version, created_at, last_activity_at, grounded)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)"
                ))
                .bind(id)
                .bind(s.owner_id)
                .bind(&s.title)
                .bind(enum_str(s.kind))
                .bind(&s.model)
                .bind(&s.system_prompt)
                .bind(e.sequence)
                .bind(e.recorded_at)
                .bind(s.kind == ConversationKind::Knowledge)
                .execute(&mut *conn)
                .await?;
                return Ok(Some(s.owner_id));
            }
            E::ConversationDeleted(_) => {
                let owner =
                    sqlx::query_scalar(&format!("DELETE FROM {table} WHERE conversation_id = $1 RETURNING owner_id"))
                        .bind(id)
                        .fetch_optional(&mut *conn)
                        .await?;
                return Ok(owner);
            }
            E::ConversationRenamed(r) => ("title = $4,", Some(r.title)),
            E::TitleGenerated(t) => ("title = $4,", Some(t.title)),
            E::ConversationArchived(_) => ("archived = true,", None),
            E::ConversationUnarchived(_) => ("archived = false,", None),
            E::GroundingChanged(g) => match g.enabled {
                true => ("grounded = true,", None),
                false => ("grounded = false,", None),
            },
            E::ConversationImported(_) => ("origin = 'import',", None),
            E::ConversationOpenedFromApi(_) => ("origin = 'api',", None),
            // Counted above.
            _ => ("", None),
        };
        activity(conn, table, id, e, set, text).await
    }
}

/// The one UPDATE every change but start and delete makes: `set` (with `$4` = `text`), then
/// the version and last activity, guarded by the row's version.
async fn activity(
    conn: &mut PgConnection,
    table: &str,
    id: Uuid,
    e: &StoredEvent,
    set: &str,
    text: Option<String>,
) -> Result<Option<Uuid>, ApplyError> {
    let owner = sqlx::query_scalar(&format!(
        "UPDATE {table} SET {set} version = $2, last_activity_at = $3
              WHERE conversation_id = $1 AND version < $2 RETURNING owner_id"
    ))
    .bind(id)
    .bind(e.sequence)
    .bind(e.recorded_at)
    .bind(text)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(owner)
}

/// The messages `event` adds to its conversation's count, if all it changes of the row is
/// the count, the version and the last activity (`None`: it changes something else). The
/// one place that sorts events so, for [`ConversationsProjection::apply`] and its runs alike.
fn counted(event: &ConversationEvent) -> Option<i32> {
    use ConversationEvent as E;
    match event {
        E::UserMessagePosted(_) => Some(1),
        E::MessageImported(m) if m.role == "user" => Some(1),
        E::ReplyStarted(_)
        | E::ReplyRequested(_)
        | E::BranchActivated(_)
        | E::ConversationShared(_)
        | E::ShareRevoked(_)
        | E::MessageImported(_)
        | E::ReplyCompleted(_)
        | E::ReplyFailed(_)
        | E::ReplyCancelled(_) => Some(0),
        E::ConversationStarted(_)
        | E::ConversationDeleted(_)
        | E::ConversationRenamed(_)
        | E::TitleGenerated(_)
        | E::ConversationArchived(_)
        | E::ConversationUnarchived(_)
        | E::GroundingChanged(_)
        | E::ConversationImported(_)
        | E::ConversationOpenedFromApi(_) => None,
    }
}

/// Consecutive events that only count messages and move a conversation's version and
/// activity ([`counted`]), applied in one statement with what one UPDATE per event does:
/// per conversation, the messages of the events newer than the row's version are added, and
/// the version and the activity become the newest event's.
#[derive(Default)]
struct ActivityRun {
    /// Per event: its index in the caller's slice.
    index: Vec<usize>,
    conversation_id: Vec<Uuid>,
    sequence: Vec<i64>,
    messages: Vec<i32>,
    recorded_at: Vec<DateTime<Utc>>,
}

impl ActivityRun {
    fn push(&mut self, index: usize, conversation_id: Uuid, e: &StoredEvent, messages: i32) {
        self.index.push(index);
        self.conversation_id.push(conversation_id);
        self.sequence.push(e.sequence);
        self.messages.push(messages);
        self.recorded_at.push(e.recorded_at);
    }

    /// Updates the run's conversations, if any, notes their owners in `touched` (by event
    /// index) and empties the run; a failure names the run's first event.
    async fn update(
        &mut self,
        conn: &mut PgConnection,
        table: &str,
        touched: &mut [Option<Uuid>],
    ) -> Result<(), (usize, ApplyError)> {
        let Some(&first) = self.index.first() else { return Ok(()) };
        let run = std::mem::take(self);
        let owners: Vec<(Uuid, Uuid)> = sqlx::query_as(&format!(
            "WITH e AS (SELECT * FROM UNNEST($1::uuid[], $2::bigint[], $3::int[], $4::timestamptz[])
                                   AS e(id, seq, messages, recorded_at)),
                  d AS (SELECT e.id,
                               coalesce(sum(e.messages) FILTER (WHERE e.seq > c.version), 0) AS messages,
                               max(e.seq) AS seq,
                               (array_agg(e.recorded_at ORDER BY e.seq DESC))[1] AS recorded_at
                          FROM e JOIN {table} c ON c.conversation_id = e.id
                         GROUP BY e.id)
             UPDATE {table} c
                SET message_count = c.message_count + d.messages, version = d.seq, last_activity_at = d.recorded_at
               FROM d
              WHERE c.conversation_id = d.id AND c.version < d.seq
             RETURNING c.conversation_id, c.owner_id"
        ))
        .bind(&run.conversation_id)
        .bind(&run.sequence)
        .bind(&run.messages)
        .bind(&run.recorded_at)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| (first, ApplyError::from(e)))?;
        for (index, conversation) in run.index.iter().zip(&run.conversation_id) {
            if let (Some((_, owner)), Some(slot)) =
                (owners.iter().find(|(c, _)| c == conversation), touched.get_mut(*index))
            {
                *slot = Some(*owner);
            }
        }
        Ok(())
    }
}

/// Where a page of the list starts: after this (last_activity_at, conversation_id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageCursor {
    /// Last activity of the last row of the previous page.
    pub last_activity_at: DateTime<Utc>,
    /// Its id.
    pub conversation_id: Uuid,
}

impl PageCursor {
    /// The cursor after `row`.
    pub fn of(row: &ConversationSummary) -> Self {
        Self { last_activity_at: row.last_activity_at, conversation_id: row.conversation_id }
    }

    /// The opaque form handed to clients: `<microseconds>_<id>`.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.last_activity_at.timestamp_micros(), self.conversation_id.simple())
    }

    /// Reads a cursor [`encode`](Self::encode) made; `None` for anything else, including a
    /// time outside years 1..=9999 (Postgres's `timestamptz` ends earlier than chrono's
    /// range; no row's activity lies out there, so such a cursor was forged).
    pub fn decode(raw: &str) -> Option<Self> {
        let (micros, id) = raw.split_once('_')?;
        let micros: i64 = micros.parse().ok()?;
        if !(CURSOR_MIN_MICROS..=CURSOR_MAX_MICROS).contains(&micros) {
            return None;
        }
        let last_activity_at = DateTime::from_timestamp_micros(micros)?;
        Some(Self { last_activity_at, conversation_id: id.parse().ok()? })
    }
}

/// 0001-01-01T00:00:00Z in microseconds since the epoch.
const CURSOR_MIN_MICROS: i64 = -62_135_596_800_000_000;
/// 9999-12-31T23:59:59.999999Z in microseconds since the epoch.
const CURSOR_MAX_MICROS: i64 = 253_402_300_799_999_999;

/// One page of `owner`'s conversations, newest activity first.
pub async fn list(
    pool: &PgPool,
    owner: Uuid,
    archived: bool,
    after: Option<PageCursor>,
    limit: i64,
) -> Result<Vec<ConversationSummary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM rm_conversations
          WHERE owner_id = $1 AND archived = $2
            AND ($3::timestamptz IS NULL OR (last_activity_at, conversation_id) < ($3, $4))
          ORDER BY last_activity_at DESC, conversation_id DESC
          LIMIT $5",
    )
    .bind(owner)
    .bind(archived)
    .bind(after.map(|c| c.last_activity_at))
    .bind(after.map(|c| c.conversation_id))
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One conversation of `owner` (another owner's is `None`, like a missing one).
pub async fn find(pool: &PgPool, owner: Uuid, id: Uuid) -> Result<Option<ConversationSummary>, sqlx::Error> {
    sqlx::query_as("SELECT * FROM rm_conversations WHERE conversation_id = $1 AND owner_id = $2")
        .bind(id)
        .bind(owner)
        .fetch_optional(pool)
        .await
}

#[cfg(test)]
mod cursor_tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let c = PageCursor { last_activity_at: Utc::now(), conversation_id: Uuid::new_v4() };
        let micros = PageCursor::decode(&c.encode()).map(|d| d.last_activity_at.timestamp_micros());
        assert_eq!(micros, Some(c.last_activity_at.timestamp_micros()));
    }

    #[test]
    fn the_bounds_are_the_first_and_last_instant_of_years_1_and_9999() {
        let id = Uuid::nil().simple();
        let first = PageCursor::decode(&format!("{CURSOR_MIN_MICROS}_{id}")).map(|c| c.last_activity_at.to_rfc3339());
        assert_eq!(first.as_deref(), Some("0001-01-01T00:00:00+00:00"));
        let last = PageCursor::decode(&format!("{CURSOR_MAX_MICROS}_{id}")).map(|c| c.last_activity_at.to_rfc3339());
        assert_eq!(last.as_deref(), Some("9999-12-31T23:59:59.999999+00:00"));
    }

    #[test]
    fn forged_cursors_out_of_range_are_refused() {
        let id = Uuid::nil().simple();
        for micros in [CURSOR_MIN_MICROS - 1, CURSOR_MAX_MICROS + 1, i64::MAX, i64::MIN, -8_000_000_000_000_000_000] {
            assert_eq!(PageCursor::decode(&format!("{micros}_{id}")), None, "{micros}");
        }
        assert_eq!(PageCursor::decode("99999999999999999999_x"), None);
    }
}
