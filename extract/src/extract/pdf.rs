//! The text layer of a PDF, with pdf-extract (over lopdf, both pure Rust).

use std::panic::{self, AssertUnwindSafe};

use pdf_extract::{Document, PlainTextOutput};

use super::Limits;
use crate::error::ExtractError;
use crate::text;

/// The text of every page (tidied), pages separated by a blank line, and the page count.
///
/// pdf-extract panics (rather than returning an error) on many malformed or merely unusual
/// files: the parse runs under `catch_unwind`, and a panic is a [`ExtractError::Corrupt`].
/// This relies on the build unwinding on panic (the workspace's default); the default panic
/// hook still prints the panic message to stderr.
pub(super) fn to_text(bytes: &[u8], limits: &Limits) -> Result<(String, u32), ExtractError> {
    // The closure only reads `bytes` and returns owned values: nothing observable is left
    // half-updated by a panic, which is what `AssertUnwindSafe` asserts.
    panic::catch_unwind(AssertUnwindSafe(|| pages_text(bytes, limits))).unwrap_or_else(|_| {
        Err(ExtractError::Corrupt("the PDF's structure is damaged or uses features the reader does not support".into()))
    })
}

fn pages_text(bytes: &[u8], limits: &Limits) -> Result<(String, u32), ExtractError> {
    let document = Document::load_mem(bytes).map_err(|error| match error {
        pdf_extract::Error::Decryption(_) | pdf_extract::Error::InvalidPassword => ExtractError::Encrypted,
        other => ExtractError::Corrupt(format!("the PDF could not be parsed ({other})")),
    })?;
    // lopdf decrypts files that open with the empty password while loading and drops their
    // `Encrypt` entry; one still there needs a password we do not have.
    if document.is_encrypted() {
        return Err(ExtractError::Encrypted);
    }
    let pages = document.get_pages();
    let page_count = u32::try_from(pages.len()).unwrap_or(u32::MAX);
    let mut text = String::new();
    let mut chars = 0usize;
    for &page in pages.keys() {
        let mut raw = String::new();
        let mut output = PlainTextOutput::new(&mut raw);
        pdf_extract::output_doc_page(&document, &mut output, page)
            .map_err(|error| ExtractError::Corrupt(format!("page {page} of the PDF could not be read ({error})")))?;
        // Tidied page by page so that the running count is the final text's length and a
        // document far over the limit stops being read early.
        let page_text = text::tidy(&raw);
        if page_text.is_empty() {
            continue;
        }
        if !text.is_empty() {
            text.push_str("\n\n");
            chars += 2;
        }
        text.push_str(&page_text);
        chars = chars.saturating_add(page_text.chars().count());
        if chars > limits.max_text_chars {
            return Err(ExtractError::TooLarge { limit: limits.max_text_chars });
        }
    }
    Ok((text, page_count))
}
