//! Reply identity: the id of the assistant's reply to a user message is derived from the
//! message's id, so every worker that handles a (re)delivered `UserMessagePosted` names the
//! same reply, and the aggregate can refuse a second one.

use uuid::Uuid;

/// The UUID v5 namespace of reply ids. Fixed forever: changing it would give every
/// message a second reply id.
pub const REPLY_NAMESPACE: Uuid = Uuid::from_u128(0x85c4_f9a3_7410_43ca_aeba_75c7_b132_bd7b);

/// The id of the reply to user message `message_id`: UUID v5 under [`REPLY_NAMESPACE`] of
/// the message id's canonical text (lower-case, hyphenated), so SQL can derive it too:
/// `uuid_generate_v5('85c4f9a3-7410-43ca-aeba-75c7b132bd7b', message_id::text)`.
pub fn reply_id_for(message_id: Uuid) -> Uuid {
    Uuid::new_v5(&REPLY_NAMESPACE, message_id.hyphenated().to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reply_id_is_a_pure_function_of_the_message_id() {
        let message = Uuid::from_u128(42);
        assert_eq!(reply_id_for(message), reply_id_for(message));
        assert_ne!(reply_id_for(message), reply_id_for(Uuid::from_u128(43)));
        assert_ne!(reply_id_for(message), message);
        assert_eq!(reply_id_for(message).get_version_num(), 5);
    }

    // Pinned: reply ids are stored in events; a change here would orphan every reply.
    #[test]
    fn the_derivation_is_stable() {
        assert_eq!(reply_id_for(Uuid::nil()).to_string(), "030c50e1-5d33-5209-9be7-22ea88764f7d");
    }
}
