//! One text generation with llama.cpp: the request's checks, the prompt in
//! batches, sampling token by token, stop sequences, and streaming.
//!
//! Streamed `token` events never show text that a stop sequence later cuts
//! off: the end of the text that could still become a stop sequence is held
//! back until it cannot. So the events always concatenate to the final text.

use std::time::{Duration, Instant};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::vocab::LlamaVocab;
use serde_json::{json, Map, Value};

use super::{EventSink, RunnerError};
use crate::protocol::json_kind;
use crate::protocol::round::{decimals, millis};

/// Streamed text goes out at most this often.
const STREAM_EVERY: Duration = Duration::from_millis(50);
const MAX_STOPS: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    /// (role, content) pairs, for the model's chat template.
    Messages(Vec<(String, String)>),
}

/// A checked generation request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub max_tokens: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: i32,
    pub seed: u32,
    pub stop: Vec<String>,
    pub stream: bool,
    /// Keep going past end-of-generation tokens (benchmarks, fixed lengths).
    pub ignore_eos: bool,
}

impl GenerateRequest {
    pub fn parse(
        request: &Map<String, Value>,
        n_ctx: u32,
        default_seed: Option<u32>,
    ) -> Result<GenerateRequest, RunnerError> {
        let prompt = prompt_of(request)?;
        let max_tokens = max_tokens_of(request, n_ctx)?;
        let sampling = Sampling::parse(request, default_seed)?;
        let stream = flag_of(request, "stream")?;
        let ignore_eos = flag_of(request, "ignore_eos")?;
        Ok(GenerateRequest {
            prompt,
            max_tokens,
            temperature: sampling.temperature,
            top_p: sampling.top_p,
            top_k: sampling.top_k,
            seed: sampling.seed,
            stop: stops_of(request.get("stop"))?,
            stream,
            ignore_eos,
        })
    }
}

fn bad(message: String) -> RunnerError {
    RunnerError::BadRequest(message)
}

/// `prompt` or `messages`, exactly one of them.
fn prompt_of(request: &Map<String, Value>) -> Result<Prompt, RunnerError> {
    match (request.get("prompt"), request.get("messages")) {
        (Some(_), Some(_)) => Err(bad(
            "give either \"prompt\" or \"messages\", not both".into()
        )),
        (None, None) => Err(bad(
            "missing \"prompt\" (text) or \"messages\" ([{\"role\", \"content\"}])".into(),
        )),
        (Some(Value::String(text)), None) if text.is_empty() => {
            Err(bad("\"prompt\" is empty".into()))
        }
        (Some(Value::String(text)), None) => Ok(Prompt::Text(text.clone())),
        (Some(other), None) => Err(bad(format!(
            "\"prompt\" must be a string, got {}",
            json_kind(other)
        ))),
        (None, Some(messages)) => Ok(Prompt::Messages(messages_of(messages)?)),
    }
}

/// `max_tokens`: at least 1, at most the context; 128 (or the context) when absent.
fn max_tokens_of(request: &Map<String, Value>, n_ctx: u32) -> Result<usize, RunnerError> {
    let Some(v) = request.get("max_tokens").filter(|v| !v.is_null()) else {
        return Ok(128.min(n_ctx as usize));
    };
    match v.as_u64() {
        Some(0) => Err(bad("\"max_tokens\" must be at least 1".into())),
        Some(n) if n > u64::from(n_ctx) => Err(bad(format!(
            "\"max_tokens\" {n} is more than the context of {n_ctx} tokens (n_ctx)"
        ))),
        Some(n) => Ok(n as usize),
        None => Err(bad(format!(
            "\"max_tokens\" must be a positive integer, got {}",
            crate::protocol::quote_json(v)
        ))),
    }
}

/// The sampler's settings of a request.
struct Sampling {
    temperature: f32,
    top_p: f32,
    top_k: i32,
    seed: u32,
}

