//! What an upload's fields must satisfy. The file name is display data only: nothing is
//! ever derived from it (the storage key is the server's), so it is held only to the rules
//! of text shown to people.

use super::FileError;
use crate::values::{is_invisible, TextField};

/// Longest accepted file name, in characters (the common file-system limit).
pub const FILE_NAME_MAX: usize = 255;
/// Longest accepted media type, parameters included, in characters.
pub const MEDIA_TYPE_MAX: usize = 255;
/// Longest accepted storage key, in bytes (the S3 object key limit).
pub const STORAGE_KEY_MAX: usize = 1_024;

/// A file name: trimmed, 1 to [`FILE_NAME_MAX`] characters, no control character at all
/// (unlike titles, not even tab or line feed: a name is one line) and no invisible one.
pub(super) fn file_name(raw: &str) -> Result<String, FileError> {
    let name = raw.trim();
    if name.chars().any(char::is_control) {
        return Err(FileError::ControlCharacter { field: TextField::FileName });
    }
    if name.chars().any(is_invisible) {
        return Err(FileError::InvisibleCharacter { field: TextField::FileName });
    }
    let len = name.chars().count();
    match len > 0 && len <= FILE_NAME_MAX {
        true => Ok(name.to_string()),
        false => Err(FileError::InvalidFileName { max: FILE_NAME_MAX }),
    }
}

/// RFC 6838 `restricted-name`: a letter or digit, then letters, digits and `!#$&-^_.+`.
fn restricted_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.len() <= 127
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
}

/// A media type `type/subtype[; parameters]` of printable ASCII, at most
/// [`MEDIA_TYPE_MAX`] characters. Its `type/subtype` is lower-cased (it is case-insensitive,
/// and the ingest worker picks its extractor by it); parameters are kept as given.
pub(super) fn media_type(raw: &str) -> Result<String, FileError> {
    let raw = raw.trim();
    if raw.len() > MEDIA_TYPE_MAX || !raw.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
        return Err(FileError::InvalidMediaType);
    }
    let (essence, parameters) = match raw.split_once(';') {
        Some((essence, parameters)) => (essence.trim(), Some(parameters)),
        None => (raw, None),
    };
    match essence.split_once('/') {
        Some((kind, subtype)) if restricted_name(kind) && restricted_name(subtype) => {
            let essence = essence.to_ascii_lowercase();
            Ok(parameters.map_or_else(|| essence.clone(), |p| format!("{essence};{p}")))
        }
        _ => Err(FileError::InvalidMediaType),
    }
}

/// A SHA-256 as 64 lower-case hexadecimal digits (the form the server computes; upper case
/// is refused rather than folded, so one file has one spelling in every event).
pub(super) fn sha256(raw: &str) -> Result<String, FileError> {
    match raw.len() == 64 && raw.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        true => Ok(raw.to_string()),
        false => Err(FileError::InvalidSha256),
    }
}

/// A storage key: a relative path of at most [`STORAGE_KEY_MAX`] bytes, made of ASCII
/// letters, digits and `!-_.*'()=` (the characters S3 calls safe) separated by single `/`,
/// with no `.` or `..` segment. Any store (a local folder, S3) takes such a key as it is,
/// and none escapes the store's root.
pub(super) fn storage_key(raw: &str) -> Result<String, FileError> {
    let safe = |c: char| c.is_ascii_alphanumeric() || "!-_.*'()=".contains(c);
    let valid = !raw.is_empty()
        && raw.len() <= STORAGE_KEY_MAX
        && raw.split('/').all(|segment| !matches!(segment, "" | "." | "..") && segment.chars().all(safe));
    match valid {
        true => Ok(raw.to_string()),
        false => Err(FileError::InvalidStorageKey),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn media_types_lower_case_their_essence_and_keep_parameters() {
        assert_eq!(media_type("application/pdf"), Ok("application/pdf".into()));
        assert_eq!(media_type(" Text/Plain ; charset=UTF-8"), Ok("text/plain; charset=UTF-8".into()));
        assert_eq!(
            media_type("application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
            Ok("application/vnd.openxmlformats-officedocument.wordprocessingml.document".into())
        );
        for bad in ["", "pdf", "/pdf", "text/", "text/plain/extra", "text /plain", "tëxt/plain", "text/plain\u{0}", "-x/y"]
        {
            assert_eq!(media_type(bad), Err(FileError::InvalidMediaType), "{bad:?}");
        }
        assert_eq!(media_type(&format!("text/plain; p={}", "x".repeat(MEDIA_TYPE_MAX))), Err(FileError::InvalidMediaType));
    }

    #[test]
    fn sha256_is_64_lower_case_hex_digits() {
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(sha256(hex), Ok(hex.into()));
        for bad in [&hex.to_uppercase(), &hex[1..], &format!("{hex}0"), &hex.replace('9', "g"), ""] {
            assert_eq!(sha256(bad), Err(FileError::InvalidSha256), "{bad:?}");
        }
    }

    #[test]
    fn storage_keys_are_relative_paths_of_safe_characters() {
        for good in ["files/1f0c/9a7e.bin", "a", "u=7/(copy)_1.txt"] {
            assert_eq!(storage_key(good), Ok(good.into()), "{good:?}");
        }
        let too_long = "k".repeat(STORAGE_KEY_MAX + 1);
        for bad in
            ["", "/etc/passwd", "files/", "files//x", "../x", "files/../../x", "./x", "my file.pdf", "a\\b", "ü", &too_long]
        {
            assert_eq!(storage_key(bad), Err(FileError::InvalidStorageKey), "{bad:?}");
        }
    }

    #[test]
    fn file_names_are_one_line_of_visible_text() {
        assert_eq!(file_name("  Quarterly report.pdf "), Ok("Quarterly report.pdf".into()));
        assert_eq!(file_name("../../etc/passwd"), Ok("../../etc/passwd".into()), "display data only");
        assert_eq!(file_name("a\tb.txt"), Err(FileError::ControlCharacter { field: TextField::FileName }));
        assert_eq!(file_name("a\nb.txt"), Err(FileError::ControlCharacter { field: TextField::FileName }));
        assert_eq!(file_name("invoice\u{202E}fdp.exe"), Err(FileError::InvisibleCharacter { field: TextField::FileName }));
        assert_eq!(file_name(&"é".repeat(FILE_NAME_MAX)), Ok("é".repeat(FILE_NAME_MAX)), "characters, not bytes");
    }

    proptest! {
        /// An accepted key never climbs out of the store's root, whatever it is made of.
        #[test]
        fn accepted_storage_keys_stay_below_the_root(key in "[a-z./\\\\-]{0,30}") {
            if let Ok(key) = storage_key(&key) {
                prop_assert!(!key.starts_with('/'));
                prop_assert!(key.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
                prop_assert!(!key.contains('\\'));
            }
        }
    }
}
