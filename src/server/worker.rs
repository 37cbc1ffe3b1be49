//! The inference thread: takes jobs from the bounded queue one at a time, first come first
//! served, runs each with [`crate::run::run`] (the one recorded run, shared with replay),
//! forwards each token to the job's HTTP task as it is produced, and records the request.
//!
//! Knows the engine and the recorder, not HTTP: it speaks to handlers only through
//! [`JobEvent`]s on a channel. Sending never blocks (the channel holds at most `max_tokens`
//! events), so a slow client never slows generation, and a dropped receiver (client gone)
//! cancels the job.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::backend::NoTap;
use crate::engine::{Engine, GenerateRequest, TokenEvent};
use crate::run;
use crate::trace::{self, Footer, Header, Recorder, RecordingOutcome, ResolvedRequest, Timings, TraceLevel, Verdict};

use super::{rfc3339_now, Gate, Shared};

/// A request waiting for or being run by the inference thread.
pub(crate) struct Job {
    pub job_id: String,
    pub endpoint: &'static str,
    /// The body as received.
    pub request_json: String,
    pub req: GenerateRequest,
    pub resolved: ResolvedRequest,
    /// `/execute`'s stop strings as given, by index of `req.stop`.
    pub stop_labels: Vec<String>,
    /// OpenAI stop strings, matched on decoded text here (the engine never sees them).
    pub stop_strings: Vec<String>,
    /// Alternatives the client asked for (the engine may compute more for the recording).
    pub client_top_logprobs: usize,
    /// File stem of the recording.
    pub record_stem: String,
    pub cancel: Arc<AtomicBool>,
    pub events: UnboundedSender<JobEvent>,
    pub enqueued: Instant,
}

/// What the inference thread tells a job's HTTP task, in order: `Started`, `Token`*, then
/// exactly one of `End` or `Error`.
#[derive(Debug, Clone)]
pub(crate) enum JobEvent {
    Started { seed: u64, started_at: String, prompt_tokens: usize },
    Token(TokenOut),
    End(JobEnd),
    Error { code: &'static str, message: String },
}

#[derive(Debug, Clone)]
pub(crate) struct TokenOut {
    pub index: usize,
    pub id: u32,
    /// The text this token completed.
    pub piece: String,
    /// Text now safe to show: `piece`, less what could still turn into a stop string, plus
    /// earlier text that no longer can.
    pub visible: String,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone)]
pub(crate) struct JobEnd {
    pub tokens_out: usize,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// The engine's reason, with a text stop reported as `STOP_SEQUENCE`.
    pub stop_reason: &'static str,
    /// OpenAI's `finish_reason`: `stop` or `length`.
    pub finish_reason: &'static str,
    pub stop_sequence_matched: Option<String>,
    /// Visible text not yet sent with a token (held back, or completed at the end).
    pub tail: String,
    /// `None` when the worker does not record.
    pub recording: Option<RecordingRef>,
    pub ended_at: String,
}

/// How long the end of a response waits for the writer to be done with its recording, so
/// that it names what exists. On a disk slower than that it says where the recording will be.
pub(crate) const RECORDING_VERDICT_WAIT: Duration = Duration::from_secs(2);

/// A job's recording as it stands when the job's end is reported.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RecordingRef {
    /// `written` (at `path`), `incomplete` (cut by a failed write, kept at `path`, the
    /// `.partial` file), `writing` (the writer is behind: it will be at `pending`, or stay
    /// `pending.partial` if cut) or `failed` (no file).
    pub state: &'static str,
    /// A file that exists now.
    pub path: Option<String>,
    pub pending: Option<String>,
    pub error: Option<String>,
}

impl RecordingRef {
    fn of(outcome: Option<RecordingOutcome>, planned: &Path) -> RecordingRef {
        let show = |p: &Path| Some(p.display().to_string());
        let (state, path, pending, error) = match outcome {
            Some(RecordingOutcome::Written(p)) => ("written", show(&p), None, None),
            Some(RecordingOutcome::Cut { partial, error }) => ("incomplete", show(&partial), None, Some(error)),
            Some(RecordingOutcome::Lost { error }) => ("failed", None, None, Some(error)),
            None => ("writing", None, show(planned), None),
        };
        RecordingRef { state, path, pending, error }
    }
}

/// Sends a job's `End` once its recording's verdict is known (at most
/// [`RECORDING_VERDICT_WAIT`] later), waiting on a thread of its own: the inference thread
/// goes on to the next job at once.
fn send_end(events: &UnboundedSender<JobEvent>, mut end: JobEnd, verdict: Option<(Arc<Verdict>, PathBuf)>) {
    let Some((v, planned)) = verdict else {
        let _ = events.send(JobEvent::End(end));
        return;
    };
    if let Some(outcome) = v.wait(Duration::ZERO) {
        end.recording = Some(RecordingRef::of(Some(outcome), &planned));
        let _ = events.send(JobEvent::End(end));
        return;
    }
    let (tx, fallback, v2, planned2) = (events.clone(), end.clone(), Arc::clone(&v), planned.clone());
    let waiter = move || {
        end.recording = Some(RecordingRef::of(v.wait(RECORDING_VERDICT_WAIT), &planned));
        let _ = tx.send(JobEvent::End(end));
    };
    if std::thread::Builder::new().name("recording-verdict".into()).spawn(waiter).is_err() {
        let mut end = fallback;
        end.recording = Some(RecordingRef::of(v2.wait(Duration::ZERO), &planned2));
        let _ = events.send(JobEvent::End(end));
    }
}

