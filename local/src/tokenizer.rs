//! SmolLM2's tokenizer, built from the GGUF metadata (candle's `TokenizerFromGguf` adds a
//! prefix space and gets ids wrong for this model), and the incremental decoder that turns
//! generated tokens into text as soon as it is valid UTF-8.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::LocalError;

/// `tokenizer.ggml.token_type` of control tokens (`<|im_start|>`, `<|im_end|>`, ...).
const TOKEN_TYPE_CONTROL: i64 = 3;

/// The tokenizer and, per token, the bytes it stands for.
pub(crate) struct SmolTokenizer {
    pub(crate) tokenizer: Tokenizer,
    /// The raw bytes of each token; `None` for control tokens, which are not text.
    token_bytes: Vec<Option<Vec<u8>>>,
}

impl SmolTokenizer {
    /// Builds the tokenizer the way SmolLM2's `tokenizer.json` describes it: a byte-level BPE
    /// whose pre-tokenizer splits digits one by one, then applies the byte-level regex without
    /// a prefix space; control tokens are special.
    pub(crate) fn from_gguf(content: &Content) -> Result<Self, LocalError> {
        let model = metadata_string(content, "tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(LocalError::Metadata(format!("tokenizer model {model:?}, expected a byte-level BPE (gpt2)")));
        }
        let pre = metadata_string(content, "tokenizer.ggml.pre")?;
        if pre != "smollm" {
            return Err(LocalError::Metadata(format!("pre-tokenizer {pre:?}, expected \"smollm\"")));
        }
        let tokens = string_array(content, "tokenizer.ggml.tokens")?;
        let merges = string_array(content, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|merge| {
                merge
                    .split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| LocalError::Metadata(format!("merge {merge:?} is not two tokens")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let types = metadata(content, "tokenizer.ggml.token_type")?
            .to_vec()
            .map_err(|e| LocalError::Metadata(format!("tokenizer.ggml.token_type: {e}")))?
            .iter()
            .map(integer)
            .collect::<Result<Vec<_>, _>>()?;
        if types.len() != tokens.len() {
            return Err(LocalError::Metadata(format!("{} token types for {} tokens", types.len(), tokens.len())));
        }

        let vocab: Vocab = tokens.iter().enumerate().map(|(id, token)| (token.clone(), id as u32)).collect();
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(tokenizer_error)?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, kind)| **kind == TOKEN_TYPE_CONTROL)
            .map(|(token, _)| AddedToken::from(token.clone(), true))
            .collect();
        tokenizer.add_special_tokens(specials).map_err(tokenizer_error)?;

        let chars = byte_level_chars();
        let token_bytes = tokens
            .iter()
            .zip(&types)
            .map(|(token, kind)| {
                (*kind != TOKEN_TYPE_CONTROL).then(|| {
                    token
                        .chars()
                        .flat_map(|c| match chars.get(&c) {
                            Some(byte) => vec![*byte],
                            None => c.to_string().into_bytes(),
                        })
                        .collect()
                })
            })
            .collect();
        Ok(Self { tokenizer, token_bytes })
    }

    /// The ids of `text`, special tokens written in it (`<|im_start|>`) included.
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        Ok(self.tokenizer.encode(text, false).map_err(tokenizer_error)?.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens written out.
    pub(crate) fn decode(&self, ids: &[u32]) -> Result<String, LocalError> {
        self.tokenizer.decode(ids, false).map_err(tokenizer_error)
    }

    /// Whether `id` is a control token (it ends an answer: it is not text).
    pub(crate) fn is_control(&self, id: u32) -> bool {
        matches!(self.token_bytes.get(id as usize), Some(None))
    }

    /// The bytes `id` stands for (empty for control and unknown ids).
    pub(crate) fn bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).and_then(Option::as_deref).unwrap_or_default()
    }
}

