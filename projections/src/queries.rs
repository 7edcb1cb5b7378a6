//! The query use cases: one entry point per query the API serves, reading only the read
//! models (the audit trail excepted, which exists to show the event store). Each is filtered
//! by the asking user in SQL: another user's object is "not found", never "forbidden". A
//! query may name a minimum aggregate version and then waits, bounded, for the projection.
//!
//! Ownership comes first: a query on a conversation checks that it is the caller's before it
//! waits for a version, loads history or does anything else costlier than the answer "not
//! found", so a stranger gets the same immediate 404 whether the id exists or not and
//! whatever version they ask for.

use std::time::Duration;

use colloquy_domain::Conversation;
use colloquy_infra::event_store::{self, EventStoreError, StoredEvent};
use colloquy_infra::metrics::Metrics;
use colloquy_infra::redis_store::RedisStore;
use cqrs_es::Aggregate;
use serde::Serialize;
use sqlx::PgPool;
use tracing::instrument;
use uuid::Uuid;

use crate::conversations::{self, ConversationSummary, PageCursor};
use crate::knowledge_queries::{self, DocumentPage, DocumentSummary, FilePage, FileSummary};
use crate::{cache, files, freshness, knowledge, messages, users};

/// Page size when none is asked for.
pub const DEFAULT_PAGE: i64 = 20;
/// Largest page.
pub const MAX_PAGE: i64 = 100;
/// Audit-trail page size when none is asked for.
pub const DEFAULT_EVENTS_PAGE: i64 = 100;
/// Largest audit-trail page.
pub const MAX_EVENTS_PAGE: i64 = 1000;

/// What a query could not find (also another user's object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// A user profile.
    User,
    /// A conversation.
    Conversation,
    /// An uploaded file.
    File,
    /// A knowledge document.
    Document,
    /// A message of a conversation.
    Message,
    /// A shared conversation's link.
    Share,
}

impl Resource {
    /// Its name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Conversation => "conversation",
            Self::File => "file",
            Self::Document => "knowledge document",
            Self::Message => "message",
            Self::Share => "shared conversation",
        }
    }
}

/// Why a query did not answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Nothing there for this user.
    #[error("{} not found", .0.name())]
    NotFound(Resource),
    /// The read model has not reached the asked version in time.
    #[error("the read model has not reached version {min_version} yet; retry shortly")]
    NotYetVisible {
        /// The version asked for.
        min_version: i64,
    },
    /// The page size is out of range.
    #[error("limit must be between 1 and {MAX_PAGE}")]
    InvalidLimit,
    /// The audit trail's page size is out of range.
    #[error("limit must be between 1 and {MAX_EVENTS_PAGE}")]
    InvalidEventsLimit,
    /// The cursor was not issued by this API (or `after` is negative).
    #[error("the cursor is not one this API issued")]
    InvalidCursor,
    /// A negative `min_version`.
    #[error("min_version must not be negative")]
    InvalidMinVersion,
    /// `min_version` on the list without the conversation it refers to.
    #[error("on the list, min_version refers to the conversation named by conversation_id")]
    MinVersionNeedsConversation,
    /// A date range that ends before it starts or spans more than a year.
    #[error("from must not be after to, and the range may span at most {MAX_USAGE_DAYS} days")]
    InvalidRange,
    /// A read model or the event store failed.
    #[error("the query failed")]
    Failed(#[source] QueryFailure),
}

/// The longest usage report, in days.
pub const MAX_USAGE_DAYS: i64 = 366;

/// A user's usage of the models between two UTC days.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    /// The first day (UTC).
    pub from: chrono::NaiveDate,
    /// The last day (UTC), included.
    pub to: chrono::NaiveDate,
    /// Per day and model, oldest first.
    pub days: Vec<crate::usage::UsageDay>,
    /// Calls over the range.
    pub calls: i64,
    /// Prompt tokens over the range.
    pub input_tokens: i64,
    /// Generated tokens over the range.
    pub output_tokens: i64,
    /// What they cost by the price table.
    pub cost: f64,
}

