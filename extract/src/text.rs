//! Normalising extracted text, the same way for every format.

/// Bytes as text: a UTF-8 BOM dropped, invalid sequences replaced by U+FFFD (the head was
/// checked by `sniff`; a stray bad byte further on should not lose the whole document).
pub(crate) fn decode_utf8(bytes: &[u8]) -> String {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

/// Line breaks as `\n` (from `\r\n` and lone `\r`), without a leading BOM and without NUL
/// characters (PostgreSQL's `text` cannot store them). Otherwise the text is left as it is.
pub(crate) fn normalise(text: &str) -> String {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                chars.next_if_eq(&'\n');
                out.push('\n');
            }
            '\0' => {}
            c => out.push(c),
        }
    }
    out
}

/// [`normalise`], then what rendering leaves behind is cleaned up: trailing spaces on each
/// line, runs of blank lines (one is kept: it marks a paragraph for the chunker) and blank
/// space at both ends.
pub(crate) fn tidy(text: &str) -> String {
    let text = normalise(text);
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0usize;
    for line in text.split('\n') {
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_unifies_line_breaks_and_drops_bom_and_nul() {
        assert_eq!(normalise("\u{feff}a\r\nb\rc\n\0d"), "a\nb\nc\nd");
        assert_eq!(normalise("  keeps  spacing \n\n\n"), "  keeps  spacing \n\n\n");
    }

    #[test]
    fn tidy_keeps_one_blank_line_between_paragraphs() {
        assert_eq!(tidy("\n\n  Title  \n\n\n\nFirst\nline \r\n\r\n  \nSecond\n\n"), "  Title\n\nFirst\nline\n\nSecond");
    }

    #[test]
    fn decode_replaces_bad_bytes() {
        assert_eq!(decode_utf8(b"\xEF\xBB\xBFok \xFF!"), "ok \u{fffd}!");
    }
}
