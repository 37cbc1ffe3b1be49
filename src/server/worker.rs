//! The inference thread: takes jobs from the bounded queue one at a time, first come first
//! served, runs the engine, forwards each token to the job's HTTP task as it is produced, and
//! records the request.
//!
//! Knows the engine and the recorder, not HTTP: it speaks to handlers only through
//! [`JobEvent`]s on a channel. Sending never blocks (the channel holds at most `max_tokens`
//! events), so a slow client never slows generation, and a dropped receiver (client gone)
//! cancels the job.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::backend::NoTap;
use crate::engine::{Engine, GenerateRequest, StopReason, TokenEvent};
use crate::trace::{self, Footer, Header, Recorder, ResolvedRequest, Timings, TokenFrame, TraceLevel};

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
    pub recording: Option<String>,
    pub ended_at: String,
}

/// Matches stop strings on decoded text, holding back any suffix that could still become one,
/// as OpenAI does: the client never sees a stop string or a prefix of one that then matched.
pub(crate) struct TextStops {
    stops: Vec<String>,
    text: String,
    emitted: usize,
    matched: Option<usize>,
}

impl TextStops {
    pub fn new(stops: Vec<String>) -> TextStops {
        TextStops { stops, text: String::new(), emitted: 0, matched: None }
    }

    /// Adds generated text; returns the text now safe to show and, once, the index of the stop
    /// string that matched.
    pub fn push(&mut self, piece: &str) -> (String, Option<usize>) {
        if self.matched.is_some() {
            return (String::new(), None);
        }
        self.text.push_str(piece);
        let hit = self
            .stops
            .iter()
            .enumerate()
            .filter_map(|(i, s)| self.text[self.emitted..].find(s.as_str()).map(|p| (self.emitted + p, i)))
            .min();
        if let Some((at, i)) = hit {
            let out = self.text[self.emitted..at].to_string();
            self.emitted = at;
            self.matched = Some(i);
            return (out, Some(i));
        }
        let mut safe = self.text.len();
        for s in &self.stops {
            for (k, _) in s.char_indices().skip(1) {
                // Does the text end with the first k bytes of this stop string?
                if self.text.len() - self.emitted >= k && self.text.ends_with(&s[..k]) {
                    safe = safe.min(self.text.len() - k);
                }
            }
        }
        let out = self.text[self.emitted..safe].to_string();
        self.emitted = safe;
        (out, None)
    }

