use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ApiKeyCreated, ApiKeyRevoked, ProfileUpdated, API_KEYS_MAX, API_KEY_NAME_MAX, Role, UserCommand, UserDeactivated, UserError, UserEvent, UserRegistered, FULL_NAME_MAX};
use crate::decision::Refusal;
use crate::registry::Registered;
use crate::values::{self, bounded_text, EmailAddress, TextError, TextField, MODEL_NAME_MAX, SYSTEM_PROMPT_MAX};

/// Events between User snapshots. Users have few events, but profile updates have no bound
/// and every command a user's conversations start reads the User: snapshots keep that load
/// flat.
pub const SNAPSHOT_EVERY: usize = 20;

/// Whether the account can be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum UserStatus {
    /// No `UserRegistered` yet.
    #[default]
    Unregistered,
    /// Registered and usable.
    Active,
    /// Deactivated; terminal.
    Deactivated,
}

/// A registered person. Holds only what its decisions need. Stored in snapshots: a field
/// added later must default (`#[serde(default)]`), or old snapshots stop loading.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct User {
    /// The id, once registered.
    pub id: Option<Uuid>,
    /// The normalised address.
    pub email: Option<EmailAddress>,
    /// The display name.
    pub full_name: String,
    /// The default model for new conversations.
    pub default_model: Option<String>,
    /// The default system prompt for new conversations.
    pub system_prompt: Option<String>,
    /// The role.
    pub role: Role,
    /// Lifecycle state.
    pub status: UserStatus,
    /// The live API keys' ids (at most [`API_KEYS_MAX`]).
    pub api_keys: Vec<Uuid>,
}

impl User {
    fn ensure_active(&self) -> Result<(), UserError> {
        match self.status {
            UserStatus::Unregistered => Err(UserError::NotRegistered),
            UserStatus::Deactivated => Err(UserError::Deactivated),
            UserStatus::Active => Ok(()),
        }
    }
}

/// The rejection for a refused piece of text: `length` when it is empty or too long.
fn text_error(field: TextField, length: UserError) -> impl FnOnce(TextError) -> UserError {
    move |e| match e {
        TextError::Length => length,
        TextError::ControlCharacter => UserError::ControlCharacter { field },
        TextError::InvisibleCharacter => UserError::InvisibleCharacter { field },
    }
}

fn full_name(raw: &str) -> Result<String, UserError> {
    values::name_text(raw, FULL_NAME_MAX)
        .map_err(text_error(TextField::FullName, UserError::InvalidFullName { max: FULL_NAME_MAX }))
}

fn model(raw: &str) -> Result<String, UserError> {
    values::model_name(raw).map_err(text_error(TextField::Model, UserError::InvalidModel { max: MODEL_NAME_MAX }))
}

fn system_prompt(raw: &str) -> Result<String, UserError> {
    values::system_prompt(raw)
        .map_err(text_error(TextField::SystemPrompt, UserError::InvalidSystemPrompt { max: SYSTEM_PROMPT_MAX }))
}

impl Registered for User {
    const SNAPSHOT_EVERY: Option<usize> = Some(SNAPSHOT_EVERY);
}

impl Aggregate for User {
    const TYPE: &'static str = "User";
    type Command = UserCommand;
    type Event = UserEvent;
    type Error = Refusal<UserError>;
    type Services = ();

