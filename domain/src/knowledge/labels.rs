//! Tags and categories: short one-line labels people file documents under. Tags are
//! compared as typed by no one in particular, so they are normalised (trimmed, Unicode
//! NFKC, lower case) and deduplicated; a category is shown as entered.

use unicode_normalization::UnicodeNormalization;

use super::KnowledgeDocumentError;
use crate::values::{is_invisible, TextField};

/// Most distinct tags on a document.
pub const TAGS_MAX: usize = 20;
/// Longest accepted tag, in characters (after normalisation).
pub const TAG_MAX: usize = 50;
/// Longest accepted category, in characters.
pub const CATEGORY_MAX: usize = 50;

/// Checks the characters of a one-line label: no control character at all, no invisible one.
fn label_chars(label: &str, field: TextField) -> Result<(), KnowledgeDocumentError> {
    if label.chars().any(char::is_control) {
        return Err(KnowledgeDocumentError::ControlCharacter { field });
    }
    if label.chars().any(is_invisible) {
        return Err(KnowledgeDocumentError::InvisibleCharacter { field });
    }
    Ok(())
}

/// One tag's normal form: trimmed, NFKC, lower case. Lower-casing can produce text NFKC
/// would change, so it is normalised again (as e-mail addresses are).
fn normal_tag(raw: &str) -> String {
    raw.trim().nfkc().collect::<String>().to_lowercase().nfkc().collect::<String>().trim().to_string()
}

/// Normalises tags: each trimmed, in Unicode NFKC and lower case, 1 to [`TAG_MAX`]
/// characters without control or invisible characters; duplicates (after normalisation)
/// dropped, first occurrence kept, order kept; at most [`TAGS_MAX`] distinct tags.
pub fn normalise_tags(raw: &[String]) -> Result<Vec<String>, KnowledgeDocumentError> {
    let mut tags: Vec<String> = Vec::new();
    for tag in raw {
        let tag = normal_tag(tag);
        label_chars(&tag, TextField::Tag)?;
        let len = tag.chars().count();
        if len == 0 || len > TAG_MAX {
            return Err(KnowledgeDocumentError::InvalidTag { max: TAG_MAX });
        }
        if !tags.contains(&tag) {
            if tags.len() == TAGS_MAX {
                return Err(KnowledgeDocumentError::TooManyTags { max: TAGS_MAX });
            }
            tags.push(tag);
        }
    }
    Ok(tags)
}