/// Collects the bytes of generated tokens and gives back text once it is valid UTF-8: a
/// token may end in the middle of a multi-byte character.
#[derive(Debug, Default)]
pub(crate) struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Adds `bytes`; returns the text they complete (possibly empty).
    pub(crate) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut text = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(valid) => {
                    text.push_str(valid);
                    self.pending.clear();
                    return text;
                }
                Err(error) => {
                    let valid_up_to = error.valid_up_to();
                    text.push_str(&String::from_utf8_lossy(&self.pending[..valid_up_to]));
                    match error.error_len() {
                        // Incomplete: the rest of the character comes with a later token.
                        None => {
                            self.pending.drain(..valid_up_to);
                            return text;
                        }
                        // Bytes no later token can complete: replace them as a lossy decode would.
                        Some(invalid) => {
                            text.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid_up_to + invalid);
                        }
                    }
                }
            }
        }
    }

    /// The text of bytes still waiting for the rest of their character, replaced as invalid.
    pub(crate) fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        text
    }
}

/// GPT-2's byte-level alphabet, inverted: the character standing for each byte.
fn byte_level_chars() -> HashMap<char, u8> {
    let mut bytes: Vec<u8> = (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut chars: Vec<u32> = bytes.iter().map(|b| u32::from(*b)).collect();
    let mut next = 0;
    for byte in 0..=255u8 {
        if !bytes.contains(&byte) {
            bytes.push(byte);
            chars.push(256 + next);
            next += 1;
        }
    }
    bytes.into_iter().zip(chars).filter_map(|(byte, c)| char::from_u32(c).map(|c| (c, byte))).collect()
}

pub(crate) fn metadata<'a>(content: &'a Content, key: &str) -> Result<&'a Value, LocalError> {
    content.metadata.get(key).ok_or_else(|| LocalError::Metadata(format!("{key} is missing")))
}

pub(crate) fn metadata_string(content: &Content, key: &str) -> Result<String, LocalError> {
    metadata(content, key)?.to_string().cloned().map_err(|e| LocalError::Metadata(format!("{key}: {e}")))
}

fn string_array(content: &Content, key: &str) -> Result<Vec<String>, LocalError> {
    metadata(content, key)?
        .to_vec()
        .map_err(|e| LocalError::Metadata(format!("{key}: {e}")))?
        .iter()
        .map(|value| value.to_string().cloned().map_err(|e| LocalError::Metadata(format!("{key}: {e}"))))
        .collect()
}

/// Any integer GGUF value, widened.
pub(crate) fn integer(value: &Value) -> Result<i64, LocalError> {
    Ok(match value {
        Value::U8(v) => i64::from(*v),
        Value::I8(v) => i64::from(*v),
        Value::U16(v) => i64::from(*v),
        Value::I16(v) => i64::from(*v),
        Value::U32(v) => i64::from(*v),
        Value::I32(v) => i64::from(*v),
        Value::U64(v) => i64::try_from(*v).map_err(|e| LocalError::Metadata(e.to_string()))?,
        Value::I64(v) => *v,
        other => return Err(LocalError::Metadata(format!("expected an integer, got {other:?}"))),
    })
}

fn tokenizer_error(error: tokenizers::Error) -> LocalError {
    LocalError::Tokenizer(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_across_tokens_comes_out_whole() {
        let mut stream = Utf8Stream::default();
        let euro = "€".as_bytes();
        assert_eq!(stream.push(b"a"), "a");
        assert_eq!(stream.push(&euro[..1]), "");
        assert_eq!(stream.push(&euro[1..2]), "");
        assert_eq!(stream.push(&[euro[2], b'b']), "€b");
        assert_eq!(stream.finish(), "");
    }

    #[test]
    fn invalid_bytes_are_replaced_and_decoding_goes_on() {
        let mut stream = Utf8Stream::default();
        assert_eq!(stream.push(&[b'x', 0xFF, b'y']), "x\u{FFFD}y");
        assert_eq!(stream.push(&"é".as_bytes()[..1]), "");
        assert_eq!(stream.finish(), "\u{FFFD}");
    }

    #[test]
    fn the_byte_level_alphabet_covers_every_byte_once() {
        let chars = byte_level_chars();
        assert_eq!(chars.len(), 256);
        assert_eq!(chars.get(&'Ġ'), Some(&b' '));
        assert_eq!(chars.get(&'Ċ'), Some(&b'\n'));
        assert_eq!(chars.get(&'a'), Some(&b'a'));
    }
}
