//! Answering one user message: from the claimed lease to the reply's final event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use colloquy_domain::conversation::{
    Conversation, ConversationError, ReplyAttempt, ReplyCancelled, ReplyCompleted, ReplyFailed, ReplyFailure,
    ReplyParameters, ReplyStarted, TokenUsage, UserMessagePosted,
};
use colloquy_infra::event_store::{self, ConversationMessage, MessageRole};
use colloquy_infra::reply_streams::{ReplyTarget, StreamEntry, StreamUsage};
use colloquy_providers::router::{Attempt, AttemptOutcome, RouteFailure};
use colloquy_providers::{ChatMessage, FinishReason, Parameters, ProviderError, Role, StreamItem, Usage};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::prompt::{self, Prompt};
use super::worker::Shared;
use crate::caller::Caller;
use crate::command_service::CommandError;

/// Why a reply could not be recorded; the message is retried (not acknowledged).
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    /// The event store, a port or Redis failed.
    #[error("{0}")]
    Infrastructure(String),
    /// The worker is stopping and gave the reply up before starting it.
    #[error("the worker is stopping")]
    Stopping,
}

fn infra(e: impl std::fmt::Display) -> ReplyError {
    ReplyError::Infrastructure(e.to_string())
}

/// The posted message a reply answers, with where it came from.
pub struct Question {
    /// The conversation.
    pub conversation_id: Uuid,
    /// Its version after the message was posted.
    pub sequence: i64,
    /// The event.
    pub posted: UserMessagePosted,
    /// The reply to produce: the message's own
    /// ([`reply_id_for`](colloquy_domain::conversation::reply_id_for)) or a requested
    /// (regenerated) one.
    pub reply_id: Uuid,
    /// The model a regeneration asked for; it comes before the message's.
    pub requested_model: Option<String>,
    /// Who the reply's events are attributed to (the assistant, for the message's author).
    pub caller: Caller,
}

impl Question {
    fn reply_id(&self) -> Uuid {
        self.reply_id
    }

    fn target(&self) -> ReplyTarget {
        ReplyTarget {
            reply_id: self.reply_id(),
            conversation_id: self.conversation_id,
            owner_id: self.posted.author_id,
        }
    }
}

/// How a streamed reply ended.
enum Ending {
    Finished(FinishReason),
    Failed(ProviderError),
    Cancelled,
    /// The worker is stopping and its grace period is over.
    Stopped,
    /// Another worker took the reply over (this worker's lease expired).
    LeaseLost,
}

/// The sampling parameters of a reply in `conversation`: the model's output limit, and for a
/// conversation started through the OpenAI-compatible API what its request asked for (a
/// `max_tokens` above the model's limit is capped at it).
fn parameters_for(conversation: &Conversation, max_output_tokens: u32) -> Parameters {
    match &conversation.api_parameters {
        None => Parameters { max_tokens: Some(max_output_tokens), temperature: None, top_p: None },
        Some(asked) => Parameters {
            max_tokens: Some(asked.max_tokens.map_or(max_output_tokens, |m| m.min(max_output_tokens))),
            temperature: asked.temperature,
            top_p: asked.top_p,
        },
    }
}

