//! Extracting the plain text of a file in one of the accepted formats.

mod docx;
mod html;
mod markdown;
mod pdf;
mod zip_entry;

use serde::{Deserialize, Serialize};

use crate::error::ExtractError;
use crate::format::Format;
use crate::text;

/// The text of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// Plain text: `\n` line breaks, a blank line between paragraphs, no markup, no NUL
    /// characters, at most `Limits::max_text_chars` characters, never blank.
    pub text: String,
    /// The number of pages, for formats that have pages (PDF).
    pub pages: Option<u32>,
}

/// Bounds on what extraction accepts, so that one upload cannot exhaust memory or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// The most characters of text a document may have (about four characters a token).
    pub max_text_chars: usize,
    /// The most entries a DOCX archive may have.
    pub zip_max_entries: usize,
    /// The most bytes a DOCX archive may hold once inflated, summed over all its entries.
    pub zip_max_total_uncompressed: u64,
    /// The highest uncompressed / compressed size ratio an entry may have. Entries under
    /// 1 MiB uncompressed are exempt: small XML parts compress well and are harmless.
    pub zip_max_ratio: u64,
}

impl Default for Limits {
    /// Two million characters (a thousand pages of prose); archives of up to 1,000 entries and
    /// 256 MiB inflated, compressed at most 100 to 1 (the threshold Apache POI uses for
    /// Office files; real documents stay well under it, zip bombs are far above it).
    fn default() -> Self {
        Limits {
            max_text_chars: 2_000_000,
            zip_max_entries: 1_000,
            zip_max_total_uncompressed: 256 * 1024 * 1024,
            zip_max_ratio: 100,
        }
    }
}

/// Extracts the text of `bytes`, which [`crate::sniff`] found to be in `format`.
///
/// - Text: as it is, with line breaks normalised.
/// - Markdown: rendered to plain text (paragraph breaks kept, markup, link targets, raw HTML
///   and front matter dropped).
/// - HTML: the visible text (no `head`, `script` or `style`), with block and line breaks.
/// - PDF: the text layer of every page, pages separated by a blank line, and the page count.
///   A password-protected PDF is [`ExtractError::Encrypted`] (one that opens with the empty
///   password, as owner-only protection does, is read). The PDF parser panics on some
///   malformed files: the panic is caught and answered [`ExtractError::Corrupt`].
/// - DOCX: the paragraphs of `word/document.xml`, one a line, with tabs and line breaks.
///   The archive is refused with [`ExtractError::ArchiveLimits`] before anything is inflated
///   when its entry count, declared sizes or compression ratios exceed `limits`, and while
///   reading when an entry inflates past its declared size.
///
/// Every format ends with [`ExtractError::NoText`] when nothing but blank space is left and
/// [`ExtractError::TooLarge`] when the text is over `limits.max_text_chars`.
///
/// CPU-bound (a large PDF takes seconds): run it on a blocking thread.
pub fn extract(format: Format, bytes: &[u8], limits: &Limits) -> Result<Extracted, ExtractError> {
    let (text, pages) = match format {
        Format::Text => (text::normalise(&text::decode_utf8(bytes)), None),
        Format::Markdown => (text::tidy(&markdown::to_text(&text::decode_utf8(bytes))), None),
        Format::Html => (text::tidy(&html::to_text(bytes)?), None),
        Format::Pdf => {
            let (raw, pages) = pdf::to_text(bytes, limits)?;
            (text::tidy(&raw), Some(pages))
        }
        Format::Docx => (text::tidy(&docx::to_text(bytes, limits)?), None),
    };
    if text.trim().is_empty() {
        return Err(ExtractError::NoText);
    }
    if exceeds_chars(&text, limits.max_text_chars) {
        return Err(ExtractError::TooLarge { limit: limits.max_text_chars });
    }
    Ok(Extracted { text, pages })
}

/// Whether `text` has more than `limit` characters, without counting past the limit.
pub(crate) fn exceeds_chars(text: &str, limit: usize) -> bool {
    // A character is at most four bytes: short texts need no counting at all.
    text.len() > limit && text.chars().nth(limit).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_kept_as_it_is_with_normalised_line_breaks() {
        let extracted = extract(Format::Text, b"\xEF\xBB\xBF  Line one\r\nLine two\r\r\n", &Limits::default());
        assert_eq!(extracted, Ok(Extracted { text: "  Line one\nLine two\n\n".into(), pages: None }));
    }

    #[test]
    fn blank_text_is_no_text() {
        let error = extract(Format::Text, b" \r\n\t\n", &Limits::default());
        assert_eq!(error, Err(ExtractError::NoText));
    }

    #[test]
    fn text_over_the_limit_is_too_large() {
        let limits = Limits { max_text_chars: 5, ..Limits::default() };
        assert_eq!(extract(Format::Text, "ééééé".as_bytes(), &limits).map(|e| e.text), Ok("ééééé".into()));
        assert_eq!(extract(Format::Text, "éééééé".as_bytes(), &limits), Err(ExtractError::TooLarge { limit: 5 }));
    }
}