/// An infrastructure failure underneath a query.
#[derive(Debug, thiserror::Error)]
pub enum QueryFailure {
    /// A read model failed.
    #[error("read model query failed")]
    ReadModel(#[from] sqlx::Error),
    /// The event store failed.
    #[error("event store read failed")]
    EventStore(#[from] EventStoreError),
    /// A result could not be serialised.
    #[error("serialisation failed")]
    Json(#[from] serde_json::Error),
}

impl<E: Into<QueryFailure>> From<E> for QueryError {
    fn from(e: E) -> Self {
        Self::Failed(e.into())
    }
}

/// A page of conversations.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConversationPage {
    /// The conversations, newest activity first.
    pub items: Vec<ConversationSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A page of a conversation's audit trail.
#[derive(Debug)]
pub struct EventPage {
    /// The events, in sequence order.
    pub items: Vec<StoredEvent>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<i64>,
}

/// The conversation list's filters and paging.
#[derive(Debug, Clone, Default)]
pub struct ListConversations {
    /// Archived conversations instead of active ones.
    pub archived: bool,
    /// Page size.
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// With `conversation_id`: wait until the list reflects this version of it.
    pub min_version: Option<i64>,
    /// The conversation `min_version` refers to.
    pub conversation_id: Option<Uuid>,
}

/// Every query, over the read models.
#[derive(Clone)]
pub struct Queries {
    pool: PgPool,
    redis: RedisStore,
    metrics: Metrics,
    min_version_wait: Duration,
}

/// A negative `min_version` is refused before anything else is looked at.
fn check_min_version(min_version: Option<i64>) -> Result<(), QueryError> {
    match min_version {
        Some(v) if v < 0 => Err(QueryError::InvalidMinVersion),
        _ => Ok(()),
    }
}

fn page_size(limit: Option<i64>) -> Result<i64, QueryError> {
    match limit.unwrap_or(DEFAULT_PAGE) {
        n @ 1..=MAX_PAGE => Ok(n),
        _ => Err(QueryError::InvalidLimit),
    }
}

impl Queries {
    /// Queries on `pool` (read models), with Redis caches; a `min_version` waits at most
    /// `min_version_wait`.
    pub fn new(pool: PgPool, redis: RedisStore, metrics: Metrics, min_version_wait: Duration) -> Self {
        Self { pool, redis, metrics, min_version_wait }
    }

    /// Whether `id` is `user`'s conversation: the read model answers first; a conversation
    /// it does not have (not projected yet, or deleted) is looked up by the first event in
    /// the event store (one primary-key read), so read-your-writes keeps working for the
    /// owner of a conversation started a moment ago.
    async fn ensure_owner(&self, user: Uuid, id: Uuid) -> Result<(), QueryError> {
        // A stranger's id, existing or not, takes the same two reads.
        if conversations::find(&self.pool, user, id).await?.is_some()
            || event_store::conversation_owner(&self.pool, id).await? == Some(user)
        {
            return Ok(());
        }
        Err(QueryError::NotFound(Resource::Conversation))
    }

    /// Waits for `min_version` of `aggregate_id` in `projections`.
    async fn await_version(
        &self,
        projections: &[&str],
        aggregate_id: &str,
        min_version: Option<i64>,
    ) -> Result<(), QueryError> {
        let Some(min) = min_version else { return Ok(()) };
        if min < 0 {
            return Err(QueryError::InvalidMinVersion);
        }
        self.metrics.min_version_waiting.inc();
        let reached =
            freshness::wait_for_version(&self.pool, projections, aggregate_id, min, self.min_version_wait).await;
        self.metrics.min_version_waiting.dec();
        if reached? {
            Ok(())
        } else {
            Err(QueryError::NotYetVisible { min_version: min })
        }
    }

    /// The user's own profile, as JSON (Redis-cached unless a version is asked for).
    #[instrument(skip_all, fields(%user))]
    pub async fn profile(&self, user: Uuid, min_version: Option<i64>) -> Result<String, QueryError> {
        self.await_version(&[users::NAME], &user.to_string(), min_version).await?;
        cache::get_or_load(&self.redis, user, "profile", min_version.is_some(), || async {
            let profile = users::find(&self.pool, user).await?.ok_or(QueryError::NotFound(Resource::User))?;
            Ok(serde_json::to_string(&profile)?)
        })
        .await
    }

    /// A page of the user's conversations, newest activity first, as JSON (the first page
    /// is Redis-cached).
    #[instrument(skip_all, fields(%user))]
    pub async fn conversations(&self, user: Uuid, q: ListConversations) -> Result<String, QueryError> {
        let limit = page_size(q.limit)?;
        let after = q.cursor.as_deref().map(|c| PageCursor::decode(c).ok_or(QueryError::InvalidCursor)).transpose()?;
        match (q.min_version, q.conversation_id) {
            (Some(_), None) => return Err(QueryError::MinVersionNeedsConversation),
            (min, Some(id)) => {
                if min.is_some() {
                    check_min_version(min)?;
                    self.ensure_owner(user, id).await?;
                }
                self.await_version(&[conversations::NAME], &id.to_string(), min).await?
            }
            (None, None) => {}
        }
        let cache_name = format!("conversations:{}:{limit}", if q.archived { "archived" } else { "active" });
        let bypass = after.is_some() || q.min_version.is_some();
        cache::get_or_load(&self.redis, user, &cache_name, bypass, || async {
            let items = conversations::list(&self.pool, user, q.archived, after, limit).await?;
            let next_cursor =
                (items.len() as i64 == limit).then(|| items.last().map(|c| PageCursor::of(c).encode())).flatten();
            Ok(serde_json::to_string(&ConversationPage { items, next_cursor })?)
        })
        .await
    }

    /// One of the user's conversations.
    #[instrument(skip_all, fields(%user, %id))]
    pub async fn conversation(
        &self,
        user: Uuid,
        id: Uuid,
        min_version: Option<i64>,
    ) -> Result<ConversationSummary, QueryError> {
        if min_version.is_some() {
            check_min_version(min_version)?;
            self.ensure_owner(user, id).await?;
        }
        self.await_version(&[conversations::NAME], &id.to_string(), min_version).await?;
        conversations::find(&self.pool, user, id).await?.ok_or(QueryError::NotFound(Resource::Conversation))
    }

    /// A page of a path through one of the user's conversations: the active path, or the
    /// branch through message `through`; its messages after sequence `after`, in order.
    #[instrument(skip_all, fields(%user, %id))]
    pub async fn messages(
        &self,
        user: Uuid,
        id: Uuid,
        through: Option<Uuid>,
        after: i64,
        limit: Option<i64>,
        min_version: Option<i64>,
    ) -> Result<messages::Path, QueryError> {
        let limit = page_size(limit)?;
        if min_version.is_some() {
            check_min_version(min_version)?;
            self.ensure_owner(user, id).await?;
        }
        self.await_version(&[conversations::NAME, messages::NAME], &id.to_string(), min_version).await?;
        // A deleted conversation is still the owner's, but no longer listed: not found.
        conversations::find(&self.pool, user, id).await?.ok_or(QueryError::NotFound(Resource::Conversation))?;
        messages::path(&self.pool, user, id, through, after, limit)
            .await?
            .ok_or(QueryError::NotFound(Resource::Message))
    }

    /// A page of the audit trail of one of the user's conversations, from the event store
    /// (deleted conversations included): up to `limit` events after sequence `after`.
    /// Ownership is read from the typed `ConversationStarted` before any page is read, and
    /// a page is all that is ever held in memory.
    #[instrument(skip_all, fields(%user, %id))]
    pub async fn conversation_events(
        &self,
        user: Uuid,
        id: Uuid,
        after: i64,
        limit: Option<i64>,
    ) -> Result<EventPage, QueryError> {
        let limit = match limit.unwrap_or(DEFAULT_EVENTS_PAGE) {
            n @ 1..=MAX_EVENTS_PAGE => n,
            _ => return Err(QueryError::InvalidEventsLimit),
        };
        if after < 0 {
            return Err(QueryError::InvalidCursor);
        }
        if event_store::conversation_owner(&self.pool, id).await? != Some(user) {
            return Err(QueryError::NotFound(Resource::Conversation));
        }
        // One more than the page tells whether another page follows.
        let mut items =
            event_store::read_aggregate_page(&self.pool, Conversation::TYPE, &id.to_string(), after, limit + 1).await?;
        let more = items.len() as i64 > limit;
        items.truncate(limit as usize);
        let next_after = more.then(|| items.last().map(|e| e.sequence)).flatten();
        Ok(EventPage { items, next_after })
    }

    /// The shares of one of `user`'s conversations (a deleted one's included: they are
    /// listed as revoked).
    #[instrument(skip_all, fields(%user, %id))]
    pub async fn shares(&self, user: Uuid, id: Uuid) -> Result<Vec<crate::shares::ShareSummary>, QueryError> {
        if event_store::conversation_owner(&self.pool, id).await? != Some(user) {
            return Err(QueryError::NotFound(Resource::Conversation));
        }
        Ok(crate::shares::list(&self.pool, user, id).await?)
    }

    /// One of `user`'s conversations exported (the whole tree).
    #[instrument(skip_all, fields(%user, %id))]
    pub async fn export(
        &self,
        user: Uuid,
        id: Uuid,
        min_version: Option<i64>,
    ) -> Result<colloquy_domain::conversation::export::Export, QueryError> {
        if min_version.is_some() {
            check_min_version(min_version)?;
            self.ensure_owner(user, id).await?;
        }
        self.await_version(&[conversations::NAME, messages::NAME], &id.to_string(), min_version).await?;
        crate::export::export(&self.pool, user, id).await?.ok_or(QueryError::NotFound(Resource::Conversation))
    }

    /// The conversation a link's token shows; an unknown token, a revoked share and a deleted
    /// conversation are all the same "not found".
    pub async fn shared(&self, token: &str) -> Result<crate::shares::SharedConversation, QueryError> {
        let hash = colloquy_infra::secrets::sha256_hex(token);
        crate::shares::shared(&self.pool, &hash).await?.ok_or(QueryError::NotFound(Resource::Share))
    }

    /// `user`'s usage between UTC days `from` and `to` (both included; default: the 30 days
    /// up to today).
    #[instrument(skip_all, fields(%user))]
    pub async fn usage(
        &self,
        user: Uuid,
        from: Option<chrono::NaiveDate>,
        to: Option<chrono::NaiveDate>,
    ) -> Result<UsageReport, QueryError> {
        let to = to.unwrap_or_else(|| chrono::Utc::now().date_naive());
        let from = from.unwrap_or(to - chrono::Days::new(29));
        let span = (to - from).num_days();
        if !(0..MAX_USAGE_DAYS).contains(&span) {
            return Err(QueryError::InvalidRange);
        }
        let days = crate::usage::days(&self.pool, user, from, to).await?;
        Ok(UsageReport {
            from,
            to,
            calls: days.iter().map(|d| d.calls).sum(),
            input_tokens: days.iter().map(|d| d.input_tokens).sum(),
            output_tokens: days.iter().map(|d| d.output_tokens).sum(),
            cost: days.iter().map(|d| d.cost).sum(),
            days,
        })
    }

    /// Waits for `min_version` of one of `user`'s files or documents, after checking from
    /// the event store that it is theirs (a stranger is answered "not found" at once).
    async fn await_owned(
        &self,
        user: Uuid,
        resource: Resource,
        id: Uuid,
        min_version: Option<i64>,
    ) -> Result<(), QueryError> {
        let Some(min) = min_version else { return Ok(()) };
        check_min_version(Some(min))?;
        let (owner, projection) = match resource {
            Resource::File => (event_store::file_owner(&self.pool, id).await?, files::NAME),
            Resource::Document => (event_store::document_owner(&self.pool, id).await?, knowledge::NAME),
            Resource::User | Resource::Conversation | Resource::Message | Resource::Share => {
                return Err(QueryError::NotFound(resource))
            }
        };
        if owner != Some(user) {
            return Err(QueryError::NotFound(resource));
        }
        self.await_version(&[projection], &id.to_string(), Some(min)).await
    }

    /// A page of the user's files, newest first.
    #[instrument(skip_all, fields(%user))]
    pub async fn files(&self, user: Uuid, cursor: Option<&str>, limit: Option<i64>) -> Result<FilePage, QueryError> {
        knowledge_queries::list_files(&self.pool, user, cursor, limit).await
    }

    /// One of the user's files (not a deleted one).
    #[instrument(skip_all, fields(%user, %id))]
    pub async fn file(&self, user: Uuid, id: Uuid, min_version: Option<i64>) -> Result<FileSummary, QueryError> {
        self.await_owned(user, Resource::File, id, min_version).await?;
        knowledge_queries::file(&self.pool, user, id).await?.ok_or(QueryError::NotFound(Resource::File))
    }

    /// A page of the user's knowledge documents, newest first, filtered by tag and category.
    #[instrument(skip_all, fields(%user))]
    pub async fn documents(&self, user: Uuid, q: ListDocuments<'_>) -> Result<DocumentPage, QueryError> {
        knowledge_queries::list_documents(&self.pool, user, q.tag, q.category, q.cursor, q.limit).await
    }

    /// One of the user's knowledge documents (not a deleted one).
    #[instrument(skip_all, fields(%user, %id))]
    pub async fn document(
        &self,
        user: Uuid,
        id: Uuid,
        min_version: Option<i64>,
    ) -> Result<DocumentSummary, QueryError> {
        self.await_owned(user, Resource::Document, id, min_version).await?;
        knowledge_queries::document(&self.pool, user, id).await?.ok_or(QueryError::NotFound(Resource::Document))
    }
}

/// The knowledge document list's filters and paging.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListDocuments<'a> {
    /// Only documents with this tag.
    pub tag: Option<&'a str>,
    /// Only documents in this category.
    pub category: Option<&'a str>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<&'a str>,
    /// Page size.
    pub limit: Option<i64>,
}
