//! The engine's pipelined decode loop (`Backend::pick_start` / `pick_wait` / `flush_taps`):
//! against a backend that defers as a device backend does (the step is run at its start, its
//! taps held back until the flush), every request gives the CPU backend's tokens, text, stop
//! reason and trace frames, and hands each step's frame on before its token is reported.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use worker_orcd::backend::cpu::CpuBackend;
use worker_orcd::backend::{Backend, BackendError, LogitRows, Tap, TapPoint};
use worker_orcd::engine::{Engine, GenerateOutcome, GenerateRequest, StopReason};
use worker_orcd::model::ModelConfig;
use worker_orcd::sampler::{PickArgs, Picked, SamplingParams};
use worker_orcd::trace::{FrameTap, TraceFrame, TraceLevel};

use crate::support::{model, tokenizer};

type Held = Vec<(TapPoint, usize, usize, Vec<f32>)>;
/// A started step: its tokens, position, choice and taps.
type Started = (Vec<u32>, usize, Result<Picked, String>, Held);

/// Collects the taps the caller's tap wants, to be recorded later.
struct Hold<'a> {
    wants: &'a mut dyn Tap,
    held: &'a mut Held,
}

impl Tap for Hold<'_> {
    fn wants(&self, p: TapPoint) -> bool {
        self.wants.wants(p)
    }
    fn record(&mut self, p: TapPoint, pos0: usize, n_tok: usize, data: &[f32]) {
        self.held.push((p, pos0, n_tok, data.to_vec()));
    }
}

/// The CPU backend behind the deferring protocol of a device backend, as late as the trait
/// allows: `pick_start` runs the step (its taps held with it), `pick_wait` returns its choice
/// and keeps its taps back, `flush_taps` records them. Every call given a tap first records
/// the taps of a waited step still held, as the trait asks.
struct Deferred {
    inner: CpuBackend,
    /// The taps of the last waited step.
    held: Held,
    started: Option<Started>,
}

impl Deferred {
    fn new(n_ctx: usize) -> Deferred {
        Deferred { inner: CpuBackend::new(model(), n_ctx, 2).unwrap(), held: Vec::new(), started: None }
    }
    fn release(&mut self, tap: &mut dyn Tap) {
        for (p, pos0, n, data) in self.held.drain(..) {
            tap.record(p, pos0, n, &data);
        }
    }
}

impl Backend for Deferred {
    fn kind(&self) -> &'static str {
        "cpu"
    }
    fn device(&self) -> String {
        self.inner.device()
    }
    fn config(&self) -> &ModelConfig {
        self.inner.config()
    }
    fn n_ctx(&self) -> usize {
        self.inner.n_ctx()
    }
    fn n_cached(&self) -> usize {
        self.inner.n_cached()
    }
    fn truncate(&mut self, pos: usize) {
        // The engine truncates at the start of a request: the last one left nothing behind.
        assert!(self.started.is_none() && self.held.is_empty(), "truncate with a step in flight or taps held");
        self.inner.truncate(pos)
    }
    fn forward(&mut self, tokens: &[u32], pos0: usize, rows: LogitRows, tap: &mut dyn Tap) -> Result<Vec<f32>, BackendError> {
        assert!(self.started.is_none(), "forward with a step in flight");
        self.release(tap);
        self.inner.forward(tokens, pos0, rows, tap)
    }
    fn forward_pick(&mut self, tokens: &[u32], pos0: usize, tap: &mut dyn Tap, args: &PickArgs) -> Result<Picked, BackendError> {
        assert!(self.started.is_none(), "forward_pick with a step in flight");
        self.release(tap);
        self.inner.forward_pick(tokens, pos0, tap, args)
    }
    fn pick_start(&mut self, tokens: &[u32], pos0: usize, tap: &mut dyn Tap, args: &PickArgs) -> Result<(), BackendError> {
        assert!(self.started.is_none(), "two steps in flight");
        self.release(tap);
        let mut held = Vec::new();
        let r = self.inner.forward_pick(tokens, pos0, &mut Hold { wants: tap, held: &mut held }, args);
        self.started = Some((tokens.to_vec(), pos0, r.map_err(|e| e.to_string()), held));
        Ok(())
    }
    fn pick_wait(&mut self, tokens: &[u32], pos0: usize, tap: &mut dyn Tap, args: &PickArgs) -> Result<Picked, BackendError> {
        let Some((t, p, r, held)) = self.started.take() else { return self.forward_pick(tokens, pos0, tap, args) };
        assert_eq!((t.as_slice(), p), (tokens, pos0), "pick_wait's arguments are not its pick_start's");
        self.release(tap);
        self.held = held;
        r.map_err(BackendError::Device)
    }
    fn flush_taps(&mut self, tap: &mut dyn Tap) {
        self.release(tap);
    }
}

/// A FrameTap that counts the frames handed on (`forward_done`).
struct Counted {
    frames: FrameTap,
    done: Arc<AtomicUsize>,
}

impl Tap for Counted {
    fn wants(&self, p: TapPoint) -> bool {
        self.frames.wants(p)
    }
    fn record(&mut self, p: TapPoint, pos0: usize, n_tok: usize, data: &[f32]) {
        self.frames.record(p, pos0, n_tok, data)
    }
    fn forward_done(&mut self) {
        self.done.fetch_add(1, Ordering::SeqCst);
    }
}