impl Sampling {
    fn parse(
        request: &Map<String, Value>,
        default_seed: Option<u32>,
    ) -> Result<Sampling, RunnerError> {
        let number = |key: &str, default: f64| -> Result<f64, RunnerError> {
            match request.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v.as_f64().ok_or_else(|| {
                    bad(format!(
                        "\"{key}\" must be a number, got {}",
                        crate::protocol::quote_json(v)
                    ))
                }),
            }
        };
        let temperature = number("temperature", 0.8)?;
        let top_p = number("top_p", 0.95)?;
        let top_k = number("top_k", 40.0)?;
        if temperature < 0.0 {
            return Err(bad(format!(
                "\"temperature\" must be 0 (greedy) or more, got {temperature}"
            )));
        }
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(bad(format!("\"top_p\" must be in (0, 1], got {top_p}")));
        }
        if top_k < 0.0 || top_k.fract() != 0.0 {
            return Err(bad(format!(
                "\"top_k\" must be a whole number, 0 or more, got {top_k}"
            )));
        }
        Ok(Sampling {
            temperature: temperature as f32,
            top_p: top_p as f32,
            top_k: top_k as i32,
            seed: seed_of(request, default_seed)?,
        })
    }
}

/// `seed`, else the deployment's, else a random one.
fn seed_of(request: &Map<String, Value>, default_seed: Option<u32>) -> Result<u32, RunnerError> {
    match request.get("seed") {
        None | Some(Value::Null) => Ok(default_seed.unwrap_or_else(rand_seed)),
        Some(v) => v
            .as_u64()
            .and_then(|s| u32::try_from(s).ok())
            .ok_or_else(|| {
                bad(format!(
                    "\"seed\" must be an integer from 0 to {}, got {}",
                    u32::MAX,
                    crate::protocol::quote_json(v)
                ))
            }),
    }
}

/// A true/false switch, false when absent.
fn flag_of(request: &Map<String, Value>, key: &str) -> Result<bool, RunnerError> {
    match request.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(bad(format!(
            "\"{key}\" must be true or false, got {}",
            crate::protocol::quote_json(v)
        ))),
    }
}

fn messages_of(value: &Value) -> Result<Vec<(String, String)>, RunnerError> {
    let Value::Array(items) = value else {
        return Err(bad(format!(
            "\"messages\" must be an array of {{\"role\", \"content\"}}, got {}",
            json_kind(value)
        )));
    };
    if items.is_empty() {
        return Err(bad("\"messages\" is empty".into()));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match (item.get("role"), item.get("content")) {
            (Some(Value::String(role)), Some(Value::String(content))) if !role.is_empty() => {
                Ok((role.clone(), content.clone()))
            }
            _ => Err(bad(format!(
                "message {i} must be {{\"role\": \"<text>\", \"content\": \"<text>\"}}, got {}",
                crate::protocol::quote_json(item)
            ))),
        })
        .collect()
}

fn stops_of(value: Option<&Value>) -> Result<Vec<String>, RunnerError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) if !s.is_empty() => Ok(vec![s.clone()]),
        Some(Value::Array(items)) if items.len() <= MAX_STOPS => items
            .iter()
            .map(|s| match s {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                other => Err(bad(format!(
                    "\"stop\" entries must be non-empty strings, got {}",
                    crate::protocol::quote_json(other)
                ))),
            })
            .collect(),
        Some(other) => Err(bad(format!(
            "\"stop\" must be a string or an array of at most {MAX_STOPS} strings, got {}",
            crate::protocol::quote_json(other)
        ))),
    }
}

fn rand_seed() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

