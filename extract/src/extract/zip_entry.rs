//! Inflating one zip entry without ever producing more than its declared size.
//!
//! The zip crate parses the central directory and hands over the entry's compressed bytes;
//! inflating them here, rather than through the crate's own reader, makes the declared-size
//! bound this module's rule with its own error, so a lying archive is told apart from a
//! damaged one (the crate reports both as the same kind of I/O error).

use std::fmt;
use std::io::{self, Read};

use flate2::read::DeflateDecoder;
use zip::CompressionMethod;

/// Why reading an entry failed, beyond plain I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EntryError {
    /// The entry inflates to more than its declared size: the archive lies about it.
    PastDeclaredSize,
    /// The entry ends before its declared size.
    ShortOfDeclaredSize,
    /// The inflated bytes do not match the entry's CRC-32.
    Checksum,
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EntryError::PastDeclaredSize => "the entry inflates past its declared size",
            EntryError::ShortOfDeclaredSize => "the entry ends before its declared size",
            EntryError::Checksum => "the entry's checksum does not match",
        })
    }
}

impl std::error::Error for EntryError {}

impl EntryError {
    /// The `EntryError` inside an I/O error that passed through other readers, if any.
    pub(super) fn find(error: &io::Error) -> Option<EntryError> {
        error.get_ref().and_then(|inner| inner.downcast_ref::<EntryError>()).copied()
    }
}

/// The entry's content from its `compressed` bytes: stored or deflated (the two methods Office
/// writes); `None` for any other method.
///
/// The inflater is read through `take(declared_size + 1)`, so at most one byte more than
/// declared is ever produced, and that byte is an [`EntryError::PastDeclaredSize`]. At the end
/// the size and the CRC-32 must match the declared ones.
pub(super) fn inflate<'a, R: Read + 'a>(
    compressed: R,
    method: CompressionMethod,
    declared_size: u64,
    crc32: u32,
) -> Option<impl Read + 'a> {
    let inflated: Box<dyn Read + 'a> = match method {
        CompressionMethod::Stored => Box::new(compressed),
        CompressionMethod::Deflated => Box::new(DeflateDecoder::new(compressed)),
        _ => return None,
    };
    Some(Bounded {
        inner: inflated.take(declared_size.saturating_add(1)),
        declared_size,
        read: 0,
        crc: crc32fast::Hasher::new(),
        crc32,
    })
}

struct Bounded<R> {
    inner: io::Take<R>,
    declared_size: u64,
    read: u64,
    crc: crc32fast::Hasher,
    crc32: u32,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let count = self.inner.read(buf)?;
        self.read = self.read.saturating_add(count as u64);
        if self.read > self.declared_size {
            return Err(io::Error::other(EntryError::PastDeclaredSize));
        }
        if count == 0 && !buf.is_empty() {
            if self.read < self.declared_size {
                return Err(io::Error::other(EntryError::ShortOfDeclaredSize));
            }
            if self.crc.clone().finalize() != self.crc32 {
                return Err(io::Error::other(EntryError::Checksum));
            }
        }
        self.crc.update(&buf[..count]);
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::DeflateEncoder;
    use flate2::Compression;

    use super::*;

    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn read(compressed: &[u8], method: CompressionMethod, declared: u64, crc: u32) -> Result<Vec<u8>, EntryError> {
        let mut out = Vec::new();
        inflate(compressed, method, declared, crc)
            .unwrap()
            .read_to_end(&mut out)
            .map_err(|error| EntryError::find(&error).unwrap())?;
        Ok(out)
    }

    #[test]
    fn an_honest_entry_reads_whole() {
        let data = b"<w:document>hello</w:document>".repeat(100);
        let crc = crc32fast::hash(&data);
        let size = data.len() as u64;
        assert_eq!(read(&deflate(&data), CompressionMethod::Deflated, size, crc), Ok(data.clone()));
        assert_eq!(read(&data, CompressionMethod::Stored, size, crc), Ok(data));
    }

    #[test]
    fn lies_and_damage_are_told_apart() {
        let data = vec![0u8; 100_000];
        let crc = crc32fast::hash(&data);
        let deflated = deflate(&data);
        assert_eq!(read(&deflated, CompressionMethod::Deflated, 1000, crc), Err(EntryError::PastDeclaredSize));
        assert_eq!(read(&deflated, CompressionMethod::Deflated, 200_000, crc), Err(EntryError::ShortOfDeclaredSize));
        assert_eq!(read(&deflated, CompressionMethod::Deflated, 100_000, crc ^ 1), Err(EntryError::Checksum));
    }
}
