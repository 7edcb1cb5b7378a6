//! The usage ledger's read model (`rm_usage`): per user, UTC day, provider and upstream model,
//! the provider calls made for them (replies and titles), their tokens and what they cost.
//!
//! The ledger itself is the events: every reply's end (`ReplyCompleted`, `ReplyFailed`,
//! `ReplyCancelled`) and every `TitleGenerated` records its provider, model and tokens. Cost
//! is this projection's, computed with the price table it is built with
//! (`assistant.prices`): change a price and rebuild the projection (`colloquy rebuild usage`)
//! to re-price the past; the tokens stay what they were.

use async_trait::async_trait;
use chrono::NaiveDate;
use colloquy_domain::conversation::{ConversationEvent, TokenUsage};
use colloquy_domain::Conversation;
use colloquy_infra::assistant_settings::{price_of, PriceTable};
use colloquy_infra::event_store::StoredEvent;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::projection::{aggregate_uuid, conversation_owner, domain_event, ApplyError, Projection};

/// The projection's name.
pub const NAME: &str = "usage";

/// Projects provider calls into `rm_usage`, priced by `prices` (by `provider/model`).
pub struct UsageProjection {
    prices: PriceTable,
}

impl UsageProjection {
    /// The projection pricing with `prices`.
    pub fn new(prices: PriceTable) -> Self {
        Self { prices }
    }
}

/// One call's worth of ledger: who, which model, how many tokens.
struct Call<'a> {
    provider: &'a str,
    model: &'a str,
    usage: TokenUsage,
}

#[async_trait]
impl Projection for UsageProjection {
    fn name(&self) -> &'static str {
        NAME
    }

    fn table(&self) -> &'static str {
        "rm_usage"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[Conversation::TYPE]
    }

    async fn apply(&self, conn: &mut PgConnection, table: &str, e: &StoredEvent) -> Result<Option<Uuid>, ApplyError> {
        use ConversationEvent as E;
        let event = domain_event::<ConversationEvent>(e)?;
        let call = match &event {
            E::ReplyCompleted(r) => Some(Call { provider: &r.provider, model: &r.model, usage: r.usage }),
            E::ReplyFailed(r) => r.provider.as_deref().zip(r.model.as_deref()).map(|(provider, model)| Call {
                provider,
                model,
                usage: r.usage,
            }),
            E::ReplyCancelled(r) => r.provider.as_deref().zip(r.model.as_deref()).map(|(provider, model)| Call {
                provider,
                model,
                usage: r.usage,
            }),
            E::TitleGenerated(t) => Some(Call { provider: &t.provider, model: &t.model, usage: t.usage }),
            _ => None,
        };
        // A reply that ended before any provider answered made no call worth a row.
        let Some(call) = call else { return Ok(None) };
        let owner = conversation_owner(conn, aggregate_uuid(e)?).await?;
        let (input, output) = (u64::from(call.usage.input_tokens), u64::from(call.usage.output_tokens));
        let price = price_of(&self.prices, call.provider, call.model);
        let cost = price.map_or(0.0, |p| p.cost(input, output));
        sqlx::query(&format!(
            "INSERT INTO {table} (owner_id, day, provider, model, calls, input_tokens, output_tokens, cost, priced)
             VALUES ($1, ($2 AT TIME ZONE 'UTC')::date, $3, $4, 1, $5, $6, $7, $8)
             ON CONFLICT (owner_id, day, provider, model) DO UPDATE
                SET calls = {table}.calls + 1,
                    input_tokens = {table}.input_tokens + EXCLUDED.input_tokens,
                    output_tokens = {table}.output_tokens + EXCLUDED.output_tokens,
                    cost = {table}.cost + EXCLUDED.cost,
                    priced = {table}.priced AND EXCLUDED.priced"
        ))
        .bind(owner)
        .bind(e.recorded_at)
        .bind(call.provider)
        .bind(call.model)
        .bind(input as i64)
        .bind(output as i64)
        .bind(cost)
        .bind(price.is_some())
        .execute(&mut *conn)
        .await?;
        Ok(None)
    }
}

/// One day's use of one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct UsageDay {
    /// The UTC day.
    pub day: NaiveDate,
    /// The provider called.
    pub provider: String,
    /// The upstream model.
    pub model: String,
    /// Calls made (replies and titles).
    pub calls: i64,
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Generated tokens.
    pub output_tokens: i64,
    /// What they cost by the price table (0 when the model has no price).
    pub cost: f64,
    /// Whether the model had a price.
    pub priced: bool,
}

/// A user's usage per day and model between two UTC days (both included), oldest first.
pub async fn days(pool: &PgPool, owner: Uuid, from: NaiveDate, to: NaiveDate) -> Result<Vec<UsageDay>, sqlx::Error> {
    sqlx::query_as(
        "SELECT day, provider, model, calls, input_tokens, output_tokens, cost, priced FROM rm_usage
          WHERE owner_id = $1 AND day BETWEEN $2 AND $3
          ORDER BY day, provider, model",
    )
    .bind(owner)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}
