//! Cutting extracted text into overlapping, token-bounded chunks for embedding.

use serde::{Deserialize, Serialize};
use text_splitter::{ChunkConfig, TextSplitter};
use tiktoken_rs::{cl100k_base_singleton, CoreBPE};

/// The text-splitter release the chunks are cut with, recorded in [`ChunkSettings::describe`]
/// (a test checks it against Cargo.lock, so a dependency bump cannot leave it stale).
const TEXT_SPLITTER: &str = "0.30";
/// The tokenizer chunks are measured with. It is OpenAI's, not the embedding model's: what
/// matters is a stable, fast token count that tracks the models' own closely enough; the
/// default 200 leaves ample room under all-MiniLM-L6-v2's 256-token window.
const TOKENIZER: &str = "cl100k_base";

/// How documents are chunked. Recorded (as [`ChunkSettings::describe`]) on each indexed
/// version, because changing them changes every chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct ChunkSettings {
    /// The most tokens (cl100k_base) a chunk may have. At least 1.
    pub max_tokens: usize,
    /// How many tokens neighbouring chunks may share, so that a passage cut at a chunk
    /// boundary is still whole in one of them. At most half of `max_tokens`.
    pub overlap_tokens: usize,
}

impl Default for ChunkSettings {
    fn default() -> Self {
        ChunkSettings { max_tokens: 200, overlap_tokens: 40 }
    }
}

impl ChunkSettings {
    /// The settings as [`chunk`] applies them: `max_tokens` at least 1 and `overlap_tokens`
    /// at most half of it (an overlap close to the chunk size would make as many chunks as
    /// there are tokens).
    pub fn normalised(self) -> Self {
        let max_tokens = self.max_tokens.max(1);
        ChunkSettings { max_tokens, overlap_tokens: self.overlap_tokens.min(max_tokens / 2) }
    }

    /// A stable description of how chunks are cut, e.g.
    /// `"text-splitter 0.30, cl100k_base, 200 tokens, 40 overlap"` (of the normalised settings).
    pub fn describe(&self) -> String {
        let settings = self.normalised();
        format!(
            "text-splitter {TEXT_SPLITTER}, {TOKENIZER}, {} tokens, {} overlap",
            settings.max_tokens, settings.overlap_tokens
        )
    }
}

/// One chunk of a document's text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextChunk {
    /// The chunk's index in the document, from 0 with no gaps.
    pub position: u32,
    /// The chunk's text: `text[start..start + text.len()]` of the chunked text, trimmed.
    pub text: String,
    /// The byte offset of the chunk in the chunked text.
    pub start: usize,
}

/// Cuts `text` into chunks of at most `settings.max_tokens` tokens at the highest semantic
/// boundary that fits (blank lines, then line breaks, sentences, words, graphemes:
/// text-splitter's `TextSplitter`). Chunks are trimmed of surrounding whitespace; blank text
/// gives no chunks.
///
/// Neighbours overlap by up to `settings.overlap_tokens` where a chunk was cut inside a
/// paragraph (the next one starts a few sentences or words back). text-splitter takes the
/// overlap at the level it cut at, so a chunk that ends exactly at a paragraph break is
/// followed by one starting at the next paragraph, sharing nothing: the break is already a
/// clean cut.
///
/// Deterministic: the same text and settings always give the same chunks, so chunk ids can
/// be derived from positions. CPU-bound (tokenising): run it on a blocking thread.
pub fn chunk(text: &str, settings: &ChunkSettings) -> Vec<TextChunk> {
    let settings = settings.normalised();
    let tokenizer: &'static CoreBPE = cl100k_base_singleton();
    let config = ChunkConfig::new(settings.max_tokens).with_sizer(tokenizer);
    // `with_overlap` only refuses an overlap of at least the chunk size, which `normalised`
    // rules out; were it ever to refuse, chunks without overlap are still correct chunks.
    let splitter = match config.with_overlap(settings.overlap_tokens) {
        Ok(config) => TextSplitter::new(config),
        Err(_) => TextSplitter::new(ChunkConfig::new(settings.max_tokens).with_sizer(tokenizer)),
    };
    (0u32..)
        .zip(splitter.chunk_indices(text))
        .map(|(position, (start, chunk))| TextChunk { position, text: chunk.to_owned(), start })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_is_stable() {
        assert_eq!(ChunkSettings::default().describe(), "text-splitter 0.30, cl100k_base, 200 tokens, 40 overlap");
        let odd = ChunkSettings { max_tokens: 0, overlap_tokens: 9 };
        assert_eq!(odd.describe(), "text-splitter 0.30, cl100k_base, 1 tokens, 0 overlap");
    }

    #[test]
    fn the_described_version_is_the_locked_one() {
        let lock = include_str!("../../Cargo.lock");
        let locked = lock
            .split("[[package]]")
            .find(|package| package.contains("name = \"text-splitter\"\n"))
            .and_then(|package| package.split("version = \"").nth(1))
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        assert!(locked.starts_with(&format!("{TEXT_SPLITTER}.")), "locked {locked}");
    }

    #[test]
    fn blank_text_has_no_chunks() {
        assert!(chunk(" \n\n ", &ChunkSettings::default()).is_empty());
    }

    #[test]
    fn short_text_is_one_chunk() {
        let chunks = chunk("  A short note.\n", &ChunkSettings::default());
        assert_eq!(chunks, [TextChunk { position: 0, text: "A short note.".into(), start: 2 }]);
    }
}
