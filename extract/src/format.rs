//! The formats the knowledge base accepts, and deciding which one a file is from its bytes.

mod zip_head;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How many leading bytes [`sniff`] wants. It decides from fewer (a short file is its own
/// head) and ignores anything past this, so callers can read exactly this much up front.
pub const SNIFF_LEN: usize = 8 * 1024;

/// A file format whose text the knowledge base can extract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// UTF-8 plain text.
    Text,
    /// UTF-8 Markdown (CommonMark with the usual extensions).
    Markdown,
    /// An HTML document.
    Html,
    /// A PDF document (text layer only: scanned pages have none).
    Pdf,
    /// A Word document in Office Open XML (`.docx`).
    Docx,
}

impl Format {
    /// Every format, in a fixed order (for documentation and exhaustive tests).
    pub const ALL: [Format; 5] = [Format::Text, Format::Markdown, Format::Html, Format::Pdf, Format::Docx];

    /// The IANA media type of the format.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain",
            Format::Markdown => "text/markdown",
            Format::Html => "text/html",
            Format::Pdf => "application/pdf",
            Format::Docx => "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        }
    }

    /// A short stable name, safe to store in events and read models (`FromStr` reads it back).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Markdown => "markdown",
            Format::Html => "html",
            Format::Pdf => "pdf",
            Format::Docx => "docx",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`Format`] from a string that is none of [`Format::as_str`]'s names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown format name {0:?}")]
pub struct UnknownFormat(pub String);

impl FromStr for Format {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL.into_iter().find(|format| format.as_str() == s).ok_or_else(|| UnknownFormat(s.to_owned()))
    }
}

/// A file whose format the knowledge base does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Unsupported {
    /// The media type the bytes were recognised as, when they were (`image/png`,
    /// `application/zip`, ...); `None` for bytes nothing recognised.
    pub detected: Option<&'static str>,
}

impl Unsupported {
    /// A sentence a user can read.
    pub fn message(&self) -> String {
        let accepted = "plain text, Markdown, HTML, PDF or Word (.docx)";
        match self.detected {
            Some(media_type) => {
                format!("Files of type {media_type} are not supported: upload {accepted}.")
            }
            None => format!("The file's type was not recognised: upload {accepted}."),
        }
    }
}

/// Decides the format of a file from its first bytes (at most [`SNIFF_LEN`] are looked at).
///
/// The bytes decide; the file name only tells Markdown from plain text, which are the same
/// bytes to a machine (`.md`, `.markdown`, `.mdown`, `.mkd` → Markdown, anything else → Text).
/// A PNG named `notes.txt` is unsupported and HTML named `x.txt` is HTML. The client's
/// Content-Type is never an input: it is whatever the client says.
///
/// - PDF: the `%PDF-` magic at offset 0.
/// - DOCX: a zip archive (`PK\x03\x04`) whose entries include `word/document.xml`. The head
///   holds only the first few local headers, so the walk over them decides when it can: a
///   `word/` part makes it a DOCX; a spreadsheet (`xl/`), a presentation (`ppt/`), an
///   OpenDocument or EPUB (`mimetype` first), or a walk that reaches the central directory
///   without `word/document.xml` makes it unsupported. A zip head the walk cannot settle
///   (the head ends first, or an entry's size is only given after its data) is taken as a
///   probable DOCX; [`crate::extract`] confirms it from the central directory and answers
///   [`crate::ExtractError::Unsupported`] when `word/document.xml` is missing.
/// - Text: the head is UTF-8 (a BOM is fine, and so is a multi-byte character cut at the end
///   of the head) with no NUL byte. It is HTML when it starts, after the BOM, whitespace,
///   `<!-- comments -->` and an XML declaration, with `<!doctype html` or `<html` (any case).
/// - Anything else is [`Unsupported`], naming the type when the `infer` crate knows it.
pub fn sniff(head: &[u8], file_name: Option<&str>) -> Result<Format, Unsupported> {
    let head = &head[..head.len().min(SNIFF_LEN)];
    if head.starts_with(b"%PDF-") {
        return Ok(Format::Pdf);
    }
    if head.starts_with(zip_head::LOCAL_HEADER) {
        return match zip_head::classify(head) {
            zip_head::ZipKind::Docx | zip_head::ZipKind::Undecided => Ok(Format::Docx),
            zip_head::ZipKind::Other(declared) => {
                Err(Unsupported { detected: Some(declared.unwrap_or_else(|| zip_media_type(head))) })
            }
        };
    }
    if let Some(text) = as_text(head) {
        if looks_like_html(text) {
            return Ok(Format::Html);
        }
        return Ok(if has_markdown_extension(file_name) { Format::Markdown } else { Format::Text });
    }
    Err(Unsupported { detected: infer::get(head).map(|kind| kind.mime_type()) })
}

/// What `infer` calls a zip that is not a Word document (an EPUB, a JAR, ...), else plain zip.
fn zip_media_type(head: &[u8]) -> &'static str {
    infer::get(head)
        .map(|kind| kind.mime_type())
        .filter(|media_type| *media_type != Format::Docx.media_type())
        .unwrap_or("application/zip")
}

