//! The File aggregate: an uploaded file's metadata, where its bytes are stored, and whether
//! its text could be extracted (processing, then ready or failed; deleted).

mod aggregate;
mod commands;
mod errors;
mod events;
mod upload;

pub use aggregate::{File, FileStatus};
pub use commands::FileCommand;
pub use errors::FileError;
pub use events::{FileDeleted, FileEvent, FileProcessed, FileProcessingFailed, FileUploaded};
pub use upload::{FILE_NAME_MAX, MEDIA_TYPE_MAX, STORAGE_KEY_MAX};
