//! SmolLM2-135M-Instruct on the CPU: loading (with Q4_1 requantised to Q4_0), the prompt, and
//! the blocking generation loop.

use std::fs::File;
use std::io::{BufReader, Cursor};
use std::ops::ControlFlow;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::generation::LogitsProcessor;
use candle_transformers::models::quantized_llama::{ModelWeights, MAX_SEQ_LEN};
use candle_transformers::utils::apply_repeat_penalty;
use colloquy_providers::{ChatMessage, FinishReason, Parameters};

use crate::error::LocalError;
use crate::template::ChatTemplate;
use crate::tokenizer::{integer, metadata, metadata_string, SmolTokenizer, Utf8Stream};

/// The model file, relative to the models directory (`scripts/models.sh` puts it there).
pub const MODEL_FILE: &str = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Sampling temperature when the request names none (the model card's recommendation).
pub const DEFAULT_TEMPERATURE: f32 = 0.2;

/// Nucleus sampling when the request names none (the model card's recommendation).
pub const DEFAULT_TOP_P: f32 = 0.9;

/// Most tokens of an answer when the request names no `max_tokens`.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// Logits of tokens among the answer's last [`REPEAT_LAST_N`] are divided by this (as
/// llama.cpp and candle's examples do): a 135M model at a low temperature otherwise loops on
/// one phrase ("the only sound the sound of the wind, the only sound ...").
pub const REPEAT_PENALTY: f32 = 1.1;

/// How many of the answer's last tokens [`REPEAT_PENALTY`] looks back on.
pub const REPEAT_LAST_N: usize = 64;

/// The finish reason of a generation stopped by its caller (`on_token` returned `Break`).
pub const CANCELLED: &str = "cancelled";

/// What one generation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Tokens of the rendered prompt.
    pub input_tokens: usize,
    /// Tokens of the answer (the token that ended it, `<|im_end|>`, is not counted).
    pub output_tokens: usize,
    /// Why it ended: `Stop` at `<|im_end|>` (or another control token), `Length` at
    /// `max_tokens` or the context window, `Other("cancelled")` when `on_token` said `Break`.
    pub finish: FinishReason,
}

/// SmolLM2-135M-Instruct, loaded once and shared: each generation runs on its own copy of
/// the model's state (the weights are shared, the KV cache is not), so `generate` takes
/// `&self` and may run on several threads at once.
pub struct SmolLm {
    weights: ModelWeights,
    tokenizer: SmolTokenizer,
    template: ChatTemplate,
    context_window: usize,
    device: Device,
}

impl std::fmt::Debug for SmolLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmolLm").field("context_window", &self.context_window).finish_non_exhaustive()
    }
}

impl SmolLm {
    /// Loads the model from `models_dir` (the file is [`MODEL_FILE`] inside it). Q4_1 has no
    /// SIMD path in candle, so its tensors are requantised to Q4_0 here (about a second; the
    /// answers then come about four times faster). Blocking: call it from a blocking thread.
    pub fn load(models_dir: &Path) -> Result<Self, LocalError> {
        let path = models_dir.join(MODEL_FILE);
        if !path.is_file() {
            return Err(LocalError::ModelMissing { path });
        }
        let io_error = |source| LocalError::Io { path: path.clone(), source };
        let mut reader = BufReader::new(File::open(&path).map_err(io_error)?);
        let content = Content::read(&mut reader)?;

        let tokenizer = SmolTokenizer::from_gguf(&content)?;
        let token = |key: &str| -> Result<String, LocalError> {
            let id = u32::try_from(integer(metadata(&content, key)?)?)
                .map_err(|e| LocalError::Metadata(format!("{key}: {e}")))?;
            tokenizer.tokenizer.id_to_token(id).ok_or_else(|| LocalError::Metadata(format!("{key}: no token {id}")))
        };
        let template = ChatTemplate::new(
            metadata_string(&content, "tokenizer.chat_template")?,
            token("tokenizer.ggml.bos_token_id")?,
            token("tokenizer.ggml.eos_token_id")?,
        )?;
        let context_length = usize::try_from(integer(metadata(&content, "llama.context_length")?)?)
            .map_err(|e| LocalError::Metadata(format!("llama.context_length: {e}")))?;
        // candle's rotary tables stop at MAX_SEQ_LEN positions.
        let context_window = context_length.min(MAX_SEQ_LEN);

        let device = Device::Cpu;
        let requantised = requantise(&content, &mut reader, &device)?;
        let mut cursor = Cursor::new(requantised);
        let content = Content::read(&mut cursor)?;
        let weights = ModelWeights::from_gguf(content, &mut cursor, &device)?;
        Ok(Self { weights, tokenizer, template, context_window, device })
    }

