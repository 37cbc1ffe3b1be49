//! The generation loop: prefill, then sample and decode one token at a time until a stop
//! condition, reporting each token as it is produced.
//!
//! The engine owns a backend and a tokenizer and knows nothing of HTTP or recording formats.
//! **Architecture Invariant:** every request starts from an empty KV cache and draws its
//! randomness from `(seed, token index)` only, so a request's result never depends on the
//! requests before it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, BackendError, LogitRows, Tap};
use crate::sampler::{self, PickArgs, Picked, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// One generation request, with everything resolved (seed included).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
    pub seed: u64,
    pub max_tokens: usize,
    /// Token-id sequences that end generation when the generated tokens end with one.
    pub stop: Vec<Vec<u32>>,
    /// How many most-likely alternatives to report with each token (0 = none).
    pub top_logprobs: usize,
    /// Prefill in chunks of this many positions (0 = the whole prompt in one pass). Results
    /// are bitwise identical for any value; it bounds memory and latency.
    pub prefill_chunk: usize,
}

/// A generated token, as reported while generation runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenEvent {
    /// 0-based index among generated tokens.
    pub index: usize,
    pub id: u32,
    /// Text completed by this token (may be empty while a UTF-8 sequence is incomplete).
    pub text: String,
    /// log-probability of the token under the model (temperature 1, before penalties).
    pub logprob: f32,
    pub top_logprobs: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum StopReason {
    MaxTokens,
    Eos,
    StopSequence,
    Cancelled,
    ContextFull,
}

impl StopReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::MaxTokens => "MAX_TOKENS",
            StopReason::Eos => "EOS",
            StopReason::StopSequence => "STOP_SEQUENCE",
            StopReason::Cancelled => "CANCELLED",
            StopReason::ContextFull => "CONTEXT_FULL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateOutcome {
    /// Generated ids, the end-of-generation token excluded.
    pub tokens: Vec<u32>,
    pub text: String,
    pub stop_reason: StopReason,
    /// Index into `GenerateRequest::stop` of the sequence that matched.
    pub stop_sequence: Option<usize>,
    /// The end-of-generation token that stopped the run, if any.
    pub eog_token: Option<u32>,
    pub prefill_ms: f64,
    pub decode_ms: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("empty prompt: at least one token is needed")]
    EmptyPrompt,
    #[error("prompt of {n_prompt} tokens leaves no room in a context of {n_ctx}")]
    PromptTooLong { n_prompt: usize, n_ctx: usize },
    #[error(transparent)]
    Params(#[from] sampler::ParamError),
}

pub struct Engine {
    backend: Box<dyn Backend>,
    tokenizer: Arc<Tokenizer>,
}