/// The length of `bytes` without an incomplete UTF-8 character at its end.
fn complete_len(bytes: &[u8]) -> usize {
    let n = bytes.len();
    for back in 1..=n.min(3) {
        let b = bytes[n - back];
        if b & 0xC0 != 0x80 {
            let needs = match b {
                0xF0.. => 4,
                0xE0.. => 3,
                0xC0.. => 2,
                _ => 1,
            };
            return if needs > back { n - back } else { n };
        }
    }
    n
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Finish {
    Stop,
    Length,
}

/// Runs `request` on `prompt` in `context`.
pub fn run(
    model: &LlamaModel,
    context: &mut LlamaContext<'_>,
    prompt: &str,
    request: &GenerateRequest,
    n_batch: usize,
    events: EventSink<'_>,
) -> Result<Value, RunnerError> {
    let started = Instant::now();
    let vocab = model.vocab();
    let tokens = vocab.tokenize(prompt.as_bytes(), true, true);
    let n_ctx = context.n_ctx() as usize;
    if tokens.len() + request.max_tokens > n_ctx {
        return Err(RunnerError::BadRequest(format!(
            "the prompt is {} tokens and max_tokens {}: together more than the context of {n_ctx} tokens (n_ctx); shorten the prompt or lower max_tokens",
            tokens.len(),
            request.max_tokens
        )));
    }
    let mut batch = LlamaBatch::new(n_batch.max(1), 1);
    decode_prompt(context, &mut batch, &tokens, n_batch)?;
    let prompt_done = Instant::now();
    let mut text = TextStream::new(&request.stop, request.stream);
    let (finish, completion) = generate(
        &vocab,
        context,
        &mut batch,
        tokens.len(),
        request,
        &mut text,
        events,
    )?;
    let text = text.finish(events);
    let done = Instant::now();
    let generation = done.duration_since(prompt_done).as_secs_f64();
    let prompt_seconds = prompt_done.duration_since(started).as_secs_f64();
    Ok(json!({
        "text": text,
        "prompt_tokens": tokens.len(),
        "completion_tokens": completion,
        "finish_reason": if finish == Finish::Stop { "stop" } else { "length" },
        "tokens_per_second": rate(completion, generation),
        "prompt_tokens_per_second": rate(tokens.len(), prompt_seconds),
        "prompt_ms": millis(prompt_seconds * 1000.0),
        "generation_ms": millis(generation * 1000.0),
        "run_ms": millis(done.duration_since(started).as_secs_f64() * 1000.0),
    }))
}

fn decode_error(e: impl std::fmt::Display) -> RunnerError {
    RunnerError::Inference(format!("llama.cpp decode failed: {e}"))
}

/// Feeds the prompt to the model in batches of `n_batch` tokens; the logits
/// of its last token are left in `batch`'s last slot.
fn decode_prompt(
    context: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    tokens: &[LlamaToken],
    n_batch: usize,
) -> Result<(), RunnerError> {
    for (chunk_index, chunk) in tokens.chunks(n_batch.max(1)).enumerate() {
        batch.clear();
        for (i, token) in chunk.iter().enumerate() {
            let pos = chunk_index * n_batch + i;
            batch
                .add(*token, pos as i32, &[0], pos + 1 == tokens.len())
                .map_err(decode_error)?;
        }
        context.decode(batch).map_err(decode_error)?;
    }
    Ok(())
}

/// Samples token after token into `text` until an end-of-generation token,
/// a stop sequence or `max_tokens`; returns why it ended and how many
/// tokens it made.
fn generate(
    vocab: &LlamaVocab<'_>,
    context: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    prompt_tokens: usize,
    request: &GenerateRequest,
    text: &mut TextStream<'_>,
    events: EventSink<'_>,
) -> Result<(Finish, usize), RunnerError> {
    // Greedy decoding reads the logits directly: llama.cpp's greedy sampler
    // gives the same token but first copies every candidate (32 k of them
    // for a llama vocabulary) on each step.
    let mut sampler = (request.temperature != 0.0).then(|| {
        LlamaSampler::chain_simple([
            LlamaSampler::top_k(request.top_k),
            LlamaSampler::top_p(request.top_p, 1),
            LlamaSampler::temp(request.temperature),
            LlamaSampler::dist(request.seed),
        ])
    });
    let mut completion = 0;
    let mut position = prompt_tokens;
    let mut logits_at = batch.n_tokens() - 1;
    loop {
        let token = match sampler.as_mut() {
            Some(sampler) => sampler.sample(context, logits_at),
            None => argmax(context.get_logits_ith(logits_at)),
        };
        if vocab.is_eog(token) && !request.ignore_eos {
            return Ok((Finish::Stop, completion));
        }
        completion += 1;
        if text.push(&vocab.token_to_piece(token, false, None), events) {
            return Ok((Finish::Stop, completion));
        }
        if completion == request.max_tokens {
            return Ok((Finish::Length, completion));
        }
        batch.clear();
        batch
            .add(token, position as i32, &[0], true)
            .map_err(decode_error)?;
        position += 1;
        context.decode(batch).map_err(decode_error)?;
        logits_at = 0;
    }
}

/// The most likely token; the first one on ties, as llama.cpp's greedy
/// sampler picks.
fn argmax(logits: &[f32]) -> LlamaToken {
    let mut best = 0;
    for (i, logit) in logits.iter().enumerate() {
        if *logit > logits[best] {
            best = i;
        }
    }
    LlamaToken::new(best as i32)
}

fn rate(count: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        decimals(count as f64 / seconds, 1)
    } else {
        0.0
    }
}

