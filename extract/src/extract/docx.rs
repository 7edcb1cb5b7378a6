//! The text of a Word document (`.docx`): the paragraphs of `word/document.xml`, read from the
//! zip archive under zip-bomb limits.

use std::io::{self, BufRead, BufReader, Cursor, Read};

use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::Event;
use quick_xml::Reader;
use zip::ZipArchive;

use super::zip_entry::{self, EntryError};
use super::Limits;
use crate::error::ExtractError;

const DOCUMENT: &str = "word/document.xml";
/// Entries smaller than this once inflated are exempt from the ratio limit: small XML parts
/// compress very well and cannot hurt (Apache POI exempts small entries the same way).
const RATIO_GRACE_BYTES: u64 = 1024 * 1024;

/// The document's paragraphs, one a line, with tabs (`\t`) and breaks (`\n`).
///
/// The archive's central directory is checked against `limits` before anything is inflated
/// (entry count, summed declared sizes, each entry's declared compression ratio). Declared
/// sizes can lie, so `word/document.xml` is then inflated through `take(declared + 1)` and
/// inflating past its declared size is refused too: memory stays bounded by a size that
/// passed the checks, whatever the archive really holds. The XML is parsed as it streams out
/// of the inflater, never held whole.
pub(super) fn to_text(bytes: &[u8], limits: &Limits) -> Result<String, ExtractError> {
    let mut archive = ZipArchive::new(Cursor::new(bytes))
        .map_err(|error| ExtractError::Corrupt(format!("the Word document is not a valid zip archive ({error})")))?;
    check_limits(&archive, limits)?;
    let index = archive.index_for_name(DOCUMENT).ok_or_else(|| {
        ExtractError::Unsupported(
            "The file is a zip archive but not a Word document (it has no word/document.xml).".into(),
        )
    })?;
    let entry = archive.by_index_data(index).map_err(corrupt_archive)?;
    if entry.encrypted() {
        return Err(ExtractError::Encrypted);
    }
    let (method, declared, crc32) = (entry.compression(), entry.size(), entry.crc32());
    let compressed = archive.by_index_raw(index).map_err(corrupt_archive)?;
    let inflated = zip_entry::inflate(compressed, method, declared, crc32).ok_or_else(|| {
        ExtractError::Corrupt(format!("{DOCUMENT} is compressed with a method Word does not use ({method})"))
    })?;
    // Parsing stops once the raw text is twice the limit: tidying (which the exact check in
    // `extract` measures after) removes only blank space, never half of a real document.
    let stop_at = limits.max_text_chars.saturating_mul(2);
    paragraphs(Reader::from_reader(BufReader::new(inflated)), stop_at).map_err(|error| match error {
        ParseError::TooLarge => ExtractError::TooLarge { limit: limits.max_text_chars },
        ParseError::Xml(quick_xml::Error::Io(io)) => match EntryError::find(&io) {
            Some(EntryError::PastDeclaredSize) => {
                ExtractError::ArchiveLimits(format!("{DOCUMENT} inflates past its declared size of {declared} bytes"))
            }
            Some(other) => ExtractError::Corrupt(format!("{DOCUMENT} is damaged ({other})")),
            None => ExtractError::Corrupt(format!("{DOCUMENT} could not be inflated ({io})")),
        },
        ParseError::Xml(xml) => ExtractError::Corrupt(format!("{DOCUMENT} is not well-formed XML ({xml})")),
    })
}

fn corrupt_archive(error: zip::result::ZipError) -> ExtractError {
    ExtractError::Corrupt(format!("the Word document's zip archive is damaged ({error})"))
}

/// Refuses archives that are unsafe to inflate, from the central directory alone.
fn check_limits<R: Read + io::Seek>(archive: &ZipArchive<R>, limits: &Limits) -> Result<(), ExtractError> {
    if archive.len() > limits.zip_max_entries {
        return Err(ExtractError::ArchiveLimits(format!(
            "it has {} entries, more than the {} allowed",
            archive.len(),
            limits.zip_max_entries
        )));
    }
    let mut total = 0u64;
    for index in 0..archive.len() {
        let entry = archive.by_index_data(index).map_err(corrupt_archive)?;
        let size = entry.size();
        total = total.saturating_add(size);
        if total > limits.zip_max_total_uncompressed {
            return Err(ExtractError::ArchiveLimits(format!(
                "its entries inflate to more than the {} bytes allowed",
                limits.zip_max_total_uncompressed
            )));
        }
        let ratio = size / entry.compressed_size().max(1);
        if size > RATIO_GRACE_BYTES && ratio > limits.zip_max_ratio {
            let name = entry.name().map(|name| name.into_owned()).unwrap_or_else(|_| format!("entry {index}"));
            return Err(ExtractError::ArchiveLimits(format!(
                "{name} is compressed {ratio} to 1, more than the {} to 1 allowed",
                limits.zip_max_ratio
            )));
        }
    }
    Ok(())
}

enum ParseError {
    Xml(quick_xml::Error),
    TooLarge,
}

impl From<quick_xml::Error> for ParseError {
    fn from(error: quick_xml::Error) -> Self {
        ParseError::Xml(error)
    }
}