    /// Everything not yet shown (nothing once a stop matched).
    pub fn finish(&mut self) -> String {
        if self.matched.is_some() {
            return String::new();
        }
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    /// All text generated so far (stop strings included).
    pub fn generated(&self) -> &str {
        &self.text
    }

    /// The text shown to the client: everything up to a matched stop string.
    pub fn shown(&self) -> &str {
        &self.text[..self.emitted]
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
    let recording_path = active.as_ref().map(|a| a.path().display().to_string());
    let _ = job.events.send(JobEvent::Started { seed: job.req.seed, started_at, prompt_tokens });

    let mut stops = TextStops::new(job.stop_strings.clone());
    let mut text_stop: Option<usize> = None;
    let cancel: &AtomicBool = &job.cancel;
    let (result, dropped) = {
        let events = &job.events;
        let active_ref = active.as_ref();
        let client_top = job.client_top_logprobs;
        let mut on_token = |ev: &TokenEvent| {
            if let Some(a) = active_ref {
                a.token(TokenFrame {
                    index: ev.index as u32,
                    id: ev.id,
                    text: ev.text.clone(),
                    logprob: ev.logprob,
                    top: ev.top_logprobs.clone(),
                });
            }
            let (visible, hit) = stops.push(&ev.text);
            if hit.is_some() {
                text_stop = hit;
                cancel.store(true, Ordering::Release);
            }
            let top = ev.top_logprobs.iter().take(client_top).copied().collect();
            let out = TokenOut { index: ev.index, id: ev.id, piece: ev.text.clone(), visible, logprob: ev.logprob, top };
            if events.send(JobEvent::Token(out)).is_err() {
                // The HTTP side is gone: the client disconnected.
                cancel.store(true, Ordering::Release);
            }
        };
        match (recorder.as_deref_mut(), active.as_ref()) {
            (Some(rec), Some(a)) if rec.level() != TraceLevel::Off => {
                let mut tap = rec.tap(a);
                let r = engine.generate(&job.req, &mut tap, cancel, &mut on_token);
                (r, tap.finish())
            }
            _ => (engine.generate(&job.req, &mut NoTap, cancel, &mut on_token), 0),
        }
    };
    let total_ms = t0.elapsed().as_secs_f64() * 1000.0;
    shared.note_job_ms(total_ms);
    let ended_at = rfc3339_now();
    let m = &shared.metrics;
    match result {
        Ok(outcome) => {
            let n = outcome.tokens.len();
            m.tokens_generated.fetch_add(n as u64, Ordering::Relaxed);
            if outcome.decode_ms > 0.0 && n > 1 {
                m.set_decode_tps((n - 1) as f64 / (outcome.decode_ms / 1000.0));
            }
            // Text the decoder released only at the end (an unfinished UTF-8 sequence).
            let extra = outcome.text.get(stops.generated().len()..).unwrap_or("").to_string();
            let mut tail = String::new();
            if text_stop.is_none() && !extra.is_empty() {
                let (v, hit) = stops.push(&extra);
                tail.push_str(&v);
                text_stop = hit;
            }
            tail.push_str(&stops.finish());
            let cancelled = outcome.stop_reason == StopReason::Cancelled && text_stop.is_none();
            let (stop_reason, stop_sequence, matched) = match (text_stop, outcome.stop_sequence) {
                (Some(i), _) => ("STOP_SEQUENCE", Some(i as u32), job.stop_strings.get(i).cloned()),
                (None, Some(i)) => (outcome.stop_reason.as_str(), Some(i as u32), job.stop_labels.get(i).cloned()),
                (None, None) => (outcome.stop_reason.as_str(), None, None),
            };
            let finish_reason = match outcome.stop_reason {
                StopReason::MaxTokens | StopReason::ContextFull if text_stop.is_none() => "length",
                _ => "stop",
            };
            // Name the recording only while the writer has not given it up.
            let recording = active.as_ref().filter(|a| !a.failed()).and(recording_path);
            if let (Some(rec), Some(a)) = (recorder, active) {
                rec.end(
                    a,
                    Footer {
                        outcome: if cancelled { "cancelled" } else { "ok" }.into(),
                        error: None,
                        stop_reason: stop_reason.into(),
                        stop_sequence,
                        stop_sequence_matched: matched.clone(),
                        eog_token: outcome.eog_token,
                        tokens: outcome.tokens.clone(),
                        text: stops.shown().to_string(),
                        timings: Timings { queue_ms, prefill_ms: outcome.prefill_ms, decode_ms: outcome.decode_ms, total_ms },
                        dropped_trace_frames: dropped,
                        ended_at: ended_at.clone(),
                    },
                );
            }
            if cancelled {
                m.cancelled.fetch_add(1, Ordering::Relaxed);
                let _ = job.events.send(JobEvent::Error { code: "CANCELLED", message: format!("job {} was cancelled", job.job_id) });
            } else {
                m.ok.fetch_add(1, Ordering::Relaxed);
                let _ = job.events.send(JobEvent::End(JobEnd {
                    tokens_out: n,
                    prefill_ms: outcome.prefill_ms,
                    decode_ms: outcome.decode_ms,
                    stop_reason,
                    finish_reason,
                    stop_sequence_matched: matched,
                    tail,
                    recording,
                    ended_at,
                }));
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
                        text: stops.shown().to_string(),
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

#[cfg(test)]
mod tests {
    use super::TextStops;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<usize>) {
        let mut s = TextStops::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        let mut hit = None;
        for p in pieces {
            let (v, h) = s.push(p);
            out.push_str(&v);
            hit = hit.or(h);
        }
        out.push_str(&s.finish());
        (out, hit)
    }

    #[test]
    fn stop_string_is_trimmed_across_pieces() {
        assert_eq!(run(&["\n\n"], &["Hello", " world", "\n", "\nmore"]), ("Hello world".into(), Some(0)));
    }

    #[test]
    fn held_back_prefix_is_released_when_it_does_not_match() {
        assert_eq!(run(&["END"], &["a E", "N", "x"]), ("a ENx".into(), None));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["c", "b"], &["abc"]), ("a".into(), Some(1)));
    }

    #[test]
    fn no_stops_passes_everything() {
        assert_eq!(run(&[], &["x", "y"]), ("xy".into(), None));
    }
}