impl Engine {
    pub fn new(backend: Box<dyn Backend>, tokenizer: Arc<Tokenizer>) -> Engine {
        Engine { backend, tokenizer }
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    pub fn backend_mut(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// Runs the prompt (from an empty cache) and returns the logits of its last position.
    pub fn prefill(&mut self, prompt: &[u32], chunk: usize, tap: &mut dyn Tap) -> Result<Vec<f32>, EngineError> {
        let never = AtomicBool::new(false);
        Ok(self.prefill_cancellable(prompt, chunk, tap, &never)?.unwrap_or_default())
    }

    /// [`Engine::prefill`], polling `cancel` before every chunk: `None` when it was set. The
    /// chunk size bounds how long a cancel waits (one chunk's forward call); it never changes
    /// a result.
    pub fn prefill_cancellable(&mut self, prompt: &[u32], chunk: usize, tap: &mut dyn Tap, cancel: &AtomicBool) -> Result<Option<Vec<f32>>, EngineError> {
        self.check_prompt(prompt)?;
        self.backend.truncate(0);
        let chunk = if chunk == 0 { prompt.len() } else { chunk };
        let mut logits = Vec::new();
        let mut pos = 0;
        while pos < prompt.len() {
            if cancel.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let end = (pos + chunk).min(prompt.len());
            let rows = if end == prompt.len() { LogitRows::Last } else { LogitRows::None };
            logits = self.backend.forward(&prompt[pos..end], pos, rows, tap)?;
            tap.forward_done();
            pos = end;
        }
        Ok(Some(logits))
    }

    /// Generates until a stop condition. `on_token` is called for every token as soon as it is
    /// sampled; `cancel` is polled between prefill chunks and between tokens.
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        tap: &mut dyn Tap,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(&TokenEvent),
    ) -> Result<GenerateOutcome, EngineError> {
        req.params.validate()?;
        let t0 = Instant::now();
        let mut history = req.prompt_ids.clone();
        let prefilled = if req.max_tokens == 0 {
            self.prefill_cancellable(&req.prompt_ids, req.prefill_chunk, tap, cancel)?.map(|_| None)
        } else {
            self.prefill_pick(&req.prompt_ids, req.prefill_chunk, tap, cancel, &pick_args(req, &history, 0))?.map(Some)
        };
        let prefill_ms = ms(t0.elapsed());
        let Some(mut picked) = prefilled else {
            let outcome = GenerateOutcome {
                tokens: Vec::new(),
                text: String::new(),
                stop_reason: StopReason::Cancelled,
                stop_sequence: None,
                eog_token: None,
                prefill_ms,
                decode_ms: 0.0,
            };
            return Ok(outcome);
        };
        let t1 = Instant::now();

        let mut tokens = Vec::new();
        let mut decoder = StreamDecoder::new(&self.tokenizer);
        let mut text = String::new();
        let mut stop_reason = StopReason::MaxTokens;
        let mut stop_sequence = None;
        let mut eog_token = None;
        // Token `index`'s step (index >= 1) is started before the host work for token index - 1
        // (that step's trace frame, streaming its token), so the two overlap where the backend
        // runs steps on a device (`Backend::pick_start`). The order within an index is that of
        // the unpipelined loop: a step's frame is handed on before its token is reported.
        let mut started: Option<(u32, usize)> = None;
        for index in 0..req.max_tokens {
            let p = match started.take() {
                Some((id, pos)) => self.backend.pick_wait(&[id], pos, tap, &pick_args(req, &history, index))?,
                None => picked.take().expect("the prefill chose the token of index 0"),
            };
            // The prefill already handed on the frame of index 0's step.
            let stepped = index > 0;
            if cancel.load(Ordering::Relaxed) {
                frame_done(self.backend.as_mut(), stepped, tap);
                stop_reason = StopReason::Cancelled;
                break;
            }
            let id = p.id;
            if self.tokenizer.is_eog(id) {
                frame_done(self.backend.as_mut(), stepped, tap);
                stop_reason = StopReason::Eos;
                eog_token = Some(id);
                break;
            }
            let piece = decoder.push(id);
            text.push_str(&piece);
            tokens.push(id);
            history.push(id);
            let stop_at = req.stop.iter().position(|s| !s.is_empty() && tokens.ends_with(s));
            let pos = req.prompt_ids.len() + tokens.len() - 1;
            let context_full = pos + 1 >= self.backend.n_ctx();
            let next = (stop_at.is_none() && index + 1 < req.max_tokens && !context_full).then_some((id, pos));
            let r = match next {
                Some(_) => self.backend.pick_start(&[id], pos, tap, &pick_args(req, &history, index + 1)),
                None => Ok(()),
            };
            // The frame is handed on whether or not the next step could be started.
            frame_done(self.backend.as_mut(), stepped, tap);
            r?;
            started = next;
            on_token(&TokenEvent { index, id, text: piece, logprob: p.logprob(), top_logprobs: p.top_logprobs() });
            if let Some(i) = stop_at {
                stop_reason = StopReason::StopSequence;
                stop_sequence = Some(i);
                break;
            }
            if index + 1 == req.max_tokens {
                break;
            }
            if context_full {
                stop_reason = StopReason::ContextFull;
                break;
            }
        }
        text.push_str(&decoder.finish());
        Ok(GenerateOutcome { tokens, text, stop_reason, stop_sequence, eog_token, prefill_ms, decode_ms: ms(t1.elapsed()) })
    }

    /// [`Engine::prefill_cancellable`] whose last chunk chooses the first token
    /// (`Backend::forward_pick`).
    fn prefill_pick(&mut self, prompt: &[u32], chunk: usize, tap: &mut dyn Tap, cancel: &AtomicBool, pick: &PickArgs) -> Result<Option<Picked>, EngineError> {
        self.check_prompt(prompt)?;
        self.backend.truncate(0);
        let chunk = if chunk == 0 { prompt.len() } else { chunk };
        let mut pos = 0;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Ok(None);
            }
            let end = (pos + chunk).min(prompt.len());
            if end == prompt.len() {
                let picked = self.backend.forward_pick(&prompt[pos..end], pos, tap, pick)?;
                tap.forward_done();
                return Ok(Some(picked));
            }
            self.backend.forward(&prompt[pos..end], pos, LogitRows::None, tap)?;
            tap.forward_done();
            pos = end;
        }
    }

    fn check_prompt(&self, prompt: &[u32]) -> Result<(), EngineError> {
        if prompt.is_empty() {
            return Err(EngineError::EmptyPrompt);
        }
        if prompt.len() >= self.backend.n_ctx() {
            return Err(EngineError::PromptTooLong { n_prompt: prompt.len(), n_ctx: self.backend.n_ctx() });
        }
        Ok(())
    }
}

/// The choice of the token of generated index `index` over `history`.
fn pick_args<'a>(req: &'a GenerateRequest, history: &'a [u32], index: usize) -> PickArgs<'a> {
    PickArgs { params: &req.params, history, coin: sampler::draw_bits(req.seed, index as u64), top_n: req.top_logprobs }
}

/// The end of a decode step's trace frame: the taps the backend kept back, then the tap's
/// `forward_done`. Nothing for index 0, whose step was the prefill's last chunk.
fn frame_done(backend: &mut dyn Backend, stepped: bool, tap: &mut dyn Tap) {
    if stepped {
        backend.flush_taps(tap);
        tap.forward_done();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
