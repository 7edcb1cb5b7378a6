//! File storage: uploaded files and the text extracted from them, in a folder on this
//! machine or an S3-compatible bucket, through `object_store`.
//!
//! Keys are made by colloquy only ([`new_key`], [`text_key_for`]), from the owner's id and a
//! fresh UUID, so nothing a client sends (a file name, `..`, `/`) ever becomes part of a
//! path. A key read back from an event or a row is accepted only in exactly that shape
//! ([`StorageKey::parse`]).
//!
//! Uploads stream: [`FileStorage::put_stream`] counts, hashes and forwards the bytes as they
//! arrive, holding at most a few parts in memory, and stores nothing at all when the upload
//! is too large, fails, or is abandoned.

use std::fmt;
use std::path::{Path as FsPath, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload, PutPayloadMut};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::settings::{S3StorageSettings, StorageBackend, StorageSettings};

/// How many leading bytes of an upload [`Stored::head`] keeps, for sniffing its type.
pub const HEAD_BYTES: usize = 8 * 1024;

/// The size of each part of a multipart upload. S3 requires at least 5 MiB for every part
/// but the last, and R2 requires them all equal, so every part but the last is exactly this.
const PART_SIZE: usize = 5 * 1024 * 1024;

/// Parts of one upload sent at once. With the part being filled, an upload holds at most
/// `(PARTS_IN_FLIGHT + 1) * PART_SIZE` bytes in memory, whatever the file's size.
const PARTS_IN_FLIGHT: usize = 2;

/// Where a stored object lives: `files/<owner>/<id>` for an uploaded file, or
/// `text/<owner>/<id>.txt` for the text extracted from it. Made only by [`new_key`],
/// [`text_key_for`] or [`StorageKey::parse`], so it is always one of those two shapes with
/// canonical (lowercase, hyphenated) UUIDs and a version-4 `id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StorageKey {
    raw: String,
    kind: KeyKind,
    owner: Uuid,
    id: Uuid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum KeyKind {
    File,
    Text,
}

/// A fresh key for a file uploaded by `owner`: `files/<owner>/<random uuid v4>`.
pub fn new_key(owner: Uuid) -> StorageKey {
    StorageKey::build(KeyKind::File, owner, Uuid::new_v4())
}

/// The key of the bytes of the file `file_id` of `owner`: `files/<owner>/<file_id>`. Both
/// ids are colloquy's own (the API generates file ids), so a key never derives from anything
/// a client named, and the key of a file follows from its id with no lookup.
pub fn file_key(owner: Uuid, file_id: Uuid) -> StorageKey {
    StorageKey::build(KeyKind::File, owner, file_id)
}

/// The key of the text extracted from the file at `key`: `text/<owner>/<id>.txt` (the same
/// key when given a text key).
pub fn text_key_for(key: &StorageKey) -> StorageKey {
    StorageKey::build(KeyKind::Text, key.owner, key.id)
}

impl StorageKey {
    fn build(kind: KeyKind, owner: Uuid, id: Uuid) -> Self {
        let raw = match kind {
            KeyKind::File => format!("files/{owner}/{id}"),
            KeyKind::Text => format!("text/{owner}/{id}.txt"),
        };
        Self { raw, kind, owner, id }
    }

    /// A key read back from storage metadata (an event, a row), if it is exactly the shape
    /// colloquy makes; anything else (`../x`, `files/<uuid>/../x`, an upper-case UUID, an
    /// extra segment) is refused.
    pub fn parse(key: &str) -> Result<Self, InvalidKey> {
        let mut segments = key.split('/');
        let (Some(kind), Some(owner), Some(last), None) =
            (segments.next(), segments.next(), segments.next(), segments.next())
        else {
            return Err(InvalidKey);
        };
        let (kind, id) = match kind {
            "files" => (KeyKind::File, last),
            "text" => (KeyKind::Text, last.strip_suffix(".txt").ok_or(InvalidKey)?),
            _ => return Err(InvalidKey),
        };
        let owner = canonical_uuid(owner).ok_or(InvalidKey)?;
        let id = canonical_uuid(id).filter(|id| id.get_version_num() == 4).ok_or(InvalidKey)?;
        Ok(Self::build(kind, owner, id))
    }

    /// The key as stored: `files/<owner>/<id>` or `text/<owner>/<id>.txt`.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Whose object this is.
    pub fn owner(&self) -> Uuid {
        self.owner
    }