    async fn handle(
        &mut self,
        command: UserCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Refusal<UserError>> {
        match command {
            UserCommand::RegisterUser { user_id, email, full_name: name } => {
                if self.status != UserStatus::Unregistered {
                    return Err(UserError::AlreadyRegistered.into());
                }
                let email = EmailAddress::parse(&email).ok_or(UserError::InvalidEmail)?;
                let event = UserRegistered { user_id, email, full_name: full_name(&name)?, role: Role::Member };
                sink.write(UserEvent::UserRegistered(event), self).await;
            }
            UserCommand::UpdateProfile { full_name: name, default_model, system_prompt } => {
                self.ensure_active()?;
                if name.is_none() && default_model.is_none() && system_prompt.is_none() {
                    return Err(UserError::EmptyUpdate.into());
                }
                let event = ProfileUpdated {
                    full_name: name.map(|n| full_name(&n)).transpose()?,
                    default_model: default_model.map(|m| m.as_deref().map(model).transpose()).transpose()?,
                    system_prompt: system_prompt.map(|p| p.as_deref().map(self::system_prompt).transpose()).transpose()?,
                };
                sink.write(UserEvent::ProfileUpdated(event), self).await;
            }
            UserCommand::CreateApiKey { key_id, name, hint } => {
                self.ensure_active()?;
                let name = values::name_text(&name, API_KEY_NAME_MAX)
                    .map_err(text_error(TextField::ApiKeyName, UserError::InvalidApiKeyName { max: API_KEY_NAME_MAX }))?;
                if self.api_keys.contains(&key_id) {
                    return Ok(());
                }
                if self.api_keys.len() >= API_KEYS_MAX {
                    return Err(UserError::TooManyApiKeys { max: API_KEYS_MAX }.into());
                }
                sink.write(UserEvent::ApiKeyCreated(ApiKeyCreated { key_id, name, hint }), self).await;
            }
            UserCommand::RevokeApiKey { key_id } => {
                self.ensure_active()?;
                if !self.api_keys.contains(&key_id) {
                    return Err(UserError::ApiKeyNotFound.into());
                }
                sink.write(UserEvent::ApiKeyRevoked(ApiKeyRevoked { key_id }), self).await;
            }
            UserCommand::DeactivateUser { reason } => {
                self.ensure_active()?;
                let reason = reason.and_then(|r| bounded_text(&r, 1_000));
                sink.write(UserEvent::UserDeactivated(UserDeactivated { reason }), self).await;
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: UserEvent) {
        match event {
            UserEvent::UserRegistered(e) => {
                self.id = Some(e.user_id);
                self.email = Some(e.email);
                self.full_name = e.full_name;
                self.role = e.role;
                self.status = UserStatus::Active;
            }
            UserEvent::ProfileUpdated(e) => {
                if let Some(name) = e.full_name {
                    self.full_name = name;
                }
                if let Some(model) = e.default_model {
                    self.default_model = model;
                }
                if let Some(prompt) = e.system_prompt {
                    self.system_prompt = prompt;
                }
            }
            UserEvent::UserDeactivated(_) => self.status = UserStatus::Deactivated,
            UserEvent::ApiKeyCreated(e) => self.api_keys.push(e.key_id),
            UserEvent::ApiKeyRevoked(e) => self.api_keys.retain(|k| *k != e.key_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    type UserTest = TestFramework<User>;

    fn id() -> Uuid {
        Uuid::from_u128(7)
    }

    fn registered() -> UserEvent {
        UserEvent::UserRegistered(UserRegistered {
            user_id: id(),
            email: EmailAddress::parse("ada@example.com").unwrap(),
            full_name: "Ada Lovelace".into(),
            role: Role::Member,
        })
    }

    fn deactivated() -> UserEvent {
        UserEvent::UserDeactivated(UserDeactivated { reason: None })
    }

    fn register(email: &str, name: &str) -> UserCommand {
        UserCommand::RegisterUser { user_id: id(), email: email.into(), full_name: name.into() }
    }

    /// An update of the default model alone: `None` leaves it, `Some(None)` clears it.
    fn update_model(model: Option<Option<String>>) -> UserCommand {
        UserCommand::UpdateProfile { full_name: None, default_model: model, system_prompt: None }
    }

    async fn expect_err(given: Vec<UserEvent>, cmd: UserCommand, err: UserError) {
        UserTest::with(()).given(given).when_async(cmd).await.then_expect_error(Refusal::Rejected(err));
    }

    // Registering.

    #[tokio::test]
    async fn registering_normalises_the_email_and_trims_the_name() {
        UserTest::with(())
            .given_no_previous_events()
            .when_async(register(" ADA@example.com", "  Ada Lovelace "))
            .await
            .then_expect_events(vec![registered()]);
    }

    #[tokio::test]
    async fn registering_twice_is_rejected() {
        expect_err(vec![registered()], register("ada@example.com", "Ada"), UserError::AlreadyRegistered).await;
    }

    // Deactivation is terminal: the id is not free to register again.
    #[tokio::test]
    async fn registering_a_deactivated_user_is_rejected() {
        expect_err(vec![registered(), deactivated()], register("ada@example.com", "Ada"), UserError::AlreadyRegistered)
            .await;
    }

    #[tokio::test]
    async fn an_implausible_email_is_rejected() {
        expect_err(vec![], register("not-an-email", "Ada"), UserError::InvalidEmail).await;
    }

    #[tokio::test]
    async fn a_blank_name_is_rejected_at_registration() {
        expect_err(vec![], register("ada@example.com", "   "), UserError::InvalidFullName { max: FULL_NAME_MAX }).await;
    }

    #[tokio::test]
    async fn an_overlong_name_is_rejected_at_registration() {
        expect_err(
            vec![],
            register("ada@example.com", &"x".repeat(FULL_NAME_MAX + 1)),
            UserError::InvalidFullName { max: FULL_NAME_MAX },
        )
        .await;
    }

    #[tokio::test]
    async fn a_name_with_a_right_to_left_override_is_rejected_at_registration() {
        expect_err(
            vec![],
            register("ada@example.com", "Ada \u{202E}ecalevol"),
            UserError::InvisibleCharacter { field: TextField::FullName },
        )
        .await;
    }

    #[tokio::test]
    async fn a_name_with_a_nul_is_rejected_at_registration() {
        expect_err(
            vec![],
            register("ada@example.com", "Ada\u{0}"),
            UserError::ControlCharacter { field: TextField::FullName },
        )
        .await;
    }

    // A full-width address is the same address: the event holds the normalised form.
    #[tokio::test]
    async fn registering_normalises_a_full_width_email() {
        UserTest::with(())
            .given_no_previous_events()
            .when_async(register("ＡＤＡ＠ｅｘａｍｐｌｅ．ｃｏｍ", "Ada Lovelace"))
            .await
            .then_expect_events(vec![registered()]);
    }

    // Updating the profile.

    #[tokio::test]
    async fn a_default_model_with_a_zero_width_character_is_rejected() {
        expect_err(
            vec![registered()],
            update_model(Some(Some("off\u{FEFF}line".into()))),
            UserError::InvisibleCharacter { field: TextField::Model },
        )
        .await;
    }

    #[tokio::test]
    async fn a_system_prompt_with_a_bidi_override_is_rejected() {
        expect_err(
            vec![registered()],
            UserCommand::UpdateProfile {
                full_name: None,
                default_model: None,
                system_prompt: Some(Some("Be brief\u{202D}.".into())),
            },
            UserError::InvisibleCharacter { field: TextField::SystemPrompt },
        )
        .await;
    }

    #[tokio::test]
    async fn an_update_emits_only_the_named_fields() {
        UserTest::with(())
            .given(vec![registered()])
            .when_async(UserCommand::UpdateProfile {
                full_name: Some("Countess Lovelace".into()),
                default_model: Some(None),
                system_prompt: None,
            })
            .await
            .then_expect_events(vec![UserEvent::ProfileUpdated(ProfileUpdated {
                full_name: Some("Countess Lovelace".into()),
                default_model: Some(None),
                system_prompt: None,
            })]);
    }

    // Clearing is `Some(None)` in the event, distinct from `None` (left as it is).
    #[tokio::test]
    async fn clearing_the_default_model_emits_an_explicit_clear() {
        UserTest::with(()).given(vec![registered()]).when_async(update_model(Some(None))).await.then_expect_events(
            vec![UserEvent::ProfileUpdated(ProfileUpdated {
                full_name: None,
                default_model: Some(None),
                system_prompt: None,
            })],
        );
    }

    #[tokio::test]
    async fn a_new_default_model_is_trimmed() {
        UserTest::with(())
            .given(vec![registered()])
            .when_async(update_model(Some(Some(" offline ".into()))))
            .await
            .then_expect_events(vec![UserEvent::ProfileUpdated(ProfileUpdated {
                full_name: None,
                default_model: Some(Some("offline".into())),
                system_prompt: None,
            })]);
    }

    #[tokio::test]
    async fn updating_an_unregistered_user_is_rejected() {
        expect_err(vec![], update_model(Some(None)), UserError::NotRegistered).await;
    }

    #[tokio::test]
    async fn updating_a_deactivated_user_is_rejected() {
        expect_err(vec![registered(), deactivated()], update_model(Some(None)), UserError::Deactivated).await;
    }

    #[tokio::test]
    async fn an_update_that_names_no_field_is_rejected() {
        expect_err(vec![registered()], update_model(None), UserError::EmptyUpdate).await;
    }

    #[tokio::test]
    async fn an_overlong_default_model_is_rejected() {
        expect_err(
            vec![registered()],
            update_model(Some(Some("m".repeat(MODEL_NAME_MAX + 1)))),
            UserError::InvalidModel { max: MODEL_NAME_MAX },
        )
        .await;
    }

    #[tokio::test]
    async fn a_blank_system_prompt_is_rejected() {
        expect_err(
            vec![registered()],
            UserCommand::UpdateProfile { full_name: None, default_model: None, system_prompt: Some(Some(" ".into())) },
            UserError::InvalidSystemPrompt { max: SYSTEM_PROMPT_MAX },
        )
        .await;
    }

    #[tokio::test]
    async fn a_blank_name_is_rejected_on_update() {
        expect_err(
            vec![registered()],
            UserCommand::UpdateProfile { full_name: Some(" ".into()), default_model: None, system_prompt: None },
            UserError::InvalidFullName { max: FULL_NAME_MAX },
        )
        .await;
    }

    // Deactivating.

    #[tokio::test]
    async fn deactivating_emits_deactivated_with_a_trimmed_reason() {
        UserTest::with(())
            .given(vec![registered()])
            .when_async(UserCommand::DeactivateUser { reason: Some(" left ".into()) })
            .await
            .then_expect_events(vec![UserEvent::UserDeactivated(UserDeactivated { reason: Some("left".into()) })]);
    }

    #[tokio::test]
    async fn deactivating_twice_is_rejected() {
        expect_err(
            vec![registered(), deactivated()],
            UserCommand::DeactivateUser { reason: None },
            UserError::Deactivated,
        )
        .await;
    }

    #[tokio::test]
    async fn deactivating_an_unregistered_user_is_rejected() {
        expect_err(vec![], UserCommand::DeactivateUser { reason: None }, UserError::NotRegistered).await;
    }

    #[test]
    fn apply_builds_state() {
        let mut user = User::default();
        user.apply(registered());
        user.apply(UserEvent::ProfileUpdated(ProfileUpdated {
            full_name: None,
            default_model: Some(Some("offline".into())),
            system_prompt: Some(Some("Be brief.".into())),
        }));
        assert_eq!(user.status, UserStatus::Active);
        assert_eq!(user.default_model.as_deref(), Some("offline"));
        assert_eq!(user.system_prompt.as_deref(), Some("Be brief."));
        assert_eq!(user.full_name, "Ada Lovelace");
        user.apply(UserEvent::UserDeactivated(UserDeactivated { reason: None }));
        assert_eq!(user.status, UserStatus::Deactivated);
    }

    // API keys.

    fn key(n: u128) -> Uuid {
        Uuid::from_u128(100 + n)
    }

    fn key_created(n: u128) -> UserEvent {
        UserEvent::ApiKeyCreated(ApiKeyCreated { key_id: key(n), name: format!("key {n}"), hint: "abcd".into() })
    }

    fn create_key(n: u128, name: &str) -> UserCommand {
        UserCommand::CreateApiKey { key_id: key(n), name: name.into(), hint: "abcd".into() }
    }

    #[tokio::test]
    async fn an_api_key_is_recorded_with_its_trimmed_name_and_no_secret() {
        UserTest::with(())
            .given(vec![registered()])
            .when_async(create_key(1, "  key 1 "))
            .await
            .then_expect_events(vec![key_created(1)]);
    }

    #[tokio::test]
    async fn creating_the_same_key_twice_records_it_once() {
        UserTest::with(()).given(vec![registered(), key_created(1)]).when_async(create_key(1, "key 1")).await.then_expect_events(vec![]);
    }

    #[tokio::test]
    async fn api_key_names_are_checked() {
        expect_err(vec![registered()], create_key(1, "  "), UserError::InvalidApiKeyName { max: API_KEY_NAME_MAX }).await;
        expect_err(
            vec![registered()],
            create_key(1, "line\u{1b}[31m"),
            UserError::ControlCharacter { field: TextField::ApiKeyName },
        )
        .await;
        let long = "k".repeat(API_KEY_NAME_MAX + 1);
        expect_err(vec![registered()], create_key(1, &long), UserError::InvalidApiKeyName { max: API_KEY_NAME_MAX }).await;
    }

    #[tokio::test]
    async fn live_api_keys_are_bounded_and_a_revoked_one_frees_its_place() {
        let mut given = vec![registered()];
        given.extend((0..API_KEYS_MAX as u128).map(key_created));
        expect_err(given.clone(), create_key(99, "one more"), UserError::TooManyApiKeys { max: API_KEYS_MAX }).await;
        given.push(UserEvent::ApiKeyRevoked(ApiKeyRevoked { key_id: key(0) }));
        UserTest::with(()).given(given).when_async(create_key(99, "one more")).await.then_expect_events(vec![
            UserEvent::ApiKeyCreated(ApiKeyCreated { key_id: key(99), name: "one more".into(), hint: "abcd".into() }),
        ]);
    }

    #[tokio::test]
    async fn revoking_needs_a_live_key_of_the_users() {
        UserTest::with(())
            .given(vec![registered(), key_created(1)])
            .when_async(UserCommand::RevokeApiKey { key_id: key(1) })
            .await
            .then_expect_events(vec![UserEvent::ApiKeyRevoked(ApiKeyRevoked { key_id: key(1) })]);
        let revoked = UserEvent::ApiKeyRevoked(ApiKeyRevoked { key_id: key(1) });
        expect_err(vec![registered(), key_created(1), revoked], UserCommand::RevokeApiKey { key_id: key(1) }, UserError::ApiKeyNotFound)
            .await;
        expect_err(vec![registered()], UserCommand::RevokeApiKey { key_id: key(2) }, UserError::ApiKeyNotFound).await;
    }

    #[tokio::test]
    async fn a_deactivated_user_gets_no_api_key() {
        expect_err(vec![registered(), deactivated()], create_key(1, "late"), UserError::Deactivated).await;
    }
}