/// A category: trimmed, 1 to [`CATEGORY_MAX`] characters, no control or invisible
/// characters; its case is kept.
pub(super) fn category(raw: &str) -> Result<String, KnowledgeDocumentError> {
    let category = raw.trim();
    label_chars(category, TextField::Category)?;
    let len = category.chars().count();
    match len > 0 && len <= CATEGORY_MAX {
        true => Ok(category.to_string()),
        false => Err(KnowledgeDocumentError::InvalidCategory { max: CATEGORY_MAX }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn strings(tags: &[&str]) -> Vec<String> {
        tags.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn tags_are_trimmed_lower_cased_and_deduplicated_in_order() {
        let tags = normalise_tags(&strings(&[" Rust ", "CQRS", "rust", "ｒｕｓｔ", "Event Sourcing", "cqrs"]));
        assert_eq!(tags, Ok(strings(&["rust", "cqrs", "event sourcing"])));
        assert_eq!(normalise_tags(&[]), Ok(vec![]));
    }

    #[test]
    fn tags_are_refused_when_blank_too_long_or_hiding_characters() {
        assert_eq!(normalise_tags(&strings(&["ok", "  "])), Err(KnowledgeDocumentError::InvalidTag { max: TAG_MAX }));
        assert_eq!(
            normalise_tags(&["t".repeat(TAG_MAX + 1)]),
            Err(KnowledgeDocumentError::InvalidTag { max: TAG_MAX })
        );
        assert_eq!(normalise_tags(&["é".repeat(TAG_MAX)]), Ok(vec!["é".repeat(TAG_MAX)]), "characters, not bytes");
        assert_eq!(
            normalise_tags(&strings(&["a\tb"])),
            Err(KnowledgeDocumentError::ControlCharacter { field: TextField::Tag })
        );
        assert_eq!(
            normalise_tags(&strings(&["a\u{200B}b"])),
            Err(KnowledgeDocumentError::InvisibleCharacter { field: TextField::Tag })
        );
    }

    // The limit counts distinct tags: duplicates of the twenty do not count against it.
    #[test]
    fn the_tag_limit_counts_distinct_tags() {
        let twenty: Vec<String> = (0..TAGS_MAX).map(|i| format!("t{i}")).collect();
        let with_duplicates: Vec<String> = twenty.iter().chain(twenty.iter()).map(|t| t.to_uppercase()).collect();
        assert_eq!(normalise_tags(&with_duplicates), Ok(twenty.clone()));
        let one_more: Vec<String> = twenty.into_iter().chain(["t99".to_string()]).collect();
        assert_eq!(normalise_tags(&one_more), Err(KnowledgeDocumentError::TooManyTags { max: TAGS_MAX }));
    }

    #[test]
    fn categories_keep_their_case() {
        assert_eq!(category(" HR "), Ok("HR".into()));
        assert_eq!(category(""), Err(KnowledgeDocumentError::InvalidCategory { max: CATEGORY_MAX }));
        assert_eq!(
            category(&"c".repeat(CATEGORY_MAX + 1)),
            Err(KnowledgeDocumentError::InvalidCategory { max: CATEGORY_MAX })
        );
        assert_eq!(
            category("H\nR"),
            Err(KnowledgeDocumentError::ControlCharacter { field: TextField::Category })
        );
        assert_eq!(
            category("H\u{202E}R"),
            Err(KnowledgeDocumentError::InvisibleCharacter { field: TextField::Category })
        );
    }

    proptest! {
        /// Whatever the input, accepted tags are normal (normalising them again changes
        /// nothing), distinct, within their limits, and in the order of first appearance;
        /// a list is refused only for a tag refused on its own or too many distinct tags.
        #[test]
        fn normalised_tags_are_a_fixed_point(raw in proptest::collection::vec(prop_oneof![
            8 => "\\PC{1,12}",
            8 => "[A-Ca-c][A-Ca-c ]{0,2}",
            1 => "[ \\ta\\x{200b}]{0,3}",
        ], 0..24)) {
            match normalise_tags(&raw) {
                Ok(tags) => {
                    prop_assert_eq!(normalise_tags(&tags), Ok(tags.clone()));
                    prop_assert!(tags.len() <= TAGS_MAX);
                    let mut distinct = tags.clone();
                    distinct.sort();
                    distinct.dedup();
                    prop_assert_eq!(distinct.len(), tags.len());
                    for tag in &tags {
                        let len = tag.chars().count();
                        prop_assert!((1..=TAG_MAX).contains(&len));
                        prop_assert_eq!(tag.to_lowercase(), tag.clone());
                        prop_assert!(!tag.chars().any(|c| c.is_control() || is_invisible(c)));
                    }
                    // Order of first appearance: each tag first occurs after the previous one did.
                    let first = |tag: &String| raw.iter().position(|r| normal_tag(r) == *tag);
                    let positions: Vec<_> = tags.iter().map(first).collect();
                    prop_assert!(positions.iter().all(Option::is_some));
                    prop_assert!(positions.windows(2).all(|w| w[0] < w[1]));
                }
                Err(_) => {
                    let one_refused = raw.iter().any(|t| normalise_tags(std::slice::from_ref(t)).is_err());
                    let mut distinct: Vec<String> = raw.iter().map(|t| normal_tag(t)).collect();
                    distinct.sort();
                    distinct.dedup();
                    prop_assert!(one_refused || distinct.len() > TAGS_MAX, "{:?}", raw);
                }
            }
        }

        /// Tags that differ only in case and surrounding spaces are one tag.
        #[test]
        fn case_and_spacing_variants_are_one_tag(tag in "[a-zA-Z][a-zA-Z0-9 ]{0,20}[a-zA-Z0-9]") {
            let variants = vec![tag.clone(), tag.to_uppercase(), format!("  {} ", tag.to_lowercase())];
            prop_assert_eq!(normalise_tags(&variants), Ok(vec![tag.to_lowercase()]));
        }
    }
}
