//! Value types shared by several aggregates, validated on construction.

use serde::{Deserialize, Serialize};

/// Longest accepted e-mail address (RFC 5321 path limit).
pub const EMAIL_MAX_LEN: usize = 254;

/// A syntactically valid, normalised (trimmed, lower-cased) e-mail address.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Parses and normalises an address; `None` when it is not a plausible address.
    ///
    /// Deliberately lenient (one `@`, a non-empty local part, a dotted domain, no
    /// whitespace): the only real proof of an address is a message that reaches it.
    pub fn parse(raw: &str) -> Option<Self> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() || email.len() > EMAIL_MAX_LEN {
            return None;
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        let (local, domain) = email.split_once('@')?;
        if local.is_empty() || local.len() > 64 || domain.contains('@') {
            return None;
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 || labels.iter().any(|l| l.is_empty() || l.starts_with('-') || l.ends_with('-')) {
            return None;
        }
        Some(Self(email))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest accepted model name, in characters.
pub const MODEL_NAME_MAX: usize = 200;
/// Longest accepted system prompt, in characters.
pub const SYSTEM_PROMPT_MAX: usize = 20_000;
/// Longest accepted title, in characters.
pub const TITLE_MAX: usize = 200;

/// A model name (`gpt-4o`, `local/smollm2-135m`): trimmed, 1 to [`MODEL_NAME_MAX`] characters.
pub fn model_name(raw: &str) -> Option<String> {
    bounded_text(raw, MODEL_NAME_MAX)
}

/// A system prompt: trimmed, 1 to [`SYSTEM_PROMPT_MAX`] characters.
pub fn system_prompt(raw: &str) -> Option<String> {
    bounded_text(raw, SYSTEM_PROMPT_MAX)
}

/// A title: trimmed, 1 to [`TITLE_MAX`] characters.
pub fn title(raw: &str) -> Option<String> {
    bounded_text(raw, TITLE_MAX)
}

/// Trims `raw` and checks it holds between 1 and `max` characters.
///
/// Returns the trimmed text, or `None` when it is empty or too long.
pub fn bounded_text(raw: &str, max: usize) -> Option<String> {
    let text = raw.trim();
    let len = text.chars().count();
    (len > 0 && len <= max && !text.chars().any(|c| c.is_control() && c != '\n' && c != '\t')).then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn email_is_normalised() {
        let email = EmailAddress::parse("  Ada@Example.COM ").map(|e| e.to_string());
        assert_eq!(email.as_deref(), Some("ada@example.com"));
    }

    #[test]
    fn implausible_emails_are_rejected() {
        for bad in
            ["", "ada", "ada@", "@example.com", "ada@example", "a b@example.com", "a@b@c.com", "ada@.com", "ada@-x.com"]
        {
            assert!(EmailAddress::parse(bad).is_none(), "{bad} should be rejected");
        }
    }

    proptest! {
        #[test]
        fn parsed_emails_are_stable_under_reparse(local in "[a-z0-9._+-]{1,30}", domain in "[a-z0-9]{1,20}\\.[a-z]{2,6}") {
            let raw = format!("{local}@{domain}");
            let parsed = EmailAddress::parse(&raw);
            prop_assert!(parsed.is_some());
            let again = parsed.as_ref().and_then(|e| EmailAddress::parse(e.as_str()));
            prop_assert_eq!(parsed, again);
        }

        #[test]
        fn bounded_text_never_exceeds_its_bound(s in "\\PC{0,80}", max in 1usize..40) {
            if let Some(t) = bounded_text(&s, max) {
                prop_assert!(t.chars().count() <= max);
                prop_assert!(!t.is_empty());
                prop_assert_eq!(t.trim(), t.as_str());
            }
        }
    }
}
