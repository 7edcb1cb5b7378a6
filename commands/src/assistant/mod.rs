//! The assistant worker (`colloquy assistant`): a Kafka consumer group on the conversation
//! topic that answers every posted user message. For each one it claims the reply's lease,
//! builds the prompt, records `ReplyStarted`, streams the model's reply through the provider
//! router into the reply's Redis stream (which the API relays to clients), and records how
//! the reply ended: completed, failed (partial text kept) or cancelled.
//!
//! Guarantees: a redelivered `UserMessagePosted` yields one reply (reply ids derive from the
//! message id, and the aggregate refuses a second start); offsets are stored only once every
//! earlier message of the partition is answered ([`offsets`]); a worker that dies mid-reply
//! leaves a lease that expires, and another worker ends that reply ([`leases`]).

mod grounding;
pub mod leases;
pub mod offsets;
pub mod prompt;
mod reply;
mod titles;
mod worker;

pub use grounding::Grounding;
pub use worker::{Assistant, AssistantDeps, WORKER_NAME};