    /// The object's own id (shared by a file's key and its text key).
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// Whether this is the key of extracted text rather than of an uploaded file.
    pub fn is_text(&self) -> bool {
        self.kind == KeyKind::Text
    }
}

/// `Uuid::parse_str` also takes braced, URN and upper-case forms; a key must be spelled the
/// one way colloquy writes it, so that one object has one key.
fn canonical_uuid(text: &str) -> Option<Uuid> {
    let uuid = Uuid::parse_str(text).ok()?;
    (uuid.hyphenated().to_string() == text).then_some(uuid)
}

impl fmt::Display for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl AsRef<str> for StorageKey {
    fn as_ref(&self) -> &str {
        &self.raw
    }
}

impl FromStr for StorageKey {
    type Err = InvalidKey;

    fn from_str(key: &str) -> Result<Self, InvalidKey> {
        Self::parse(key)
    }
}

impl TryFrom<String> for StorageKey {
    type Error = InvalidKey;

    fn try_from(key: String) -> Result<Self, InvalidKey> {
        Self::parse(&key)
    }
}

impl From<StorageKey> for String {
    fn from(key: StorageKey) -> Self {
        key.raw
    }
}

/// A string that is not a key colloquy made. The string itself is not repeated: it may
/// come from anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a storage key made by colloquy")]
pub struct InvalidKey;

/// What went wrong in file storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// No object has that key.
    #[error("no such stored object")]
    NotFound,
    /// The object is larger than the caller allowed.
    #[error("the stored object is larger than {limit} bytes")]
    TooLarge {
        /// The caller's limit, in bytes.
        limit: u64,
    },
    /// The storage settings cannot be used.
    #[error("invalid storage configuration: {0}")]
    Config(String),
    /// The store failed (I/O, network, permissions, ...).
    #[error("file storage failed: {0}")]
    Backend(String),
}

impl StorageError {
    fn from_store(error: object_store::Error) -> Self {
        match error {
            object_store::Error::NotFound { .. } => Self::NotFound,
            other => Self::Backend(other.to_string()),
        }
    }
}

/// Why [`FileStorage::put_stream`] stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum PutError<E> {
    /// The upload went past the caller's limit.
    #[error("the file is larger than {limit} bytes")]
    TooLarge {
        /// The caller's limit, in bytes.
        limit: u64,
    },
    /// The stream being stored failed (the client went away, a malformed request body).
    #[error("reading the upload failed")]
    Source(#[source] E),
    /// The store failed.
    #[error("file storage failed: {0}")]
    Backend(String),
}

/// What [`FileStorage::put_stream`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Bytes stored.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// The first [`HEAD_BYTES`] bytes (all of them for a smaller file), for type sniffing.
    pub head: Vec<u8>,
}

/// A stored object being read.
pub struct Download {
    /// The object's size in bytes.
    pub size: u64,
    /// Its content, in chunks.
    pub stream: BoxStream<'static, Result<Bytes, StorageError>>,
}

impl fmt::Debug for Download {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Download").field("size", &self.size).finish_non_exhaustive()
    }
}

/// The file store every process shares: cheap to clone.
#[derive(Clone)]
pub struct FileStorage {
    store: Arc<dyn ObjectStore>,
    /// Prepended to every key (S3's `prefix`; empty for a folder).
    prefix: Path,
    /// The folder of the local backend, whose empty subfolders an abandoned upload removes.
    local_root: Option<PathBuf>,
    part_size: usize,
}

impl fmt::Debug for FileStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The store's Display names only the bucket or folder; its Debug would show the
        // whole client configuration.
        f.debug_struct("FileStorage")
            .field("store", &self.store.to_string())
            .field("prefix", &self.prefix.as_ref())
            .finish()
    }
}

impl FileStorage {
    /// The store the settings describe: the local folder (created if missing) or the S3
    /// bucket (no request is made until the first use).
    pub fn from_settings(settings: &StorageSettings) -> Result<Self, StorageError> {
        match settings.backend {
            StorageBackend::Local => Self::local(&settings.local.root),
            StorageBackend::S3 => Self::s3(&settings.s3),
        }
    }

