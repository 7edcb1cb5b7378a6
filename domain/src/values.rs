//! Value types shared by several aggregates, validated on construction, and the character
//! rules free text is held to.

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// Longest accepted e-mail address (RFC 5321 path limit).
pub const EMAIL_MAX_LEN: usize = 254;

/// A syntactically valid, normalised e-mail address: trimmed, in Unicode NFKC, lower-cased.
/// Uniqueness is decided on this form, so `ａｄａ@ｅｘａｍｐｌｅ.ｃｏｍ` (full-width) and
/// `Ada@Example.com` are the same address as `ada@example.com`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(transparent)]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Parses and normalises an address; `None` when it is not a plausible address.
    ///
    /// Deliberately lenient (one `@`, a non-empty local part, a dotted domain, no
    /// whitespace): the only real proof of an address is a message that reaches it.
    pub fn parse(raw: &str) -> Option<Self> {
        // Compatibility composition first (full-width letters, ligatures, ...), then case:
        // lower-casing can itself produce text that NFKC would change, so normalise again.
        let email: String = raw.trim().nfkc().collect::<String>().to_lowercase().nfkc().collect();
        let email = email.trim().to_string();
        if email.is_empty() || email.len() > EMAIL_MAX_LEN {
            return None;
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control() || is_invisible(c)) {
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

/// Why a piece of free text was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    /// Empty (after trimming, where the field is trimmed) or longer than its limit.
    Length,
    /// A control character (NUL, ESC, DEL, C1, ...) other than the line breaks and tab the
    /// field allows.
    ControlCharacter,
    /// A bidirectional override or isolate (U+202A–U+202E, U+2066–U+2069) or a zero-width
    /// character (U+200B–U+200D, U+2060, U+FEFF): invisible, they make text read otherwise
    /// than it is stored ("Trojan Source" tricks, look-alike names).
    InvisibleCharacter,
}

/// Which free-text field a character rule refused, for messages and error payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextField {
    /// A conversation title.
    Title,
    /// Message text.
    Message,
    /// A model name.
    Model,
    /// A system prompt.
    SystemPrompt,
    /// A person's full name.
    FullName,
    /// The name of an uploaded file.
    FileName,
    /// A knowledge document's tag.
    Tag,
    /// A knowledge document's category.
    Category,
    /// A knowledge document's text.
    DocumentText,
    /// The name of an API key.
    ApiKeyName,
}

impl std::fmt::Display for TextField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Title => "title",
            Self::Message => "message",
            Self::Model => "model name",
            Self::SystemPrompt => "system prompt",
            Self::FullName => "full name",
            Self::ApiKeyName => "API key name",
            Self::FileName => "file name",
            Self::Tag => "tag",
            Self::Category => "category",
            Self::DocumentText => "document text",
        })
    }
}

/// Whether `c` is a bidirectional override/isolate or a zero-width character.
pub fn is_invisible(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}')
}

/// The characters a one-line name (title, full name, model name) may not hold: control
/// characters but tab and line feed (which older titles already use), and invisible ones.
fn check_name_chars(text: &str) -> Result<(), TextError> {
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            return Err(TextError::ControlCharacter);
        }
        if is_invisible(c) {
            return Err(TextError::InvisibleCharacter);
        }
    }
    Ok(())
}

/// Checks the characters of message text: no control character but `\n`, `\r` and `\t`.
/// Bidirectional and zero-width characters are allowed in messages: right-to-left
/// languages need the isolates and emoji sequences the zero-width joiner.
pub fn check_message_chars(text: &str) -> Result<(), TextError> {
    match text.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        true => Err(TextError::ControlCharacter),
        false => Ok(()),
    }
}

/// A model name (`gpt-4o`, `local/smollm2-135m`): trimmed, 1 to [`MODEL_NAME_MAX`] characters,
/// no control or invisible characters.
pub fn model_name(raw: &str) -> Result<String, TextError> {
    name_text(raw, MODEL_NAME_MAX)
}

/// A system prompt: trimmed, 1 to [`SYSTEM_PROMPT_MAX`] characters; line breaks and tabs
/// allowed, other control characters and invisible characters not (a prompt is
/// instructions: what a person reviewing it sees must be what the model gets).
pub fn system_prompt(raw: &str) -> Result<String, TextError> {
    let text = raw.trim();
    for c in text.chars() {
        if c.is_control() && !matches!(c, '\n' | '\r' | '\t') {
            return Err(TextError::ControlCharacter);
        }
        if is_invisible(c) {
            return Err(TextError::InvisibleCharacter);
        }
    }
    within(text, SYSTEM_PROMPT_MAX)
}

/// A title: trimmed, 1 to [`TITLE_MAX`] characters, no control or invisible characters.
pub fn title(raw: &str) -> Result<String, TextError> {
    name_text(raw, TITLE_MAX)
}

/// A name shown to people (title, full name, model): trimmed, 1 to `max` characters, no
/// control characters (tab and line feed aside) and no invisible characters.
pub fn name_text(raw: &str, max: usize) -> Result<String, TextError> {
    let text = raw.trim();
    check_name_chars(text)?;
    within(text, max)
}

fn within(text: &str, max: usize) -> Result<String, TextError> {
    let len = text.chars().count();
    match len > 0 && len <= max {
        true => Ok(text.to_string()),
        false => Err(TextError::Length),
    }
}

/// Longest accepted failure code, in characters.
pub const FAILURE_CODE_MAX: usize = 64;
/// Longest accepted failure message, in characters.
pub const FAILURE_MESSAGE_MAX: usize = 1_000;