/// Answers `question`, whose lease this worker holds. `Ok` once the reply has its final
/// event (or never needs one: already answered, conversation gone).
pub async fn answer(shared: &Arc<Shared>, question: &Question, abort: &CancellationToken) -> Result<(), ReplyError> {
    let reply_id = question.reply_id();
    let (conversation, _) = shared.commands.conversation_state(question.conversation_id).await.map_err(infra)?;
    if conversation.open_replies.contains(&reply_id) {
        // Started by a worker whose lease expired: end it with what it streamed.
        return end_abandoned(shared, question.target(), &question.caller).await;
    }
    if abort.is_cancelled() {
        return Err(ReplyError::Stopping);
    }
    let user_default = match shared.commands.user_state(question.posted.author_id).await {
        Ok((user, _)) => user.default_model,
        Err(e) => {
            tracing::warn!(error = %e, "Could not read the user's default model; using the configured default.");
            None
        }
    };
    let model = shared
        .router
        .resolve(&[
            question.requested_model.as_deref(),
            question.posted.model.as_deref(),
            Some(conversation.model.as_str()),
            user_default.as_deref(),
        ])
        .to_string();
    let info = shared
        .router
        .models()
        .into_iter()
        .find(|m| m.name == model)
        .ok_or_else(|| infra(format!("model {model} is not configured")))?;
    let parameters = parameters_for(&conversation, info.max_output_tokens);
    let limit = usize::try_from(shared.settings.history_limit).unwrap_or(usize::MAX);
    let history = event_store::path_messages(
        &shared.pool,
        question.conversation_id,
        question.posted.message_id,
        question.sequence,
        limit,
    )
    .await
    .map_err(infra)?;
    let target = ConversationMessage {
        sequence: question.sequence,
        message_id: question.posted.message_id,
        role: MessageRole::User,
        content: question.posted.content.clone(),
    };
    let budget = info.context_window.saturating_sub(info.max_output_tokens as usize);
    let citations = match (&shared.grounding, conversation.grounded) {
        (Some(grounding), true) => grounding
            .retrieve(&shared.pool, question.posted.author_id, &question.posted.content)
            .await
            .map_err(|e| infra(format!("retrieving the knowledge base's passages: {e}")))?,
        _ => Vec::new(),
    };
    let system = super::grounding::system_prompt(conversation.system_prompt.as_deref(), &citations);
    let router = shared.router.clone();
    let built = prompt::build(system.as_deref(), &target, &history, budget, |m| {
        router.count_tokens(&model, std::slice::from_ref(m))
    });
    let (prompt, too_long) = match built {
        Ok(p) => (p, None),
        Err(e) => {
            let only = Prompt { messages: vec![], context: vec![target.message_id], tokens: e.needed };
            (only, Some(e))
        }
    };
    let route = info.route.clone();
    let started = ReplyStarted {
        reply_id,
        in_reply_to: question.posted.message_id,
        model: model.clone(),
        provider: route.first().and_then(|r| r.split_once('/')).map(|(p, _)| p.to_string()).unwrap_or_default(),
        route,
        system_prompt: conversation.system_prompt.clone(),
        context: prompt.context.clone(),
        parameters: ReplyParameters {
            max_tokens: parameters.max_tokens,
            temperature: parameters.temperature,
            top_p: parameters.top_p,
        },
        worker: shared.leases.worker().to_string(),
        citations,
    };
    match shared.commands.start_reply(&question.caller, question.conversation_id, started).await {
        Ok(_) => {}
        Err(CommandError::Rejected(ConversationError::ReplyAlreadyFinished))
        | Err(CommandError::Rejected(ConversationError::Deleted))
        | Err(CommandError::Rejected(ConversationError::NotFound))
        | Err(CommandError::Rejected(ConversationError::MessageNotFound)) => return Ok(()),
        Err(CommandError::Rejected(ConversationError::ReplyInProgress)) => {
            return end_abandoned(shared, question.target(), &question.caller).await;
        }
        Err(e) => return Err(infra(e)),
    }
    let target = question.target();
    let created = chrono::Utc::now().timestamp();
    publish(shared, &target, StreamEntry::Started { model: model.clone(), created }).await;
    if let Some(e) = too_long {
        let failure = ReplyFailure { code: "prompt_too_long".into(), message: e.to_string() };
        return fail(shared, question, failure, vec![], String::new(), None, Usage::default()).await;
    }
    // The token quotas, checked again right before the call: messages accepted while the
    // quota still had room may find it spent by the replies before them.
    if let Some(spent) = shared.commands.tokens_exhausted(question.posted.author_id).await.map_err(infra)? {
        let failure = ReplyFailure { code: "token_quota_exceeded".into(), message: spent.to_string() };
        return fail(shared, question, failure, vec![], String::new(), None, Usage::default()).await;
    }
    let cancel = shared.register(reply_id);
    // A conversation started without a title is named after its first completed exchange.
    let name = conversation.title_pending;
    let outcome = stream_reply(shared, question, &model, prompt, parameters, &cancel, abort, name).await;
    shared.unregister(reply_id);
    outcome
}