/// The generated text: bytes as they come (a token may end inside a UTF-8
/// character), stop sequences, and what has been streamed.
struct TextStream<'a> {
    bytes: Vec<u8>,
    stops: &'a [String],
    stream: bool,
    /// Bytes of the text already sent as `token` events.
    sent: usize,
    last_sent: Instant,
    /// Set when a stop sequence cut the text.
    cut: Option<usize>,
}

impl<'a> TextStream<'a> {
    fn new(stops: &'a [String], stream: bool) -> TextStream<'a> {
        TextStream {
            bytes: Vec::new(),
            stops,
            stream,
            sent: 0,
            last_sent: Instant::now(),
            cut: None,
        }
    }

    /// The text so far, without a character a later token may complete;
    /// bytes that are not UTF-8 become U+FFFD.
    fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes[..complete_len(&self.bytes)])
    }

    /// Adds a token's bytes; true when a stop sequence has appeared.
    fn push(&mut self, piece: &[u8], events: EventSink<'_>) -> bool {
        self.bytes.extend_from_slice(piece);
        let (cut, safe) = {
            let text = self.text();
            let cut = self
                .stops
                .iter()
                .filter_map(|s| text.find(s.as_str()))
                .min();
            (cut, text.len() - self.held_back(&text))
        };
        if let Some(at) = cut {
            self.cut = Some(at);
            return true;
        }
        if self.stream && self.last_sent.elapsed() >= STREAM_EVERY {
            self.send(safe, events);
        }
        false
    }

    /// Bytes at the end of `text` that could still grow into a stop sequence.
    fn held_back(&self, text: &str) -> usize {
        self.stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .rev()
                    .filter(|k| stop.is_char_boundary(*k))
                    .map(move |k| &stop[..k])
            })
            .filter(|prefix| text.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0)
    }

    fn send(&mut self, upto: usize, events: EventSink<'_>) {
        if upto > self.sent {
            let piece = self.text()[self.sent..upto].to_owned();
            events(json!({"text": piece}));
            self.sent = upto;
            self.last_sent = Instant::now();
        }
    }

    /// The final text; the rest of it goes out as a last event.
    fn finish(mut self, events: EventSink<'_>) -> String {
        let mut text = String::from_utf8_lossy(&self.bytes).into_owned();
        if let Some(cut) = self.cut {
            text.truncate(cut);
        }
        if self.stream && text.len() > self.sent {
            events(json!({"text": &text[self.sent..]}));
        }
        self.sent = text.len();
        text
    }
}

#[cfg(test)]
#[path = "generate_tests.rs"]
mod tests;
