//! Why a file's text could not be extracted.

use crate::format::Unsupported;

/// Why [`crate::extract`] gave no text. Each variant has a stable [`code`](Self::code) for
/// events and API responses, and its `Display` is a sentence a user can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// The file is not one of the accepted formats (or only looked like one in its head: a zip
    /// archive without `word/document.xml`). The message is the whole sentence.
    #[error("{0}")]
    Unsupported(String),
    /// The file claims a format but its bytes are damaged or malformed.
    #[error("The file could not be read: {0}.")]
    Corrupt(String),
    /// The document is encrypted with a password we do not have.
    #[error("The document is protected by a password: remove the protection and upload it again.")]
    Encrypted,
    /// The extracted text is longer than `Limits::max_text_chars`.
    #[error("The document's text is longer than the limit of {limit} characters.")]
    TooLarge {
        /// The limit that was exceeded, in characters.
        limit: usize,
    },
    /// The archive is refused before (or while) unpacking it: too many entries, too large
    /// once inflated, or compressed suspiciously well (a zip bomb).
    #[error("The archive is unsafe to unpack: {0}.")]
    ArchiveLimits(String),
    /// The file was read but holds no text (an empty file, or scanned pages without a text
    /// layer).
    #[error("No text was found in the document (scanned pages without a text layer are not read).")]
    NoText,
}

impl ExtractError {
    /// A stable snake_case code: `unsupported`, `corrupt`, `encrypted`, `too_large`,
    /// `archive_limits` or `no_text`.
    pub fn code(&self) -> &'static str {
        match self {
            ExtractError::Unsupported(_) => "unsupported",
            ExtractError::Corrupt(_) => "corrupt",
            ExtractError::Encrypted => "encrypted",
            ExtractError::TooLarge { .. } => "too_large",
            ExtractError::ArchiveLimits(_) => "archive_limits",
            ExtractError::NoText => "no_text",
        }
    }
}

/// A file that [`crate::sniff`] refused fails its processing with the same code as one that
/// extraction refused.
impl From<Unsupported> for ExtractError {
    fn from(unsupported: Unsupported) -> Self {
        ExtractError::Unsupported(unsupported.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_snake_case() {
        let errors = [
            ExtractError::Unsupported("x".into()),
            ExtractError::Corrupt("x".into()),
            ExtractError::Encrypted,
            ExtractError::TooLarge { limit: 1 },
            ExtractError::ArchiveLimits("x".into()),
            ExtractError::NoText,
        ];
        let codes: Vec<_> = errors.iter().map(ExtractError::code).collect();
        assert_eq!(codes, ["unsupported", "corrupt", "encrypted", "too_large", "archive_limits", "no_text"]);
    }

    #[test]
    fn sniffing_refusals_keep_their_sentence() {
        let error = ExtractError::from(Unsupported { detected: Some("image/png") });
        assert_eq!(error.code(), "unsupported");
        assert!(error.to_string().contains("image/png"));
    }
}