/// Streams the reply and records its end; then names the conversation when `name`.
#[allow(clippy::too_many_arguments)]
async fn stream_reply(
    shared: &Arc<Shared>,
    question: &Question,
    model: &str,
    prompt: Prompt,
    parameters: Parameters,
    cancel: &CancellationToken,
    abort: &CancellationToken,
    name: bool,
) -> Result<(), ReplyError> {
    let reply_id = question.reply_id();
    let target = question.target();
    let began = Instant::now();
    if shared.streams.cancel_requested(reply_id).await.unwrap_or(false) {
        cancel.cancel();
    }
    let routed = tokio::select! {
        routed = shared.router.stream(model, prompt.messages.clone(), parameters) => routed,
        _ = cancel.cancelled() => {
            return cancelled(shared, question, vec![], String::new(), None, Usage::default()).await;
        }
        _ = abort.cancelled() => {
            let failure = stopped_failure();
            return fail(shared, question, failure, vec![], String::new(), None, Usage::default()).await;
        }
    };
    let mut reply = match routed {
        Ok(reply) => reply,
        Err(RouteFailure { attempts, error }) => {
            let code = match attempts.len() > 1 {
                true => "all_providers_failed",
                false => "provider_error",
            };
            let failure = ReplyFailure { code: code.into(), message: error.message.clone() };
            return fail(shared, question, failure, attempts, String::new(), None, Usage::default()).await;
        }
    };
    let first_token_ms = reply.first_token_at.duration_since(began).as_millis() as u64;
    let mut content = reply.first.clone();
    let mut usage: Option<Usage> = None;
    publish(shared, &target, StreamEntry::Delta { text: reply.first.clone() }).await;
    let mut renew = tokio::time::interval(shared.leases.ttl() / 3);
    renew.tick().await;
    let ending = loop {
        tokio::select! {
            item = reply.rest.next() => match item {
                Some(Ok(StreamItem::Delta(text))) => {
                    if !text.is_empty() {
                        content.push_str(&text);
                        publish(shared, &target, StreamEntry::Delta { text }).await;
                    }
                }
                Some(Ok(StreamItem::Usage(u))) => usage = Some(u),
                Some(Ok(StreamItem::Finished(reason))) => break Ending::Finished(reason),
                Some(Err(e)) => break Ending::Failed(e),
                None => break Ending::Failed(ProviderError::new(
                    colloquy_providers::ErrorClass::Connection,
                    "the provider's stream ended before the reply finished",
                )),
            },
            _ = cancel.cancelled() => break Ending::Cancelled,
            _ = abort.cancelled() => break Ending::Stopped,
            _ = renew.tick() => match shared.leases.renew(reply_id).await {
                Ok(true) => {}
                Ok(false) => break Ending::LeaseLost,
                Err(e) => tracing::warn!(error = %e, "Could not renew the reply's lease; trying again."),
            },
        }
    };
    // Closes the provider's connection (or stops the local model) before anything else.
    drop(reply.rest);
    let latency_ms = began.elapsed().as_millis() as u64;
    let mut attempts = reply.attempts;
    let (provider, upstream) = (reply.provider, reply.model);
    let usage = usage.unwrap_or_else(|| Usage {
        input_tokens: prompt.tokens as u32,
        output_tokens: shared.router.count_tokens(model, &[ChatMessage::new(Role::Assistant, content.clone())]) as u32,
    });
    shared.router.record_usage(&provider, &upstream, usage);
    match ending {
        Ending::Finished(reason) => {
            let finish_reason = finish_reason(&reason);
            let answer = name.then(|| content.clone());
            let completed = ReplyCompleted {
                reply_id,
                provider,
                model: upstream,
                content,
                usage: token_usage(usage),
                latency_ms,
                time_to_first_token_ms: first_token_ms,
                finish_reason: finish_reason.clone(),
                attempts: attempts.iter().map(attempt).collect(),
            };
            record(shared, question, |c, caller, id| {
                let completed = completed.clone();
                async move { c.complete_reply(&caller, id, completed).await }
            })
            .await?;
            let entry = StreamEntry::Completed { finish_reason, usage: stream_usage(usage) };
            publish(shared, &target, entry).await;
            if let Some(answer) = answer {
                super::titles::name(shared, question, model, &answer).await;
            }
            // Counted once naming is over too: a reply counted as completed has nothing left.
            shared.finished("completed");
            Ok(())
        }
        Ending::Failed(error) => {
            // After the first token the reply is never continued elsewhere: it fails here,
            // with what was said so far.
            if let Some(last) = attempts.last_mut() {
                last.outcome = AttemptOutcome::Failed;
                last.error_class = Some(error.class);
                last.error = Some(error.message.clone());
            }
            let failure = ReplyFailure { code: "provider_error".into(), message: error.message };
            fail(shared, question, failure, attempts, content, Some((provider, upstream)), usage).await
        }
        Ending::Cancelled => cancelled(shared, question, attempts, content, Some((provider, upstream)), usage).await,
        Ending::Stopped => {
            fail(shared, question, stopped_failure(), attempts, content, Some((provider, upstream)), usage).await
        }
        Ending::LeaseLost => {
            tracing::warn!(%reply_id, "Another worker took this reply over; leaving it to that worker.");
            Ok(())
        }
    }
}