/// The head as text, if it is UTF-8 without NUL bytes. Only a character cut by the end of the
/// head is forgiven: an invalid sequence anywhere else means binary.
fn as_text(head: &[u8]) -> Option<&str> {
    let head = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    if head.contains(&0) {
        return None;
    }
    match std::str::from_utf8(head) {
        Ok(text) => Some(text),
        // `error_len() == None` means the input ended inside a valid sequence.
        Err(error) if error.error_len().is_none() => std::str::from_utf8(&head[..error.valid_up_to()]).ok(),
        Err(_) => None,
    }
}

fn looks_like_html(text: &str) -> bool {
    let mut rest = text.trim_start();
    // Comments, and the XML declaration XHTML pages start with, may come before the document.
    while let Some((open, close)) = [("<!--", "-->"), ("<?", "?>")].into_iter().find(|(open, _)| rest.starts_with(open))
    {
        match rest[open.len()..].find(close) {
            Some(end) => rest = rest[open.len() + end + close.len()..].trim_start(),
            // Longer than the head: nothing after it to judge by.
            None => return false,
        }
    }
    starts_with_ignore_case(rest, "<!doctype html") || starts_with_ignore_case(rest, "<html")
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.as_bytes().get(..prefix.len()).is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
}

fn has_markdown_extension(file_name: Option<&str>) -> bool {
    let Some((_, extension)) = file_name.and_then(|name| name.rsplit_once('.')) else {
        return false;
    };
    ["md", "markdown", "mdown", "mkd"].iter().any(|known| extension.eq_ignore_ascii_case(known))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_stable() {
        let names: Vec<_> = Format::ALL.iter().map(|format| format.as_str()).collect();
        assert_eq!(names, ["text", "markdown", "html", "pdf", "docx"]);
        for format in Format::ALL {
            assert_eq!(format.as_str().parse::<Format>(), Ok(format));
        }
        assert!("doc".parse::<Format>().is_err());
    }

    #[test]
    fn text_tolerates_a_bom_and_a_character_cut_by_the_head() {
        let mut head = "\u{feff}Grüße aus Köln: ".as_bytes().to_vec();
        head.extend_from_slice(&"€".as_bytes()[..2]);
        assert_eq!(sniff(&head, None), Ok(Format::Text));
    }

    #[test]
    fn invalid_utf8_inside_the_head_is_not_text() {
        let head = b"caf\xE9 au lait";
        assert!(sniff(head, Some("menu.txt")).is_err());
    }

    #[test]
    fn a_nul_byte_means_binary() {
        assert!(sniff(b"text\0more text", Some("a.txt")).is_err());
    }

    #[test]
    fn html_is_recognised_after_whitespace_bom_and_comments() {
        let cases: [&[u8]; 5] = [
            b"<!DOCTYPE html><p>x</p>",
            b"<?xml version=\"1.0\"?>\n<html xmlns=\"http://www.w3.org/1999/xhtml\">",
            b"\xEF\xBB\xBF  \n<HTML lang=en>",
            b"<!-- saved from a browser --> \n<!-- two --><!doctype HTML>",
            b"\t<html>",
        ];
        for head in cases {
            assert_eq!(sniff(head, Some("page.txt")), Ok(Format::Html), "{head:?}");
        }
    }

    #[test]
    fn markup_that_is_not_an_html_document_is_text() {
        assert_eq!(sniff(b"<p>fragment</p>", None), Ok(Format::Text));
        assert_eq!(sniff(b"<?xml version='1.0'?><a/>", None), Ok(Format::Text));
        assert_eq!(sniff(b"<!-- unterminated", None), Ok(Format::Text));
    }

    #[test]
    fn the_extension_only_tells_markdown_from_text() {
        assert_eq!(sniff(b"# Notes", Some("notes.MD")), Ok(Format::Markdown));
        assert_eq!(sniff(b"# Notes", Some("notes.markdown")), Ok(Format::Markdown));
        assert_eq!(sniff(b"# Notes", Some("notes.txt")), Ok(Format::Text));
        assert_eq!(sniff(b"# Notes", Some("md")), Ok(Format::Text));
        assert_eq!(sniff(b"# Notes", None), Ok(Format::Text));
    }

    #[test]
    fn pdf_is_decided_by_its_magic() {
        assert_eq!(sniff(b"%PDF-1.7\n%\xE2\xE3", Some("a.docx")), Ok(Format::Pdf));
    }

    #[test]
    fn known_binaries_are_named() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert_eq!(sniff(png, Some("notes.txt")), Err(Unsupported { detected: Some("image/png") }));
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(64, 0);
        assert_eq!(sniff(&elf, None), Err(Unsupported { detected: Some("application/x-executable") }));
    }

    #[test]
    fn unsupported_says_what_is_accepted() {
        let message = Unsupported { detected: Some("image/png") }.to_string();
        assert!(message.contains("image/png"), "{message}");
        assert!(message.contains("PDF"), "{message}");
    }
}
