use super::FileStatus;
use crate::values::TextField;

/// Business rejections of File commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum FileError {
    /// `UploadFile` on an id that was already uploaded (deleted files included).
    #[error("the file was already uploaded")]
    AlreadyUploaded,
    /// The file does not exist, or belongs to someone else.
    #[error("the file does not exist")]
    NotFound,
    /// The file was deleted.
    #[error("the file was deleted")]
    Deleted,
    /// The file name is empty (after trimming) or longer than the limit.
    #[error("the file name must be between 1 and {max} characters")]
    InvalidFileName {
        /// The limit.
        max: usize,
    },
    /// A control character in the file name.
    #[error("the {field} contains a control character")]
    ControlCharacter {
        /// Where.
        field: TextField,
    },
    /// A bidirectional override/isolate or zero-width character in the file name
    /// (`invoice\u{202E}fdp.exe` reads as `invoiceexe.pdf`).
    #[error("the {field} contains a bidirectional-override or zero-width character")]
    InvisibleCharacter {
        /// Where.
        field: TextField,
    },
    /// The media type is not of the form `type/subtype[; parameters]`.
    #[error("the media type is not valid")]
    InvalidMediaType,
    /// The checksum is not 64 lower-case hexadecimal digits.
    #[error("the SHA-256 must be 64 lower-case hexadecimal digits")]
    InvalidSha256,
    /// A file of zero bytes.
    #[error("the file is empty")]
    EmptyFile,
    /// The storage key is not a relative path of safe characters.
    #[error("the storage key is not valid")]
    InvalidStorageKey,
    /// A processing record for a file whose processing already finished.
    #[error("the file is not being processed (it is {status})")]
    NotProcessing {
        /// Where the file is instead.
        status: FileStatus,
    },
    /// The failure code is not snake_case ASCII of at most the limit.
    #[error("the failure code must be snake_case, at most {max} characters")]
    InvalidFailureCode {
        /// The limit.
        max: usize,
    },
    /// The failure message is empty, too long, or holds control or invisible characters.
    #[error("the failure message must be between 1 and {max} characters of readable text")]
    InvalidFailureMessage {
        /// The limit.
        max: usize,
    },
}
