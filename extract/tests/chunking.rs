//! Chunking extracted text: bounded by tokens, overlapping, numbered without gaps, and the same
//! every time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use colloquy_extract::{chunk, ChunkSettings, TextChunk};
use tiktoken_rs::cl100k_base_singleton;

/// About 2,500 tokens of prose in paragraphs of about 250 tokens (longer than a chunk, so
/// chunks are cut both inside paragraphs and at paragraph breaks).
fn document() -> String {
    (0..10).map(paragraph).collect::<Vec<_>>().join("\n\n")
}

/// A paragraph of fifteen varied sentences.
fn paragraph(p: usize) -> String {
    let subjects = ["The ingest worker", "A knowledge document", "Every chunk", "The search index", "An uploaded file"];
    let verbs = ["records", "embeds", "splits", "quotes", "revises"];
    let objects = [
        "the extracted text of a long report",
        "a passage that the assistant cites later",
        "the version that was indexed last night",
        "citations with their page numbers",
        "tokens counted with the cl100k tokenizer",
    ];
    let sentences: Vec<String> = (0..15)
        .map(|s| {
            let i = p * 15 + s;
            format!(
                "{} {} {} (note {i}).",
                subjects[i % subjects.len()],
                verbs[(i / 5) % verbs.len()],
                objects[(i / 25) % objects.len()]
            )
        })
        .collect();
    sentences.join(" ")
}

fn tokens(text: &str) -> usize {
    cl100k_base_singleton().encode_ordinary(text).len()
}

#[test]
fn chunks_are_within_max_tokens_and_point_into_the_text() {
    let text = document();
    let settings = ChunkSettings::default();
    let chunks = chunk(&text, &settings);
    assert!(chunks.len() > 10, "{} chunks", chunks.len());
    for chunk in &chunks {
        let count = tokens(&chunk.text);
        assert!(count <= settings.max_tokens, "chunk {} has {count} tokens", chunk.position);
        assert!(!chunk.text.trim().is_empty());
        assert_eq!(&text[chunk.start..chunk.start + chunk.text.len()], chunk.text);
    }
}

#[test]
fn positions_run_from_zero_without_gaps() {
    let chunks = chunk(&document(), &ChunkSettings::default());
    let positions: Vec<u32> = chunks.iter().map(|chunk| chunk.position).collect();
    let expected: Vec<u32> = (0..u32::try_from(chunks.len()).unwrap()).collect();
    assert_eq!(positions, expected);
}

/// Asserts that `after` begins inside `before` with at least one whole token of shared text.
fn assert_overlap(text: &str, before: &TextChunk, after: &TextChunk) {
    let before_end = before.start + before.text.len();
    assert!(after.start > before.start, "chunks advance: {} then {}", before.start, after.start);
    assert!(
        after.start < before_end,
        "chunk {} starts at {} but chunk {} ends at {before_end}",
        after.position,
        after.start,
        before.position
    );
    let shared = &text[after.start..before_end];
    assert!(
        !shared.trim().is_empty() && tokens(shared) <= ChunkSettings::default().overlap_tokens,
        "shared {shared:?}"
    );
}

#[test]
fn neighbours_in_a_paragraph_overlap() {
    let text = (0..5).map(paragraph).collect::<Vec<_>>().join(" ");
    let chunks = chunk(&text, &ChunkSettings::default());
    assert!(chunks.len() > 5, "{} chunks", chunks.len());
    for pair in chunks.windows(2) {
        assert_overlap(&text, &pair[0], &pair[1]);
    }
}

#[test]
fn neighbours_overlap_unless_they_meet_at_a_paragraph_break() {
    // text-splitter takes the overlap at the semantic level it cut at: a chunk that ends with
    // a paragraph is followed by one that starts with the next, sharing nothing.
    let text = document();
    let chunks = chunk(&text, &ChunkSettings::default());
    let mut overlapping = 0;
    for pair in chunks.windows(2) {
        let before_end = pair[0].start + pair[0].text.len();
        if pair[1].start >= before_end {
            assert_eq!(&text[before_end..pair[1].start], "\n\n", "only a paragraph break between chunks");
        } else {
            assert_overlap(&text, &pair[0], &pair[1]);
            overlapping += 1;
        }
    }
    assert!(overlapping >= chunks.len() / 3, "{overlapping} of {} neighbours overlap", chunks.len() - 1);
    // Every byte of non-blank text is in some chunk.
    let mut covered_to = 0;
    for chunk in &chunks {
        let gap = text.get(covered_to..chunk.start).unwrap_or("");
        assert!(gap.trim().is_empty(), "text left out before chunk {}", chunk.position);
        covered_to = covered_to.max(chunk.start + chunk.text.len());
    }
    assert!(text[covered_to..].trim().is_empty());
}

#[test]
fn without_overlap_chunks_do_not_share_text() {
    let text = document();
    let settings = ChunkSettings { max_tokens: 120, overlap_tokens: 0 };
    let chunks = chunk(&text, &settings);
    for pair in chunks.windows(2) {
        assert!(pair[1].start >= pair[0].start + pair[0].text.len());
    }
}

#[test]
fn the_same_text_and_settings_give_the_same_chunks() {
    let text = document();
    let settings = ChunkSettings { max_tokens: 150, overlap_tokens: 30 };
    let first: Vec<TextChunk> = chunk(&text, &settings);
    let second = chunk(&text.clone(), &settings);
    assert_eq!(first, second);
    assert_ne!(first, chunk(&text, &ChunkSettings::default()), "the settings matter");
}

#[test]
fn an_overlap_as_large_as_the_chunk_is_halved() {
    let text = paragraph(0);
    let settings = ChunkSettings { max_tokens: 100, overlap_tokens: 100 };
    let normalised = ChunkSettings { max_tokens: 100, overlap_tokens: 50 };
    assert_eq!(settings.normalised(), normalised);
    assert_eq!(settings.describe(), "text-splitter 0.30, cl100k_base, 100 tokens, 50 overlap");
    assert_eq!(chunk(&text, &settings), chunk(&text, &normalised));
}