/// A worker's failure code (`unsupported_media_type`, `embedding_failed`): 1 to
/// [`FAILURE_CODE_MAX`] characters of snake_case ASCII starting with a letter, so clients and
/// dashboards can match on it. `None` otherwise.
pub fn failure_code(raw: &str) -> Option<String> {
    let valid = raw.len() <= FAILURE_CODE_MAX
        && raw.starts_with(|c: char| c.is_ascii_lowercase())
        && raw.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    valid.then(|| raw.to_string())
}

/// A failure message written for the person whose document or file failed: trimmed, 1 to
/// [`FAILURE_MESSAGE_MAX`] characters, the character rules of a name (line breaks and tabs
/// allowed). `None` otherwise.
pub fn failure_message(raw: &str) -> Option<String> {
    name_text(raw, FAILURE_MESSAGE_MAX).ok()
}

/// Trims `raw` and checks it holds between 1 and `max` characters and no control character
/// but line feed and tab.
///
/// Returns the trimmed text, or `None` when it is empty, too long or holds such a character.
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
    fn full_width_and_compatibility_forms_normalise_to_the_plain_address() {
        let plain = EmailAddress::parse("ada@example.com");
        for variant in ["ａｄａ@ｅｘａｍｐｌｅ.ｃｏｍ", "ＡＤＡ＠ＥＸＡＭＰＬＥ．ＣＯＭ", "\u{3000}Ada@Example.com"]
        {
            assert_eq!(EmailAddress::parse(variant), plain, "{variant}");
        }
    }

    #[test]
    fn emails_with_invisible_characters_are_rejected() {
        for bad in ["ada\u{200B}@example.com", "ada@exa\u{202E}mple.com", "\u{FEFF}ada@example.com"] {
            assert!(EmailAddress::parse(bad).is_none(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn names_refuse_control_and_invisible_characters() {
        assert_eq!(title("Trip\u{0}"), Err(TextError::ControlCharacter));
        assert_eq!(title("\u{1b}[31mred"), Err(TextError::ControlCharacter));
        for c in ['\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}', '\u{200B}', '\u{200D}', '\u{2060}', '\u{FEFF}'] {
            assert_eq!(title(&format!("a{c}b")), Err(TextError::InvisibleCharacter), "{c:?}");
            assert_eq!(model_name(&format!("gpt{c}")), Err(TextError::InvisibleCharacter), "{c:?}");
            assert_eq!(system_prompt(&format!("Be {c}brief")), Err(TextError::InvisibleCharacter), "{c:?}");
        }
        assert_eq!(title(" Trip "), Ok("Trip".into()));
        assert_eq!(title(""), Err(TextError::Length));
        assert_eq!(system_prompt("Be brief.\r\n\tAlways."), Ok("Be brief.\r\n\tAlways.".into()));
        // Right-to-left text without overrides is fine.
        assert_eq!(title("שלום"), Ok("שלום".into()));
    }

    #[test]
    fn message_text_refuses_control_characters_but_line_breaks_and_tabs() {
        assert_eq!(check_message_chars("a\u{0}b"), Err(TextError::ControlCharacter));
        assert_eq!(check_message_chars("\u{7f}"), Err(TextError::ControlCharacter));
        assert_eq!(check_message_chars("\u{85}"), Err(TextError::ControlCharacter));
        assert_eq!(check_message_chars("line\r\nnext\ttab"), Ok(()));
        // A family emoji is joined by U+200D; an isolate wraps right-to-left words.
        assert_eq!(check_message_chars("👩\u{200D}👧 \u{2067}שלום\u{2069}"), Ok(()));
    }

    #[test]
    fn failure_codes_are_snake_case_ascii() {
        assert_eq!(failure_code("unsupported_media_type").as_deref(), Some("unsupported_media_type"));
        assert_eq!(failure_code("pdf2text_failed").as_deref(), Some("pdf2text_failed"));
        for bad in
            ["", "Unsupported", "bad-code", "_leading", "1st", "with space", "é", &"x".repeat(FAILURE_CODE_MAX + 1)]
        {
            assert_eq!(failure_code(bad), None, "{bad:?}");
        }
        assert!(failure_code(&"x".repeat(FAILURE_CODE_MAX)).is_some());
    }

    #[test]
    fn failure_messages_are_trimmed_readable_text() {
        assert_eq!(failure_message("  The PDF is encrypted. ").as_deref(), Some("The PDF is encrypted."));
        assert_eq!(failure_message("   "), None);
        assert_eq!(failure_message("bad\u{0}byte"), None);
        assert_eq!(failure_message("look\u{202E}here"), None);
        assert_eq!(failure_message(&"m".repeat(FAILURE_MESSAGE_MAX + 1)), None);
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

        /// NFKC and lower-casing are applied until stable: parsing what parsing produced
        /// changes nothing, whatever the input.
        #[test]
        fn email_normalisation_is_idempotent(raw in "\\PC{1,40}") {
            if let Some(e) = EmailAddress::parse(&raw) {
                prop_assert_eq!(EmailAddress::parse(e.as_str()), Some(e.clone()));
                prop_assert!(!e.as_str().chars().any(|c| c.is_control() || is_invisible(c)));
            }
        }

        /// Whatever a name holds, an accepted one holds no control or invisible character.
        #[test]
        fn accepted_names_hold_no_control_or_invisible_character(s in "(\\PC|[\\x00-\\x1f\\x{202a}-\\x{202e}\\x{200b}-\\x{200d}\\x{2066}-\\x{2069}\\x{feff}]){0,40}") {
            if let Ok(t) = title(&s) {
                prop_assert!(!t.chars().any(|c| is_invisible(c) || (c.is_control() && c != '\n' && c != '\t')));
            }
            if let Ok(()) = check_message_chars(&s) {
                prop_assert!(!s.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')));
            }
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