    fn local(root: &FsPath) -> Result<Self, StorageError> {
        std::fs::create_dir_all(root)
            .map_err(|e| StorageError::Config(format!("cannot create the folder {}: {e}", root.display())))?;
        let root = std::fs::canonicalize(root)
            .map_err(|e| StorageError::Config(format!("cannot open the folder {}: {e}", root.display())))?;
        let store = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| StorageError::Config(e.to_string()))?
            // Deleting an owner's last file removes the owner's folder too.
            .with_automatic_cleanup(true);
        Ok(Self { store: Arc::new(store), prefix: Path::default(), local_root: Some(root), part_size: PART_SIZE })
    }

    fn s3(settings: &S3StorageSettings) -> Result<Self, StorageError> {
        if settings.bucket.is_empty() {
            return Err(StorageError::Config("storage.s3.bucket is required".into()));
        }
        let prefix = Path::parse(settings.prefix.trim_matches('/'))
            .map_err(|_| StorageError::Config("storage.s3.prefix is not a valid object path".into()))?;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_allow_http(settings.allow_http);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        match (&settings.access_key_id, &settings.secret_access_key) {
            (Some(id), Some(secret)) => builder = builder.with_access_key_id(id).with_secret_access_key(secret),
            (None, None) => {}
            _ => {
                return Err(StorageError::Config(
                    "storage.s3.access_key_id and storage.s3.secret_access_key go together".into(),
                ))
            }
        }
        let store = builder.build().map_err(|e| StorageError::Config(e.to_string()))?;
        Ok(Self { store: Arc::new(store), prefix, local_root: None, part_size: PART_SIZE })
    }

    fn location(&self, key: &StorageKey) -> Path {
        key.as_str().split('/').fold(self.prefix.clone(), |path, segment| path.join(segment))
    }

    /// Stores `stream` at `key`, at most `max_bytes` of it, without ever holding the whole
    /// content: bytes are counted, hashed and sent on as they arrive (a single put for a
    /// small file, a multipart upload past one part). Past `max_bytes`, on an error of
    /// `stream` or of the store, the upload is aborted and nothing is left at `key`. If the
    /// returned future is dropped mid-way, the upload is aborted in the background (on S3, a
    /// bucket lifecycle rule aborting incomplete multipart uploads covers a crash).
    pub async fn put_stream<S, E>(&self, key: &StorageKey, stream: S, max_bytes: u64) -> Result<Stored, PutError<E>>
    where
        S: Stream<Item = Result<Bytes, E>>,
    {
        let location = self.location(key);
        let mut stream = std::pin::pin!(stream);
        let mut digest = Sha256::new();
        let mut head = Vec::with_capacity(HEAD_BYTES);
        let mut size = 0u64;
        let mut part = PutPayloadMut::new();
        let mut upload: Option<Upload> = None;
        while let Some(item) = stream.next().await {
            let mut chunk = match item {
                Ok(chunk) => chunk,
                Err(e) => return Err(self.abandon(upload, key, PutError::Source(e)).await),
            };
            size += chunk.len() as u64;
            if size > max_bytes {
                return Err(self.abandon(upload, key, PutError::TooLarge { limit: max_bytes }).await);
            }
            // Hashed here rather than on a blocking thread: a chunk of a request body is
            // tens of KiB, microseconds of SHA-256, less than a hop to the blocking pool.
            digest.update(&chunk);
            if head.len() < HEAD_BYTES {
                head.extend_from_slice(&chunk[..chunk.len().min(HEAD_BYTES - head.len())]);
            }
            while !chunk.is_empty() {
                let room = self.part_size - part.content_length();
                part.push(chunk.split_to(room.min(chunk.len())));
                if part.content_length() < self.part_size {
                    continue;
                }
                let full = std::mem::take(&mut part).freeze();
                let sent = match upload.as_mut() {
                    Some(upload) => upload.send(full).await,
                    None => match self.store.put_multipart(&location).await {
                        Ok(started) => upload.insert(Upload::new(started)).send(full).await,
                        Err(e) => Err(e),
                    },
                };
                if let Err(e) = sent {
                    return Err(self.abandon(upload, key, PutError::Backend(e.to_string())).await);
                }
            }
        }
        let stored = match upload {
            Some(mut upload) => {
                if part.content_length() > 0 {
                    if let Err(e) = upload.send(part.freeze()).await {
                        return Err(self.abandon(Some(upload), key, PutError::Backend(e.to_string())).await);
                    }
                }
                upload.finish().await
            }
            // The whole file fitted in one part: one request instead of three.
            None => self.store.put(&location, part.freeze()).await.map(|_| ()),
        };
        match stored {
            Ok(()) => Ok(Stored { size, sha256: hex::encode(digest.finalize()), head }),
            // `finish` has aborted the upload already; only empty folders may be left.
            Err(e) => Err(self.abandon(None, key, PutError::Backend(e.to_string())).await),
        }
    }

    /// Aborts `upload` (if one was started) and removes the folders it left empty,
    /// returning `error`. A failed abort is logged, not returned: the caller's error is
    /// the one that explains what happened.
    async fn abandon<E>(&self, upload: Option<Upload>, key: &StorageKey, error: PutError<E>) -> PutError<E> {
        if let Some(upload) = upload {
            if let Err(e) = upload.abort().await {
                tracing::warn!(%key, error = %e, "Aborting an upload failed.");
            }
        }
        if let Some(root) = &self.local_root {
            // `remove_dir` removes only an empty folder, and the store recreates a folder
            // that vanished under a concurrent upload, so this cannot lose anyone's file.
            let mut folder = root.join(key.as_str());
            while folder.pop() && folder != *root && tokio::fs::remove_dir(&folder).await.is_ok() {}
        }
        error
    }

    /// The object at `key`, streamed, with its size.
    pub async fn get_stream(&self, key: &StorageKey) -> Result<Download, StorageError> {
        let got = self.store.get(&self.location(key)).await.map_err(StorageError::from_store)?;
        let size = got.meta.size;
        Ok(Download { size, stream: got.into_stream().map_err(StorageError::from_store).boxed() })
    }

    /// The whole object at `key`, if it is at most `max_bytes` long (checked before reading).
    pub async fn get_bytes(&self, key: &StorageKey, max_bytes: u64) -> Result<Bytes, StorageError> {
        let got = self.store.get(&self.location(key)).await.map_err(StorageError::from_store)?;
        if got.meta.size > max_bytes {
            return Err(StorageError::TooLarge { limit: max_bytes });
        }
        got.bytes().await.map_err(StorageError::from_store)
    }

    /// Stores a small object in one request (extracted text, other derived data).
    pub async fn put_bytes(&self, key: &StorageKey, bytes: Bytes) -> Result<(), StorageError> {
        self.store.put(&self.location(key), bytes.into()).await.map(|_| ()).map_err(StorageError::from_store)
    }

    /// Deletes the object at `key`; an absent object is not an error (deleting twice, or
    /// after a failed upload, is fine).
    pub async fn delete(&self, key: &StorageKey) -> Result<(), StorageError> {
        match self.store.delete(&self.location(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::Backend(e.to_string())),
        }
    }
}

