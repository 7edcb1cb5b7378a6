//! Markdown to plain text, from pulldown-cmark's events.

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

/// The text a reader of the rendered Markdown would see: block elements end with a blank line
/// (list items and table rows with a line break), table cells are separated by tabs; emphasis,
/// link targets, raw HTML tags and YAML front matter are dropped. Link texts, image alt texts
/// and code are kept: they are content.
pub(super) fn to_text(markdown: &str) -> String {
    let options = Options::ENABLE_TABLES
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_YAML_STYLE_METADATA_BLOCKS
        | Options::ENABLE_DEFINITION_LIST;
    let mut out = String::with_capacity(markdown.len());
    let mut in_metadata = false;
    let mut first_cell = true;
    for event in Parser::new_ext(markdown, options) {
        match event {
            Event::Start(Tag::MetadataBlock(_)) => in_metadata = true,
            Event::End(TagEnd::MetadataBlock(_)) => in_metadata = false,
            Event::Text(text) if !in_metadata => out.push_str(&text),
            Event::Code(code) | Event::InlineMath(code) => out.push_str(&code),
            Event::DisplayMath(math) => {
                end_line(&mut out);
                out.push_str(&math);
                end_line(&mut out);
            }
            Event::Html(html) | Event::InlineHtml(html) => out.push_str(&strip_tags(&html)),
            Event::SoftBreak => out.push(' '),
            Event::HardBreak => out.push('\n'),
            Event::Rule => end_block(&mut out),
            Event::Start(Tag::Item | Tag::TableRow | Tag::TableHead) => {
                end_line(&mut out);
                first_cell = true;
            }
            Event::Start(Tag::TableCell) => {
                if !first_cell {
                    out.push('\t');
                }
                first_cell = false;
            }
            Event::Start(
                Tag::Paragraph
                | Tag::Heading { .. }
                | Tag::CodeBlock(_)
                | Tag::BlockQuote(_)
                | Tag::HtmlBlock
                | Tag::DefinitionListTitle
                | Tag::DefinitionListDefinition,
            ) => end_line(&mut out),
            Event::End(TagEnd::Item | TagEnd::TableRow | TagEnd::TableHead) => end_line(&mut out),
            Event::End(
                TagEnd::Paragraph
                | TagEnd::Heading(_)
                | TagEnd::CodeBlock
                | TagEnd::BlockQuote(_)
                | TagEnd::HtmlBlock
                | TagEnd::List(_)
                | TagEnd::Table
                | TagEnd::FootnoteDefinition
                | TagEnd::DefinitionList,
            ) => end_block(&mut out),
            _ => {}
        }
    }
    out
}

/// Ends the current line, unless the output is already at the start of one.
fn end_line(out: &mut String) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
}

/// Ends the current block with a blank line (the caller's tidying collapses repeats).
fn end_block(out: &mut String) {
    end_line(out);
    out.push('\n');
}

/// The text between the tags of a raw HTML fragment (`<div>Note</div>` → `Note`).
fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::tidy;

    #[test]
    fn markup_is_dropped_and_paragraphs_are_kept() {
        let markdown = "---\ntitle: Secret front matter\n---\n\n# The *Title*\n\nA [link](https://example.com) and `code`,\nwrapped.\n\n- one\n- two\n  - nested\n\n> quoted\n\n```rust\nfn main() {}\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n<div class=\"note\">Raw note</div>\n";
        assert_eq!(
            tidy(&to_text(markdown)),
            "The Title\n\nA link and code, wrapped.\n\none\ntwo\nnested\n\nquoted\n\nfn main() {}\n\na\tb\n1\t2\n\nRaw note"
        );
    }
}