/// Runs jobs until the queue closes, then finishes the recorder.
pub(crate) fn inference_loop(rx: Receiver<Job>, mut engine: Engine, mut recorder: Option<Recorder>, shared: Arc<Shared>, gate: Option<Arc<Gate>>) {
    while let Ok(job) = rx.recv() {
        shared.queue_depth.fetch_sub(1, Ordering::AcqRel);
        shared.set_current(Some(job.job_id.clone()));
        if let Some(g) = &gate {
            g.wait();
        }
        let id = job.job_id.clone();
        let cancel = Arc::clone(&job.cancel);
        run_job(&mut engine, recorder.as_mut(), &shared, job);
        shared.finish_job(&id, &cancel);
        shared.set_current(None);
    }
    if let Some(r) = recorder {
        r.shutdown();
    }
}

fn run_job(engine: &mut Engine, mut recorder: Option<&mut Recorder>, shared: &Shared, job: Job) {
    let queue_ms = job.enqueued.elapsed().as_secs_f64() * 1000.0;
    if job.cancel.load(Ordering::Acquire) {
        shared.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        let _ = job.events.send(JobEvent::Error { code: "CANCELLED", message: "job was cancelled before it started".into() });
        return;
    }
    let started_at = rfc3339_now();
    let t0 = Instant::now();
    let prompt_tokens = job.req.prompt_ids.len();
    shared.metrics.prompt_tokens.fetch_add(prompt_tokens as u64, Ordering::Relaxed);

    let active = recorder.as_deref_mut().and_then(|r| {
        let header = Header {
            job_id: job.job_id.clone(),
            endpoint: job.endpoint.to_string(),
            request_json: job.request_json.clone(),
            started_at: started_at.clone(),
            resolved: job.resolved.clone(),
            fingerprint: shared.fingerprint.clone(),
            trace: r.level(),
            dims: r.dims(),
            projection: trace::projection_spec(),
        };
        r.begin(&job.record_stem, header)
    });
    let verdict = active.as_ref().map(|a| (a.verdict(), a.path().to_path_buf()));
    let _ = job.events.send(JobEvent::Started { seed: job.req.seed, started_at, prompt_tokens });

    let cancel: &AtomicBool = &job.cancel;
    let (result, dropped) = {
        let events = &job.events;
        let active_ref = active.as_ref();
        let client_top = job.client_top_logprobs;
        let mut on_token = |ev: &TokenEvent, visible: String| {
            let top = ev.top_logprobs.iter().take(client_top).copied().collect();
            let out = TokenOut { index: ev.index, id: ev.id, piece: ev.text.clone(), visible, logprob: ev.logprob, top };
            // An error: the HTTP side is gone, the client disconnected.
            events.send(JobEvent::Token(out)).is_ok()
        };
        let stops = &job.stop_strings;
        match (recorder.as_deref_mut(), active.as_ref()) {
            (Some(rec), Some(a)) if rec.level() != TraceLevel::Off => {
                let mut tap = rec.tap(a);
                let r = run::run(engine, &job.req, stops, &mut tap, active_ref, cancel, &mut on_token);
                (r, tap.finish())
            }
            _ => (run::run(engine, &job.req, stops, &mut NoTap, active_ref, cancel, &mut on_token), 0),
        }
    };
    let total_ms = t0.elapsed().as_secs_f64() * 1000.0;
    shared.note_job_ms(total_ms);
    let ended_at = rfc3339_now();
    let m = &shared.metrics;
    match result {
        Ok(done) => {
            let outcome = &done.outcome;
            let n = outcome.tokens.len();
            m.tokens_generated.fetch_add(n as u64, Ordering::Relaxed);
            if outcome.decode_ms > 0.0 && n > 1 {
                m.set_decode_tps((n - 1) as f64 / (outcome.decode_ms / 1000.0));
            }
            let matched = done.stop_sequence_matched(&job.stop_labels, &job.stop_strings);
            if let (Some(rec), Some(a)) = (recorder, active) {
                let timings = Timings { queue_ms, prefill_ms: outcome.prefill_ms, decode_ms: outcome.decode_ms, total_ms };
                rec.end(a, done.footer(&job.stop_labels, &job.stop_strings, timings, dropped, ended_at.clone()));
            }
            if done.cancelled {
                m.cancelled.fetch_add(1, Ordering::Relaxed);
                let _ = job.events.send(JobEvent::Error { code: "CANCELLED", message: format!("job {} was cancelled", job.job_id) });
            } else {
                m.ok.fetch_add(1, Ordering::Relaxed);
                let end = JobEnd {
                    tokens_out: n,
                    prefill_ms: outcome.prefill_ms,
                    decode_ms: outcome.decode_ms,
                    stop_reason: done.stop_reason,
                    finish_reason: done.finish_reason,
                    stop_sequence_matched: matched,
                    tail: done.tail.clone(),
                    recording: None,
                    ended_at,
                };
                // Named as it stands once the writer is done with it, not as planned.
                send_end(&job.events, end, verdict);
            }
        }
        Err(e) => {
            m.failed.fetch_add(1, Ordering::Relaxed);
            eprintln!("worker-orcd: job {} failed: {e}", job.job_id);
            if let (Some(rec), Some(a)) = (recorder, active) {
                rec.end(
                    a,
                    Footer {
                        outcome: "error".into(),
                        error: Some(e.to_string()),
                        stop_reason: String::new(),
                        stop_sequence: None,
                        stop_sequence_matched: None,
                        eog_token: None,
                        tokens: Vec::new(),
                        text: String::new(),
                        timings: Timings { queue_ms, prefill_ms: 0.0, decode_ms: 0.0, total_ms },
                        dropped_trace_frames: dropped,
                        ended_at,
                    },
                );
            }
            let _ = job.events.send(JobEvent::Error { code: "INFERENCE_FAILED", message: e.to_string() });
        }
    }
}