/// A multipart upload in progress: parts are sent in the background, at most
/// [`PARTS_IN_FLIGHT`] at once. Unlike `object_store::WriteMultipart`, it aborts the upload
/// whenever it does not complete, a failed part and a dropped upload included.
struct Upload {
    /// `None` once completed or aborted.
    inner: Option<Box<dyn MultipartUpload>>,
    parts: JoinSet<object_store::Result<()>>,
}

impl Upload {
    fn new(inner: Box<dyn MultipartUpload>) -> Self {
        Self { inner: Some(inner), parts: JoinSet::new() }
    }

    /// Starts sending `part`, first waiting for room among the parts in flight.
    async fn send(&mut self, part: PutPayload) -> object_store::Result<()> {
        while self.parts.len() >= PARTS_IN_FLIGHT {
            self.next_part().await?;
        }
        let inner = self
            .inner
            .as_mut()
            .ok_or(object_store::Error::Generic { store: "upload", source: "the upload has ended".into() })?;
        self.parts.spawn(inner.put_part(part));
        Ok(())
    }

    /// Waits for one part in flight.
    async fn next_part(&mut self) -> object_store::Result<()> {
        match self.parts.join_next().await {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(e)) => Err(object_store::Error::Generic { store: "upload", source: Box::new(e) }),
        }
    }

    /// Waits for every part, then completes the upload; aborts it if anything failed.
    async fn finish(mut self) -> object_store::Result<()> {
        while !self.parts.is_empty() {
            if let Err(e) = self.next_part().await {
                if let Err(abort) = self.abort().await {
                    tracing::warn!(error = %abort, "Aborting an upload failed.");
                }
                return Err(e);
            }
        }
        let Some(mut inner) = self.inner.take() else { return Ok(()) };
        match inner.complete().await {
            Ok(_) => Ok(()),
            Err(e) => {
                if let Err(abort) = inner.abort().await {
                    tracing::warn!(error = %abort, "Aborting an upload failed.");
                }
                Err(e)
            }
        }
    }

    /// Stops the parts in flight and aborts the upload.
    async fn abort(mut self) -> object_store::Result<()> {
        self.parts.shutdown().await;
        match self.inner.take() {
            Some(mut inner) => inner.abort().await,
            None => Ok(()),
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Dropped without finishing or aborting: the caller's future was cancelled (a
        // client that went away). Aborting needs a request on S3, so it runs in the
        // background; the folder backend's upload removes its temporary file itself.
        if let (Some(mut inner), Ok(runtime)) = (self.inner.take(), tokio::runtime::Handle::try_current()) {
            self.parts.abort_all();
            runtime.spawn(async move {
                if let Err(e) = inner.abort().await {
                    tracing::warn!(error = %e, "Aborting an abandoned upload failed.");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{LocalStorageSettings, Settings};

    const OWNER: &str = "0b6c3e5e-8c53-4f0e-9a53-2d0c1c1d9e11";
    const FOX: &[u8] = b"The quick brown fox jumps over the lazy dog";
    const FOX_SHA256: &str = "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592";

    fn owner() -> Uuid {
        Uuid::parse_str(OWNER).unwrap()
    }

    /// A folder store whose parts are `part_size` bytes, so small test files take the
    /// multipart path.
    fn local(dir: &tempfile::TempDir, part_size: usize) -> FileStorage {
        let settings = StorageSettings {
            local: LocalStorageSettings { root: dir.path().join("files-root") },
            ..Default::default()
        };
        FileStorage { part_size, ..FileStorage::from_settings(&settings).unwrap() }
    }

    fn chunks(data: &[u8], size: usize) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
        let chunks: Vec<_> = data.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        futures::stream::iter(chunks)
    }

    /// Everything under the store's folder, files and folders, relative to it.
    fn contents(storage: &FileStorage) -> Vec<String> {
        fn walk(dir: &FsPath, root: &FsPath, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                out.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                if path.is_dir() {
                    walk(&path, root, out);
                }
            }
        }
        let root = storage.local_root.clone().unwrap();
        let mut out = Vec::new();
        walk(&root, &root, &mut out);
        out.sort();
        out
    }

    #[test]
    fn new_keys_have_the_one_shape_and_parse_back() {
        let key = new_key(owner());
        assert_eq!(key.as_str(), format!("files/{OWNER}/{}", key.id()));
        assert_eq!(key.id().get_version_num(), 4);
        assert_eq!((key.owner(), key.is_text()), (owner(), false));
        assert_eq!(StorageKey::parse(key.as_str()), Ok(key.clone()));
        assert_ne!(new_key(owner()), key, "each upload gets a fresh key");

        let text = text_key_for(&key);
        assert_eq!(text.as_str(), format!("text/{OWNER}/{}.txt", key.id()));
        assert!(text.is_text());
        assert_eq!(text_key_for(&text), text);
        assert_eq!(text.as_str().parse::<StorageKey>(), Ok(text.clone()));

        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{key}\""));
        assert_eq!(serde_json::from_str::<StorageKey>(&json).unwrap(), key);
        assert!(serde_json::from_str::<StorageKey>("\"../../etc/passwd\"").is_err());
    }

    #[test]
    fn keys_of_any_other_shape_are_refused() {
        let id = new_key(owner()).id();
        let upper = id.hyphenated().to_string().to_uppercase();
        let v5 = Uuid::new_v5(&Uuid::NAMESPACE_OID, b"not random");
        for bad in [
            "../../etc/passwd".to_string(),
            format!("files/{OWNER}/../x"),
            format!("files/{OWNER}/.."),
            format!("files/../{id}"),
            format!("/files/{OWNER}/{id}"),
            format!("files/{OWNER}/{id}/"),
            format!("files/{OWNER}/{id}/x"),
            format!("files//{OWNER}/{id}"),
            format!("files/{OWNER}/{id}.txt"),
            format!("text/{OWNER}/{id}"),
            format!("text/{OWNER}/{id}.pdf"),
            format!("other/{OWNER}/{id}"),
            format!("files/{OWNER}/{upper}"),
            format!("files/{OWNER}/{{{id}}}"),
            format!("files/{OWNER}/{}", id.simple()),
            format!("files/{OWNER}/urn:uuid:{id}"),
            format!("files/{OWNER}/{v5}"),
            format!("files/{OWNER}/ {id}"),
            format!("files/report.pdf/{id}"),
            String::new(),
        ] {
            assert_eq!(StorageKey::parse(&bad), Err(InvalidKey), "{bad:?} was accepted");
        }
        assert!(!InvalidKey.to_string().contains("passwd"));
    }

    #[tokio::test]
    async fn a_streamed_file_round_trips_with_its_sha256() {
        let dir = tempfile::tempdir().unwrap();
        // Parts of 16 bytes and chunks of 7: several parts, none aligned with a chunk.
        let storage = local(&dir, 16);
        let key = new_key(owner());

        // Workers spawn uploads onto the runtime: the future must be `Send`.
        fn spawnable<T: Send>(future: T) -> T {
            future
        }
        let stored = spawnable(storage.put_stream(&key, chunks(FOX, 7), 1024)).await.unwrap();

        assert_eq!(stored, Stored { size: FOX.len() as u64, sha256: FOX_SHA256.into(), head: FOX.to_vec() });
        assert_eq!(storage.get_bytes(&key, 1024).await.unwrap(), Bytes::from_static(FOX));
        let download = storage.get_stream(&key).await.unwrap();
        assert_eq!(download.size, FOX.len() as u64);
        let streamed: Vec<Bytes> = download.stream.try_collect().await.unwrap();
        assert_eq!(streamed.concat(), FOX);
        // The file itself, and no temporary part file beside it.
        assert_eq!(contents(&storage), ["files".to_string(), format!("files/{OWNER}"), key.to_string()]);
    }

    #[tokio::test]
    async fn a_small_file_and_an_empty_one_are_stored_in_one_put() {
        let dir = tempfile::tempdir().unwrap();
        let storage = local(&dir, PART_SIZE);
        let key = new_key(owner());
        let stored = storage.put_stream(&key, chunks(FOX, 10), FOX.len() as u64).await.unwrap();
        assert_eq!(stored.sha256, FOX_SHA256);
        assert_eq!(storage.get_bytes(&key, 100).await.unwrap(), Bytes::from_static(FOX));

        let empty = new_key(owner());
        let stored = storage.put_stream(&empty, chunks(b"", 1), 0).await.unwrap();
        assert_eq!(stored.size, 0);
        assert_eq!(stored.sha256, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert!(stored.head.is_empty());
        assert_eq!(storage.get_bytes(&empty, 0).await.unwrap(), Bytes::new());
    }

    #[tokio::test]
    async fn head_is_the_first_8_kib() {
        let dir = tempfile::tempdir().unwrap();
        let storage = local(&dir, 4096);
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let key = new_key(owner());
        let stored = storage.put_stream(&key, chunks(&data, 3000), 20_000).await.unwrap();
        assert_eq!(stored.head, data[..HEAD_BYTES]);
        assert_eq!(stored.sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(storage.get_bytes(&key, 20_000).await.unwrap(), data);
    }

    #[tokio::test]
    async fn exactly_at_the_limit_is_stored_and_one_byte_over_leaves_nothing() {
        // One part larger than the file (a single put) and parts smaller than it (multipart).
        for part_size in [PART_SIZE, 16] {
            let dir = tempfile::tempdir().unwrap();
            let storage = local(&dir, part_size);
            let limit = FOX.len() as u64;

            let at_limit = new_key(owner());
            let stored = storage.put_stream(&at_limit, chunks(FOX, 5), limit).await.unwrap();
            assert_eq!(stored.size, limit);
            storage.delete(&at_limit).await.unwrap();
            assert_eq!(contents(&storage), Vec::<String>::new(), "part size {part_size}");

            let over = new_key(owner());
            let error = storage.put_stream(&over, chunks(FOX, 5), limit - 1).await.unwrap_err();
            assert!(matches!(error, PutError::TooLarge { limit: l } if l == limit - 1), "{error:?}");
            assert_eq!(storage.get_bytes(&over, 1024).await, Err(StorageError::NotFound));
            assert_eq!(contents(&storage), Vec::<String>::new(), "part size {part_size}: leftovers");
        }
    }

    #[tokio::test]
    async fn a_failing_stream_aborts_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = local(&dir, 16);
        let key = new_key(owner());
        let failing = chunks(FOX, 10).chain(futures::stream::iter([Err(std::io::Error::other("client went away"))]));

        let error = storage.put_stream(&key, failing, 1024).await.unwrap_err();

        let PutError::Source(source) = error else { panic!("{error:?}") };
        assert_eq!(source.to_string(), "client went away");
        assert_eq!(storage.get_stream(&key).await.err(), Some(StorageError::NotFound));
        assert_eq!(contents(&storage), Vec::<String>::new());
    }

    #[tokio::test]
    async fn an_abandoned_upload_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let storage = local(&dir, 16);
        let key = new_key(owner());
        // A client that sends two parts' worth, then stalls forever.
        let stalled = chunks(FOX, 10).chain(futures::stream::pending());
        let staged = |storage: &FileStorage| contents(storage).into_iter().any(|p| p.contains('#'));
        let mut upload = Box::pin(storage.put_stream(&key, stalled, 1024));
        // One poll reads all the client sent: the multipart upload (a temporary file beside
        // the key, `<id>#1`) has started.
        assert!(futures::poll!(upload.as_mut()).is_pending());
        assert!(staged(&storage), "{:?}", contents(&storage));
        // Dropped, as a cancelled request's future is.
        drop(upload);
        // The temporary file is removed by a background task: poll for it, bounded.
        let removed = async {
            while staged(&storage) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), removed)
            .await
            .unwrap_or_else(|_| panic!("still there: {:?}", contents(&storage)));
        assert_eq!(storage.get_bytes(&key, 1024).await, Err(StorageError::NotFound));
    }

    #[tokio::test]
    async fn get_bytes_is_bounded_and_missing_objects_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let storage = local(&dir, PART_SIZE);
        let key = new_key(owner());
        storage.put_bytes(&key, Bytes::from_static(FOX)).await.unwrap();
        let limit = FOX.len() as u64 - 1;
        assert_eq!(storage.get_bytes(&key, limit).await, Err(StorageError::TooLarge { limit }));
        let missing = new_key(owner());
        assert_eq!(storage.get_bytes(&missing, 10).await, Err(StorageError::NotFound));
        assert_eq!(storage.get_stream(&missing).await.err(), Some(StorageError::NotFound));
    }

    #[tokio::test]
    async fn extracted_text_is_kept_beside_the_file_and_deleting_twice_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let storage = local(&dir, PART_SIZE);
        let key = new_key(owner());
        storage.put_stream(&key, chunks(FOX, 8), 1024).await.unwrap();
        let text = text_key_for(&key);
        storage.put_bytes(&text, Bytes::from_static(b"the fox")).await.unwrap();
        assert_eq!(storage.get_bytes(&text, 100).await.unwrap(), Bytes::from_static(b"the fox"));
        assert!(contents(&storage).contains(&format!("{text}")));

        storage.delete(&key).await.unwrap();
        assert_eq!(storage.get_bytes(&key, 100).await, Err(StorageError::NotFound));
        assert_eq!(storage.get_bytes(&text, 100).await.unwrap(), Bytes::from_static(b"the fox"));
        storage.delete(&key).await.unwrap();
        storage.delete(&text).await.unwrap();
        assert_eq!(contents(&storage), Vec::<String>::new());
    }

    /// A multipart upload that fails its parts when told to, and reports its abort.
    #[derive(Debug)]
    struct Recorder {
        fail_parts: bool,
        aborted: Option<tokio::sync::oneshot::Sender<()>>,
    }

    #[async_trait::async_trait]
    impl MultipartUpload for Recorder {
        fn put_part(&mut self, _: PutPayload) -> object_store::UploadPart {
            let fail = self.fail_parts;
            Box::pin(async move {
                match fail {
                    true => Err(object_store::Error::Generic { store: "test", source: "part refused".into() }),
                    false => Ok(()),
                }
            })
        }

        async fn complete(&mut self) -> object_store::Result<object_store::PutResult> {
            Ok(object_store::PutResult { e_tag: None, version: None })
        }

        async fn abort(&mut self) -> object_store::Result<()> {
            if let Some(aborted) = self.aborted.take() {
                let _ = aborted.send(());
            }
            Ok(())
        }
    }

    fn recorded(fail_parts: bool) -> (Upload, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Upload::new(Box::new(Recorder { fail_parts, aborted: Some(tx) })), rx)
    }

    #[tokio::test]
    async fn a_failed_part_aborts_the_upload() {
        let (mut upload, mut aborted) = recorded(true);
        upload.send(Bytes::from_static(FOX).into()).await.unwrap();
        assert!(upload.finish().await.is_err());
        assert_eq!(aborted.try_recv(), Ok(()));
    }

    #[tokio::test]
    async fn a_dropped_upload_is_aborted_in_the_background() {
        let (mut upload, aborted) = recorded(false);
        upload.send(Bytes::from_static(FOX).into()).await.unwrap();
        drop(upload);
        tokio::time::timeout(std::time::Duration::from_secs(10), aborted).await.unwrap().unwrap();

        // A completed upload is not aborted.
        let (mut upload, aborted) = recorded(false);
        upload.send(Bytes::from_static(FOX).into()).await.unwrap();
        upload.finish().await.unwrap();
        assert!(aborted.await.is_err(), "the recorder was dropped without an abort");
    }

    fn s3_settings() -> StorageSettings {
        StorageSettings {
            backend: StorageBackend::S3,
            s3: S3StorageSettings {
                bucket: "colloquy-files".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: "auto".into(),
                access_key_id: Some("AKIDEXAMPLE".into()),
                secret_access_key: Some("s3-secret-wJalrXUtnFEMI".into()),
                allow_http: true,
                prefix: "/tenant-a/".into(),
            },
            ..Default::default()
        }
    }

    #[test]
    fn s3_settings_build_a_store_without_printing_the_secret() {
        let settings = s3_settings();
        let storage = FileStorage::from_settings(&settings).unwrap();
        let key = new_key(owner());
        assert_eq!(storage.location(&key).as_ref(), format!("tenant-a/{key}"));
        let printed = format!(
            "{settings:?} {settings:#?} {storage:?} {:?}",
            Settings { storage: settings.clone(), ..Default::default() }
        );
        assert!(!printed.contains("s3-secret"), "{printed}");
        assert!(printed.contains("colloquy-files") && printed.contains("AKIDEXAMPLE"), "{printed}");
    }

    #[test]
    fn unusable_s3_settings_are_refused() {
        let mut no_bucket = s3_settings();
        no_bucket.s3.bucket.clear();
        let mut half_credentials = s3_settings();
        half_credentials.s3.secret_access_key = None;
        let mut bad_prefix = s3_settings();
        bad_prefix.s3.prefix = "a/../b".into();
        for settings in [no_bucket, half_credentials, bad_prefix] {
            let error = FileStorage::from_settings(&settings).unwrap_err();
            assert!(matches!(error, StorageError::Config(_)), "{error:?}");
            assert!(!error.to_string().contains("s3-secret"), "{error}");
        }
    }

    #[test]
    fn the_local_folder_is_created_under_the_data_directory_by_default() {
        assert_eq!(StorageSettings::default().local.root, PathBuf::from(".colloquy/files"));
        assert_eq!(StorageSettings::default().backend, StorageBackend::Local);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b/files");
        let settings = StorageSettings { local: LocalStorageSettings { root: root.clone() }, ..Default::default() };
        FileStorage::from_settings(&settings).unwrap();
        assert!(root.is_dir());
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn the_storage_section_comes_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("COLLOQUY_STORAGE__BACKEND", "s3");
            jail.set_env("COLLOQUY_STORAGE__S3__BUCKET", "uploads");
            jail.set_env("COLLOQUY_STORAGE__S3__ENDPOINT", "https://minio.internal:9000");
            jail.set_env("COLLOQUY_STORAGE__S3__ACCESS_KEY_ID", "colloquy");
            jail.set_env("COLLOQUY_STORAGE__S3__SECRET_ACCESS_KEY", "env-s3cret");
            jail.set_env("COLLOQUY_STORAGE__S3__ALLOW_HTTP", "true");
            jail.set_env("COLLOQUY_STORAGE__LOCAL__ROOT", "/var/lib/colloquy/files");
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(s.storage.backend, StorageBackend::S3);
            assert_eq!(s.storage.s3.bucket, "uploads");
            assert_eq!(s.storage.s3.endpoint.as_deref(), Some("https://minio.internal:9000"));
            assert_eq!(s.storage.s3.access_key_id.as_deref(), Some("colloquy"));
            assert_eq!(s.storage.s3.secret_access_key.as_deref(), Some("env-s3cret"));
            assert!(s.storage.s3.allow_http);
            assert_eq!(s.storage.s3.region, "us-east-1", "unset keys keep their defaults");
            assert_eq!(s.storage.local.root, PathBuf::from("/var/lib/colloquy/files"));
            assert!(!format!("{s:?}").contains("env-s3cret"));
            jail.clear_env();
            jail.set_env("COLLOQUY_STORAGE__BACKEND", "ftp");
            assert!(Settings::load(None).is_err(), "an unknown backend is refused");
            Ok(())
        });
    }
}