fn stopped_failure() -> ReplyFailure {
    ReplyFailure { code: "worker_stopped".into(), message: "the assistant worker stopped during the reply".into() }
}

fn finish_reason(reason: &FinishReason) -> String {
    match reason {
        FinishReason::Stop => "stop".into(),
        FinishReason::Length => "length".into(),
        FinishReason::ContentFilter => "content_filter".into(),
        FinishReason::Other(other) => other.clone(),
    }
}

fn token_usage(u: Usage) -> TokenUsage {
    TokenUsage { input_tokens: u.input_tokens, output_tokens: u.output_tokens }
}

fn stream_usage(u: Usage) -> StreamUsage {
    StreamUsage { input_tokens: u.input_tokens, output_tokens: u.output_tokens }
}

/// An attempt as the reply's events record it.
fn attempt(a: &Attempt) -> ReplyAttempt {
    let outcome = match a.outcome {
        AttemptOutcome::Succeeded => "succeeded",
        AttemptOutcome::Failed => "failed",
        AttemptOutcome::Skipped => "skipped",
    };
    ReplyAttempt {
        provider: a.provider.clone(),
        model: a.model.clone(),
        outcome: outcome.into(),
        error_class: a
            .error_class
            .map(|c| serde_json::to_value(c).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()),
        error: a.error.clone(),
        status: a.status,
        latency_ms: a.latency_ms,
    }
}

/// Records the reply as failed and closes its stream.
async fn fail(
    shared: &Arc<Shared>,
    question: &Question,
    reason: ReplyFailure,
    attempts: Vec<Attempt>,
    partial: String,
    used: Option<(String, String)>,
    usage: Usage,
) -> Result<(), ReplyError> {
    tracing::warn!(code = %reason.code, message = %reason.message, "Reply failed.");
    let (provider, model) = used.unzip();
    let failed = ReplyFailed {
        reply_id: question.reply_id(),
        reason: reason.clone(),
        attempts: attempts.iter().map(attempt).collect(),
        partial_content: partial,
        provider,
        model,
        usage: token_usage(usage),
    };
    record(shared, question, |c, caller, id| {
        let failed = failed.clone();
        async move { c.fail_reply(&caller, id, failed).await }
    })
    .await?;
    let entry = StreamEntry::Failed { code: reason.code, message: reason.message };
    publish(shared, &question.target(), entry).await;
    shared.finished("failed");
    Ok(())
}

/// Records the reply as cancelled by its owner and closes its stream.
async fn cancelled(
    shared: &Arc<Shared>,
    question: &Question,
    attempts: Vec<Attempt>,
    partial: String,
    used: Option<(String, String)>,
    usage: Usage,
) -> Result<(), ReplyError> {
    tracing::info!("Reply cancelled.");
    let (provider, model) = used.unzip();
    let cancelled = ReplyCancelled {
        reply_id: question.reply_id(),
        cancelled_by: question.posted.author_id,
        partial_content: partial,
        usage: token_usage(usage),
        attempts: attempts.iter().map(attempt).collect(),
        provider,
        model,
    };
    record(shared, question, |c, caller, id| {
        let cancelled = cancelled.clone();
        async move { c.cancel_reply(&caller, id, cancelled).await }
    })
    .await?;
    publish(shared, &question.target(), StreamEntry::Cancelled { usage: stream_usage(usage) }).await;
    shared.finished("cancelled");
    Ok(())
}

