//! colloquy's domain: aggregates, their commands, events and errors, value types, and the
//! registry that the rest of the system derives each aggregate's wiring from.
//!
//! Nothing in this crate does I/O. Aggregates decide from their own state, from what the
//! command carries and from ports (traits) that `colloquy-infra` implements; the command
//! service in `colloquy-commands` loads and stores them.

pub mod decision;
mod double_option;
pub mod event_catalog;
pub mod metadata;
pub mod registry;
pub mod values;

/// Declares the aggregate modules and the registry in one list: adding an aggregate is its
/// folder plus one line here (see `docs/adding-an-aggregate.md`).
macro_rules! aggregates {
    ($($module:ident::$aggregate:ident),+ $(,)?) => {
        $( pub mod $module; pub use $module::$aggregate; )+

        /// Every aggregate type the system runs, in registration order (built once).
        pub fn aggregates() -> &'static [registry::AggregateType] {
            static REGISTRY: std::sync::LazyLock<Vec<registry::AggregateType>> = std::sync::LazyLock::new(|| {
                vec![$( registry::AggregateType::of::<$module::$aggregate>() ),+]
            });
            &REGISTRY
        }
    };
}

aggregates! {
    user::User,
    conversation::Conversation,
    file::File,
    knowledge::KnowledgeDocument,
}