/// WordprocessingML to text. Only text inside runs counts (`w:r`, and `m:r` in equations):
/// `w:t` is text, `w:tab` a tab, `w:br` and `w:cr` line breaks, `w:noBreakHyphen` a hyphen, and
/// every paragraph (`w:p`, including those in table cells and text boxes) ends a line. Deleted
/// revisions (`w:delText`), field codes (`w:instrText`) and the legacy copies that
/// `mc:Fallback` repeats for older readers are left out. Elements are matched by local name,
/// so the namespace prefix a writer chose does not matter.
fn paragraphs<R: BufRead>(mut reader: Reader<R>, max_chars: usize) -> Result<String, ParseError> {
    let mut out = String::new();
    let mut chars = 0usize;
    let mut buf = Vec::new();
    let mut run_depth = 0usize;
    let mut fallback_depth = 0usize;
    let mut in_text = false;
    loop {
        let mut push = |text: &str| {
            out.push_str(text);
            chars = chars.saturating_add(text.chars().count());
        };
        match reader.read_event_into(&mut buf)? {
            Event::Eof => break,
            Event::Start(element) => match element.local_name().as_ref() {
                "Fallback" => fallback_depth += 1,
                _ if fallback_depth > 0 => {}
                "r" => run_depth += 1,
                "t" if run_depth > 0 => in_text = true,
                name if run_depth > 0 => push(run_mark(name)),
                _ => {}
            },
            Event::Empty(element) => match element.local_name().as_ref() {
                _ if fallback_depth > 0 => {}
                "p" => push("\n"),
                name if run_depth > 0 => push(run_mark(name)),
                _ => {}
            },
            Event::End(element) => match element.local_name().as_ref() {
                "Fallback" => fallback_depth = fallback_depth.saturating_sub(1),
                _ if fallback_depth > 0 => {}
                "r" => run_depth = run_depth.saturating_sub(1),
                "t" => in_text = false,
                "p" => push("\n"),
                _ => {}
            },
            Event::Text(text) if in_text => push(&text.xml10_content()),
            Event::CData(text) if in_text => push(&text.xml10_content()),
            Event::GeneralRef(reference) if in_text => {
                if let Some(c) = reference.resolve_char_ref()? {
                    push(c.encode_utf8(&mut [0; 4]));
                } else if let Some(entity) = resolve_predefined_entity(&reference) {
                    push(entity);
                }
            }
            _ => {}
        }
        buf.clear();
        if chars > max_chars {
            return Err(ParseError::TooLarge);
        }
    }
    Ok(out)
}

/// What an element inside a run stands for in the text.
fn run_mark(local_name: &str) -> &'static str {
    match local_name {
        "tab" => "\t",
        "br" | "cr" => "\n",
        "noBreakHyphen" => "-",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> String {
        match paragraphs(Reader::from_reader(xml.as_bytes()), usize::MAX) {
            Ok(text) => text,
            Err(ParseError::Xml(error)) => panic!("{error}"),
            Err(ParseError::TooLarge) => panic!("too large"),
        }
    }

    #[test]
    fn runs_tabs_breaks_and_entities_become_text() {
        let xml = r#"<w:document xmlns:w="urn:w"><w:body>
            <w:p><w:pPr><w:tabs><w:tab w:val="left" w:pos="720"/></w:tabs></w:pPr>
              <w:r><w:rPr><w:b/></w:rPr><w:t>Fish</w:t></w:r><w:r><w:t xml:space="preserve"> &amp; chips</w:t></w:r>
              <w:r><w:tab/><w:t>&#8364;5</w:t><w:br/><w:t>next&#x20;line</w:t></w:r></w:p>
            <w:p/>
            <w:p><w:del><w:r><w:delText>gone</w:delText></w:r></w:del><w:r><w:instrText>PAGE</w:instrText><w:t>kept</w:t></w:r></w:p>
            </w:body></w:document>"#;
        assert_eq!(parse(xml), "Fish & chips\t€5\nnext line\n\nkept\n");
    }

    #[test]
    fn fallback_copies_are_not_repeated() {
        let xml = r#"<w:document xmlns:w="urn:w" xmlns:mc="urn:mc"><w:body><w:p><w:r>
            <mc:AlternateContent><mc:Choice><w:txbxContent><w:p><w:r><w:t>Box</w:t></w:r></w:p></w:txbxContent></mc:Choice>
            <mc:Fallback><w:txbxContent><w:p><w:r><w:t>Box</w:t></w:r></w:p></w:txbxContent></mc:Fallback></mc:AlternateContent>
            </w:r></w:p></w:body></w:document>"#;
        assert_eq!(parse(xml), "Box\n\n");
    }

    #[test]
    fn parsing_stops_past_the_character_limit() {
        let xml = "<w:p><w:r><w:t>0123456789</w:t></w:r></w:p><w:p><w:r><w:t>more</w:t></w:r></w:p>";
        let result = paragraphs(Reader::from_reader(xml.as_bytes()), 5);
        assert!(matches!(result, Err(ParseError::TooLarge)));
    }
}
