use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ProfileUpdated, Role, UserCommand, UserDeactivated, UserError, UserEvent, UserRegistered, FULL_NAME_MAX};
use crate::decision::Refusal;
use crate::registry::Registered;
use crate::values::{self, bounded_text, EmailAddress, MODEL_NAME_MAX, SYSTEM_PROMPT_MAX};

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

/// A registered person. Holds only what its decisions need.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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

fn full_name(raw: &str) -> Result<String, UserError> {
    bounded_text(raw, FULL_NAME_MAX).ok_or(UserError::InvalidFullName { max: FULL_NAME_MAX })
}

fn optional(
    raw: Option<String>,
    parse: fn(&str) -> Option<String>,
    err: UserError,
) -> Result<Option<String>, UserError> {
    raw.map(|r| parse(&r).ok_or(err)).transpose()
}

/// Users have few events: always replayed, never snapshotted.
impl Registered for User {
    const SNAPSHOT_EVERY: Option<usize> = None;
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
                    default_model: default_model
                        .map(|m| optional(m, values::model_name, UserError::InvalidModel { max: MODEL_NAME_MAX }))
                        .transpose()?,
                    system_prompt: system_prompt
                        .map(|p| {
                            optional(p, values::system_prompt, UserError::InvalidSystemPrompt { max: SYSTEM_PROMPT_MAX })
                        })
                        .transpose()?,
                };
                sink.write(UserEvent::ProfileUpdated(event), self).await;
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

    fn register(email: &str, name: &str) -> UserCommand {
        UserCommand::RegisterUser { user_id: id(), email: email.into(), full_name: name.into() }
    }

    #[tokio::test]
    async fn register_emits_registered_with_normalised_email() {
        UserTest::with(())
            .given_no_previous_events()
            .when_async(register(" ADA@example.com", "  Ada Lovelace "))
            .await
            .then_expect_events(vec![registered()]);
    }

    #[tokio::test]
    async fn register_twice_is_rejected() {
        UserTest::with(())
            .given(vec![registered()])
            .when_async(register("ada@example.com", "Ada"))
            .await
            .then_expect_error(Refusal::Rejected(UserError::AlreadyRegistered));
    }

    #[tokio::test]
    async fn register_rejects_bad_email_and_name() {
        UserTest::with(())
            .given_no_previous_events()
            .when_async(register("not-an-email", "Ada"))
            .await
            .then_expect_error(Refusal::Rejected(UserError::InvalidEmail));
        UserTest::with(())
            .given_no_previous_events()
            .when_async(register("ada@example.com", "   "))
            .await
            .then_expect_error(Refusal::Rejected(UserError::InvalidFullName { max: FULL_NAME_MAX }));
        UserTest::with(())
            .given_no_previous_events()
            .when_async(register("ada@example.com", &"x".repeat(FULL_NAME_MAX + 1)))
            .await
            .then_expect_error(Refusal::Rejected(UserError::InvalidFullName { max: FULL_NAME_MAX }));
    }

    #[tokio::test]
    async fn update_profile_emits_only_named_fields() {
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

    #[tokio::test]
    async fn update_profile_rejections() {
        let update = |model: Option<Option<String>>| UserCommand::UpdateProfile {
            full_name: None,
            default_model: model,
            system_prompt: None,
        };
        UserTest::with(())
            .given_no_previous_events()
            .when_async(update(Some(None)))
            .await
            .then_expect_error(Refusal::Rejected(UserError::NotRegistered));
        UserTest::with(())
            .given(vec![registered()])
            .when_async(update(None))
            .await
            .then_expect_error(Refusal::Rejected(UserError::EmptyUpdate));
        UserTest::with(())
            .given(vec![registered()])
            .when_async(update(Some(Some("m".repeat(MODEL_NAME_MAX + 1)))))
            .await
            .then_expect_error(Refusal::Rejected(UserError::InvalidModel { max: MODEL_NAME_MAX }));
        UserTest::with(())
            .given(vec![registered()])
            .when_async(UserCommand::UpdateProfile {
                full_name: None,
                default_model: None,
                system_prompt: Some(Some(" ".into())),
            })
            .await
            .then_expect_error(Refusal::Rejected(UserError::InvalidSystemPrompt { max: SYSTEM_PROMPT_MAX }));
        UserTest::with(())
            .given(vec![registered(), UserEvent::UserDeactivated(UserDeactivated { reason: None })])
            .when_async(update(Some(None)))
            .await
            .then_expect_error(Refusal::Rejected(UserError::Deactivated));
    }

    #[tokio::test]
    async fn deactivate_once() {
        UserTest::with(())
            .given(vec![registered()])
            .when_async(UserCommand::DeactivateUser { reason: Some(" left ".into()) })
            .await
            .then_expect_events(vec![UserEvent::UserDeactivated(UserDeactivated { reason: Some("left".into()) })]);
        UserTest::with(())
            .given(vec![registered(), UserEvent::UserDeactivated(UserDeactivated { reason: None })])
            .when_async(UserCommand::DeactivateUser { reason: None })
            .await
            .then_expect_error(Refusal::Rejected(UserError::Deactivated));
        UserTest::with(())
            .given_no_previous_events()
            .when_async(UserCommand::DeactivateUser { reason: None })
            .await
            .then_expect_error(Refusal::Rejected(UserError::NotRegistered));
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
        assert_eq!(user.full_name, "Ada Lovelace");
        user.apply(UserEvent::UserDeactivated(UserDeactivated { reason: None }));
        assert_eq!(user.status, UserStatus::Deactivated);
    }
}