    /// Tokens the model can attend to: the prompt and the answer together.
    pub fn context_window(&self) -> usize {
        self.context_window
    }

    /// The prompt `messages` make, as the model sees it (chat template applied, the
    /// assistant's turn opened).
    pub fn prompt(&self, messages: &[ChatMessage]) -> Result<String, LocalError> {
        self.template.render(messages)
    }

    /// Tokens of the prompt `messages` make (what a generation reports as `input_tokens`).
    pub fn count_tokens(&self, messages: &[ChatMessage]) -> Result<usize, LocalError> {
        Ok(self.tokenizer.encode(&self.prompt(messages)?)?.len())
    }

    /// The ids of `text`; special tokens written in it (`<|im_end|>`) are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, LocalError> {
        self.tokenizer.encode(text)
    }

    /// The text of `ids`, special tokens written out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, LocalError> {
        self.tokenizer.decode(ids)
    }

    /// The id of a token of the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.tokenizer.token_to_id(token)
    }

    /// Answers `messages`, blocking until done. `on_token` is called once per generated token
    /// with the text it completed (empty while a multi-byte character is still incomplete) and
    /// once more at the end if bytes were left over; when it returns `Break` generation stops
    /// at once. `seed` makes sampling reproducible; temperature 0 picks the likeliest token.
    pub fn generate(
        &self,
        messages: &[ChatMessage],
        params: &Parameters,
        seed: u64,
        on_token: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation, LocalError> {
        let prompt = self.tokenizer.encode(&self.prompt(messages)?)?;
        let input_tokens = prompt.len();
        if input_tokens >= self.context_window {
            return Err(LocalError::PromptTooLong { prompt_tokens: input_tokens, context_window: self.context_window });
        }
        let max_tokens =
            (params.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS) as usize).min(self.context_window - input_tokens);
        let done = |output_tokens, finish| Ok(Generation { input_tokens, output_tokens, finish });
        if max_tokens == 0 {
            return done(0, FinishReason::Length);
        }
        let temperature = f64::from(params.temperature.unwrap_or(DEFAULT_TEMPERATURE));
        let top_p = f64::from(params.top_p.unwrap_or(DEFAULT_TOP_P));
        let mut sampler = LogitsProcessor::new(seed, Some(temperature), (top_p < 1.0).then_some(top_p));

        let mut model = self.weights.clone();
        let mut logits = model.forward(&Tensor::new(prompt.as_slice(), &self.device)?.unsqueeze(0)?, 0)?.squeeze(0)?;
        let mut text = Utf8Stream::default();
        let mut answer: Vec<u32> = Vec::with_capacity(max_tokens);
        let mut output_tokens = 0;
        let finish = loop {
            let recent = &answer[answer.len().saturating_sub(REPEAT_LAST_N)..];
            if !recent.is_empty() {
                logits = apply_repeat_penalty(&logits, REPEAT_PENALTY, recent)?;
            }
            let next = sampler.sample(&logits)?;
            if self.tokenizer.is_control(next) {
                break FinishReason::Stop;
            }
            answer.push(next);
            output_tokens += 1;
            if on_token(&text.push(self.tokenizer.bytes(next))).is_break() {
                return done(output_tokens, FinishReason::Other(CANCELLED.to_owned()));
            }
            if output_tokens >= max_tokens {
                break FinishReason::Length;
            }
            let position = input_tokens + output_tokens - 1;
            logits = model.forward(&Tensor::new(&[next], &self.device)?.unsqueeze(0)?, position)?.squeeze(0)?;
        };
        let rest = text.finish();
        if !rest.is_empty() && on_token(&rest).is_break() {
            return done(output_tokens, FinishReason::Other(CANCELLED.to_owned()));
        }
        done(output_tokens, finish)
    }
}

/// The GGUF behind `content`, written again in memory with its Q4_1 tensors as Q4_0.
fn requantise(content: &Content, reader: &mut BufReader<File>, device: &Device) -> Result<Vec<u8>, LocalError> {
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let tensor = content.tensor(reader, name, device)?;
        let tensor = match tensor.dtype() {
            GgmlDType::Q4_1 => QTensor::quantize(&tensor.dequantize(device)?, GgmlDType::Q4_0)?,
            _ => tensor,
        };
        tensors.push((name.as_str(), tensor));
    }
    // `gguf_file::write` aligns to 32 bytes, the default: an alignment in the metadata would lie.
    let mut metadata: Vec<(&str, &Value)> =
        content.metadata.iter().filter(|(key, _)| *key != "general.alignment").map(|(k, v)| (k.as_str(), v)).collect();
    metadata.sort_by_key(|(key, _)| *key);
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(name, tensor)| (*name, tensor)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &tensors)?;
    Ok(out.into_inner())
}