/// Ends a reply whose worker stopped mid-way: failed, with the text its stream holds.
pub async fn end_abandoned(shared: &Arc<Shared>, target: ReplyTarget, caller: &Caller) -> Result<(), ReplyError> {
    let partial: String = shared
        .streams
        .read_after(target.reply_id, None)
        .await
        .map_err(infra)?
        .into_iter()
        .filter_map(|(_, entry)| match entry {
            StreamEntry::Delta { text } => Some(text),
            _ => None,
        })
        .collect();
    tracing::warn!(reply_id = %target.reply_id, "Ending a reply whose worker stopped.");
    let failed = ReplyFailed {
        reply_id: target.reply_id,
        reason: ReplyFailure {
            code: "worker_lost".into(),
            message: "the assistant worker answering this reply stopped".into(),
        },
        attempts: vec![],
        partial_content: partial,
        provider: None,
        model: None,
        usage: TokenUsage::default(),
    };
    let outcome = shared.commands.fail_reply(caller, target.conversation_id, failed).await;
    match outcome {
        Ok(_) => {
            let entry = StreamEntry::Failed {
                code: "worker_lost".into(),
                message: "the assistant worker answering this reply stopped".into(),
            };
            publish(shared, &target, entry).await;
            shared.finished("failed");
            Ok(())
        }
        // Already ended (by its worker, just in time, or by another sweeper).
        Err(CommandError::Rejected(_)) => Ok(()),
        Err(e) => Err(infra(e)),
    }
}

/// Runs a final-event command until it is recorded or refused; an outage is retried (the
/// reply's lease is renewed meanwhile, so no other worker takes it over).
async fn record<F, Fut>(shared: &Arc<Shared>, question: &Question, command: F) -> Result<(), ReplyError>
where
    F: Fn(Arc<crate::Commands>, Caller, Uuid) -> Fut,
    Fut: std::future::Future<Output = Result<crate::Committed, CommandError<ConversationError>>>,
{
    let mut backoff = Duration::from_millis(100);
    for _ in 0..8 {
        match command(shared.commands.clone(), question.caller.clone(), question.conversation_id).await {
            Ok(_) => return Ok(()),
            // The reply was ended by someone else (a sweeper that took it over).
            Err(CommandError::Rejected(rejection)) => {
                tracing::warn!(%rejection, "The reply's final event was refused.");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "Could not record the reply's end; retrying.");
                let _ = shared.leases.renew(question.reply_id()).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    Err(infra("the reply's final event could not be recorded"))
}

/// Appends to the reply's stream. Streaming is best effort: the reply's events are the
/// record, and a client that missed deltas gets the whole text from the messages query.
async fn publish(shared: &Arc<Shared>, target: &ReplyTarget, entry: StreamEntry) {
    if let Err(e) = shared.streams.append(target, &entry).await {
        tracing::warn!(reply_id = %target.reply_id, error = %e, "Could not append to the reply's stream.");
    }
}

#[cfg(test)]
mod tests {
    use colloquy_domain::conversation::{Conversation, ReplyParameters};

    use super::parameters_for;

    #[test]
    fn an_api_conversation_answers_with_its_requests_parameters_within_the_models_limit() {
        let mut conversation = Conversation::default();
        let plain = parameters_for(&conversation, 512);
        assert_eq!((plain.max_tokens, plain.temperature, plain.top_p), (Some(512), None, None));
        conversation.api_parameters =
            Some(ReplyParameters { max_tokens: Some(40), temperature: Some(0.3), top_p: Some(0.9) });
        let asked = parameters_for(&conversation, 512);
        assert_eq!((asked.max_tokens, asked.temperature, asked.top_p), (Some(40), Some(0.3), Some(0.9)));
        conversation.api_parameters = Some(ReplyParameters { max_tokens: Some(4096), temperature: None, top_p: None });
        assert_eq!(parameters_for(&conversation, 512).max_tokens, Some(512));
        conversation.api_parameters = Some(ReplyParameters::default());
        assert_eq!(parameters_for(&conversation, 512).max_tokens, Some(512));
    }
}
