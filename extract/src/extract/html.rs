//! HTML to plain text with html2text (html5ever's parser, the one browsers' behaviour is
//! specified by).

use html2text::render::TrivialDecorator;

use crate::error::ExtractError;

/// Lines are wrapped at this width; wide enough that only pathological paragraphs wrap, and a
/// wrapped line is still the same text to search.
const WIDTH: usize = 10_000;

/// The visible text: `head`, `script` and `style` are skipped; block elements and `<br>` give
/// line breaks; no markup is added (no `#` before headings, no `*` before list items, no link
/// footnotes); table cells come one a line.
pub(super) fn to_text(html: &[u8]) -> Result<String, ExtractError> {
    html2text::config::with_decorator(TrivialDecorator::new())
        .raw_mode(true)
        .allow_width_overflow()
        .string_from_read(html, WIDTH)
        .map_err(|error| ExtractError::Corrupt(format!("the HTML could not be rendered ({error})")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::tidy;

    #[test]
    fn only_visible_text_is_kept() {
        let html = br#"<!doctype html><html><head><title>Tab title</title>
            <style>p { color: red }</style><script>var hidden = 1;</script></head>
            <body><h1>Heading</h1><p>First <b>bold</b> paragraph with a <a href="https://x.example">link</a>.</p>
            <p>Second<br>line</p><ul><li>one</li><li>two</li></ul>
            <table><tr><td>cell a</td><td>cell b</td></tr></table>
            <script>document.write("nope")</script></body></html>"#;
        let text = tidy(&to_text(html).unwrap());
        assert_eq!(text, "Heading\n\nFirst bold paragraph with a link.\n\nSecond\nline\none\ntwo\n\ncell a\ncell b");
    }
}