/// One request through `engine`: the outcome, the frames, and for each reported token the
/// number of frames handed on before it.
fn generate(engine: &mut Engine, req: &GenerateRequest, cancel_after: Option<usize>) -> (GenerateOutcome, Vec<TraceFrame>, Vec<usize>) {
    let done = Arc::new(AtomicUsize::new(0));
    let mut tap = Counted { frames: FrameTap::new(TraceLevel::Summary), done: done.clone() };
    let cancel = AtomicBool::new(false);
    let mut seen = Vec::new();
    let out = engine
        .generate(req, &mut tap, &cancel, &mut |ev| {
            seen.push(done.load(Ordering::SeqCst));
            if cancel_after == Some(ev.index) {
                cancel.store(true, Ordering::SeqCst);
            }
        })
        .unwrap();
    (out, tap.frames.into_frames(), seen)
}

fn request(prompt: &str, params: SamplingParams, max_tokens: usize, stop: Vec<Vec<u32>>, chunk: usize) -> GenerateRequest {
    let prompt_ids = tokenizer().encode(prompt, true);
    GenerateRequest { prompt_ids, params, seed: 11, max_tokens, stop, top_logprobs: 2, prefill_chunk: chunk }
}

/// Both engines on `req`; returns the outcome after checking they agree in everything.
fn both(req: &GenerateRequest, n_ctx: usize, cancel_after: Option<usize>) -> GenerateOutcome {
    let mut plain = Engine::new(Box::new(CpuBackend::new(model(), n_ctx, 2).unwrap()), tokenizer());
    let mut piped = Engine::new(Box::new(Deferred::new(n_ctx)), tokenizer());
    let (a, fa, sa) = generate(&mut plain, req, cancel_after);
    let (b, fb, sb) = generate(&mut piped, req, cancel_after);
    assert_eq!((&a.tokens, &a.text, a.stop_reason, a.stop_sequence, a.eog_token), (&b.tokens, &b.text, b.stop_reason, b.stop_sequence, b.eog_token));
    assert!(fa == fb, "the pipelined loop's trace frames differ ({} and {} frames)", fa.len(), fb.len());
    assert_eq!(sa, sb, "frames handed on before each token");
    // A step's frame is handed on before its token: the prefill's chunks, then one per step.
    let chunks = if req.prefill_chunk == 0 { 1 } else { req.prompt_ids.len().div_ceil(req.prefill_chunk) };
    assert_eq!(sb, (0..sb.len()).map(|i| chunks + i).collect::<Vec<_>>());
    // Every step computed has its frame: that of each index reached after 0 (the prefill's),
    // which with EOS or a cancel includes the index whose token was not reported.
    let k = b.tokens.len();
    let reached = if matches!(b.stop_reason, StopReason::Eos | StopReason::Cancelled) { k } else { k.saturating_sub(1) };
    assert_eq!(fb.len(), chunks + reached, "{:?} after {k} tokens", b.stop_reason);
    b
}

#[test]
fn the_pipelined_loop_gives_the_unpipelined_tokens_and_frames() {
    let greedy = SamplingParams::greedy();
    let out = both(&request("The capital of France is", greedy.clone(), 9, vec![], 0), 256, None);
    assert_eq!((out.stop_reason, out.tokens.len()), (StopReason::MaxTokens, 9));
    // Sampled, with a penalty, the prompt in chunks.
    let sampled = SamplingParams { temperature: 0.9, top_p: 0.95, repetition_penalty: 1.2, ..Default::default() };
    let out = both(&request("Once upon a time, in a quiet village,", sampled, 12, vec![], 3), 256, None);
    assert_eq!(out.stop_reason, StopReason::MaxTokens);
    // One token only: no step is ever started.
    let out = both(&request("Hello", greedy, 1, vec![], 0), 256, None);
    assert_eq!(out.tokens.len(), 1);
}

#[test]
fn the_pipelined_loop_stops_where_the_unpipelined_one_does() {
    let greedy = SamplingParams::greedy();
    // A stop sequence: the third greedy token of the unstopped run.
    let free = both(&request("The capital of France is", greedy.clone(), 6, vec![], 0), 256, None);
    let out = both(&request("The capital of France is", greedy.clone(), 6, vec![vec![free.tokens[2]]], 0), 256, None);
    assert_eq!((out.stop_reason, out.tokens.len()), (StopReason::StopSequence, 3));
    // A full context: the prompt and four tokens.
    let req = request("The capital of France is", greedy.clone(), 50, vec![], 0);
    let n_ctx = req.prompt_ids.len() + 4;
    let out = both(&req, n_ctx, None);
    assert_eq!((out.stop_reason, out.tokens.len()), (StopReason::ContextFull, 4));
    // A cancel while token 3 is reported: the step of token 4 was in flight.
    let out = both(&request("The capital of France is", greedy.clone(), 20, vec![], 0), 256, Some(3));
    assert_eq!((out.stop_reason, out.tokens.len()), (StopReason::Cancelled, 4));
    // The end of generation, in a chat.
    let chat = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
                <|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n";
    let out = both(&request(chat, greedy, 40, vec![], 0), 256, None);
    assert_eq!((out.stop_reason, out.tokens.len()), (StopReason::Eos, 9), "{out:?}");
}

#[test]
fn a_pipelined_engine_is_idle_between_requests() {
    let greedy = SamplingParams::greedy();
    let mut piped = Engine::new(Box::new(Deferred::new(256)), tokenizer());
    let req = request("The capital of France is", greedy.clone(), 20, vec![], 0);
    let (cancelled, _, _) = generate(&mut piped, &req, Some(2));
    assert_eq!(cancelled.stop_reason, StopReason::Cancelled);
    let (again, frames, _) = generate(&mut piped, &req, None);
    let mut plain = Engine::new(Box::new(CpuBackend::new(model(), 256, 2).unwrap()), tokenizer());
    let (fresh, fresh_frames, _) = generate(&mut plain, &req, None);
    assert_eq!(again.tokens, fresh.tokens);
    assert!(frames == fresh_frames, "a request after a cancelled one traced differently");
}
