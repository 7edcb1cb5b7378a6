//! Telling a Word document from other zip archives by walking the local file headers that fit
//! in the head of the file.
//!
//! A zip's table of contents (the central directory) is at its end, out of a head's reach, but
//! each entry's data is preceded by a local header naming it. Word writes `[Content_Types].xml`,
//! `_rels/.rels` and then the `word/` parts first, so a few kilobytes usually settle it.

/// The signature every zip archive with at least one entry starts with.
pub(super) const LOCAL_HEADER: &[u8] = b"PK\x03\x04";
const CENTRAL_HEADER: &[u8] = b"PK\x01\x02";
const END_OF_CENTRAL_DIRECTORY: &[u8] = b"PK\x05\x06";
/// Bit 3 of the flags: sizes follow the data, so the next header cannot be found by skipping.
const SIZES_AFTER_DATA: u16 = 1 << 3;
const LOCAL_HEADER_LEN: usize = 30;

const XLSX: &str = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
const PPTX: &str = "application/vnd.openxmlformats-officedocument.presentationml.presentation";

/// What the head of a zip archive says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ZipKind {
    /// It has Word parts.
    Docx,
    /// It is not a Word document; the media type when the entries tell it.
    Other(Option<&'static str>),
    /// The head ended before anything decisive: possibly a Word document.
    Undecided,
}

/// Walks the local headers in `head` (which starts with [`LOCAL_HEADER`]).
pub(super) fn classify(head: &[u8]) -> ZipKind {
    let mut offset = 0usize;
    let mut first = true;
    loop {
        let Some(rest) = head.get(offset..) else {
            return ZipKind::Undecided;
        };
        // The central directory follows the last entry: every name has been seen.
        if rest.starts_with(CENTRAL_HEADER) || rest.starts_with(END_OF_CENTRAL_DIRECTORY) {
            return ZipKind::Other(None);
        }
        if !rest.starts_with(LOCAL_HEADER) {
            return ZipKind::Undecided;
        }
        let Some(header) = rest.get(..LOCAL_HEADER_LEN) else {
            return ZipKind::Undecided;
        };
        let flags = u16_at(header, 6);
        let compressed_size = u32_at(header, 18);
        let name_len = usize::from(u16_at(header, 26));
        let extra_len = usize::from(u16_at(header, 28));
        let Some(name) = rest.get(LOCAL_HEADER_LEN..LOCAL_HEADER_LEN + name_len) else {
            return ZipKind::Undecided;
        };
        if name.starts_with(b"word/") {
            return ZipKind::Docx;
        }
        if name.starts_with(b"xl/") {
            return ZipKind::Other(Some(XLSX));
        }
        if name.starts_with(b"ppt/") {
            return ZipKind::Other(Some(PPTX));
        }
        // OpenDocument and EPUB store an uncompressed `mimetype` entry first.
        if first && name == b"mimetype" {
            return ZipKind::Other(None);
        }
        // 0xFFFFFFFF means the real size is in a zip64 extra field; not worth decoding here.
        if flags & SIZES_AFTER_DATA != 0 || compressed_size == u32::MAX {
            return ZipKind::Undecided;
        }
        let Ok(compressed_size) = usize::try_from(compressed_size) else {
            return ZipKind::Undecided;
        };
        offset = match LOCAL_HEADER_LEN
            .checked_add(name_len)
            .and_then(|len| len.checked_add(extra_len))
            .and_then(|len| len.checked_add(compressed_size))
            .and_then(|len| len.checked_add(offset))
        {
            Some(next) => next,
            None => return ZipKind::Undecided,
        };
        first = false;
    }
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored (uncompressed) local entry, as a zip writer lays it out.
    fn entry(name: &str, data: &[u8], flags: u16) -> Vec<u8> {
        let mut bytes = LOCAL_HEADER.to_vec();
        bytes.extend_from_slice(&20u16.to_le_bytes()); // version needed
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&[0; 10]); // method, time, date, crc
        let size = u32::try_from(data.len()).unwrap_or(u32::MAX).to_le_bytes();
        bytes.extend_from_slice(&size); // compressed
        bytes.extend_from_slice(&size); // uncompressed
        let name_len = u16::try_from(name.len()).unwrap_or(u16::MAX);
        bytes.extend_from_slice(&name_len.to_le_bytes());
        bytes.extend_from_slice(&0u16.to_le_bytes());
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    #[test]
    fn word_parts_after_the_package_parts_make_a_docx() {
        let mut head = entry("[Content_Types].xml", b"<Types/>", 0);
        head.extend(entry("_rels/.rels", b"<Relationships/>", 0));
        head.extend(entry("word/document.xml", b"<w:document/>", 0));
        assert_eq!(classify(&head), ZipKind::Docx);
    }

    #[test]
    fn a_complete_walk_without_word_parts_is_not_a_docx() {
        let mut head = entry("readme.txt", b"hello", 0);
        head.extend_from_slice(CENTRAL_HEADER);
        assert_eq!(classify(&head), ZipKind::Other(None));
    }

    #[test]
    fn spreadsheets_and_presentations_are_named() {
        let mut head = entry("[Content_Types].xml", b"<Types/>", 0);
        head.extend(entry("xl/workbook.xml", b"<workbook/>", 0));
        assert_eq!(classify(&head), ZipKind::Other(Some(XLSX)));
        let head = entry("ppt/presentation.xml", b"<p/>", 0);
        assert_eq!(classify(&head), ZipKind::Other(Some(PPTX)));
    }

    #[test]
    fn opendocument_is_not_a_docx() {
        let head = entry("mimetype", b"application/vnd.oasis.opendocument.text", 0);
        assert_eq!(classify(&head), ZipKind::Other(None));
    }

    #[test]
    fn a_head_cut_before_anything_decisive_is_undecided() {
        let mut head = entry("[Content_Types].xml", &[b'x'; 200], 0);
        head.truncate(100);
        assert_eq!(classify(&head), ZipKind::Undecided);
        let streamed = entry("[Content_Types].xml", b"<Types/>", SIZES_AFTER_DATA);
        assert_eq!(classify(&streamed), ZipKind::Undecided);
    }
}
