//! One recorded run: the engine's generation with the server's text stop strings applied and,
//! when recording, every token written as a token frame. The server and replay both call
//! [`run`], so a replay re-executes exactly what the server did, stop conditions included.
//!
//! Knows the engine, the recorder's handle and decoded text; not HTTP, not request shapes,
//! not how a replay compares. Its callers build the footer with [`RunResult::footer`].

use std::sync::atomic::{AtomicBool, Ordering};

use crate::backend::Tap;
use crate::engine::{Engine, EngineError, GenerateOutcome, GenerateRequest, StopReason, TokenEvent};
use crate::trace::{ActiveRecording, Footer, Timings, TokenFrame};

/// Matches stop strings on decoded text, holding back any suffix that could still become one,
/// as OpenAI does: the client never sees a stop string or a prefix of one that then matched.
pub struct TextStops {
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
        let hit = self.stops.iter().enumerate().filter_map(|(i, s)| self.text[self.emitted..].find(s.as_str()).map(|p| (self.emitted + p, i))).min();
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

/// What a run ended with, resolved the way the server reports it.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub outcome: GenerateOutcome,
    /// Index into the stop strings of the one that matched on decoded text.
    pub text_stop: Option<usize>,
    /// Cancelled from outside (not by a stop string).
    pub cancelled: bool,
    /// `STOP_SEQUENCE` for a text stop, else the engine's reason.
    pub stop_reason: &'static str,
    /// Index into the token stops or the text stops of the stop that matched.
    pub stop_sequence: Option<u32>,
    /// OpenAI's `finish_reason`: `stop` or `length`.
    pub finish_reason: &'static str,
    /// Text released only at the end (held back, or completed by the decoder's last bytes).
    pub tail: String,
    /// What the client was shown in all: everything before a matched stop string.
    pub shown: String,
}

impl RunResult {
    /// The footer of this run's recording. `stop_labels` are the token stops as the client
    /// gave them (`/execute`), `stop_strings` the text stops.
    pub fn footer(&self, stop_labels: &[String], stop_strings: &[String], timings: Timings, dropped_trace_frames: u32, ended_at: String) -> Footer {
        Footer {
            outcome: if self.cancelled { "cancelled" } else { "ok" }.into(),
            error: None,
            stop_reason: self.stop_reason.into(),
            stop_sequence: self.stop_sequence,
            stop_sequence_matched: self.stop_sequence_matched(stop_labels, stop_strings),
            eog_token: self.outcome.eog_token,
            tokens: self.outcome.tokens.clone(),
            text: self.shown.clone(),
            timings,
            dropped_trace_frames,
            ended_at,
        }
    }

    pub fn stop_sequence_matched(&self, stop_labels: &[String], stop_strings: &[String]) -> Option<String> {
        match (self.text_stop, self.outcome.stop_sequence) {
            (Some(i), _) => stop_strings.get(i).cloned(),
            (None, Some(i)) => stop_labels.get(i).cloned(),
            (None, None) => None,
        }
    }
}

/// Runs `req` on `engine`: text stops matched on the decoded text as it streams (the client
/// never sees a stop string or a prefix of one that then matched), every token recorded on
/// `recording` before `on_token` sees it, `cancel` polled between prefill chunks and tokens.
/// `on_token` gets each token and the text now safe to show; returning `false` (the client
/// is gone) cancels the run.
pub fn run(
    engine: &mut Engine,
    req: &GenerateRequest,
    stop_strings: &[String],
    tap: &mut dyn Tap,
    recording: Option<&ActiveRecording>,
    cancel: &AtomicBool,
    on_token: &mut dyn FnMut(&TokenEvent, String) -> bool,
) -> Result<RunResult, EngineError> {
    let mut stops = TextStops::new(stop_strings.to_vec());
    let mut text_stop: Option<usize> = None;
    let outcome = engine.generate(req, tap, cancel, &mut |ev: &TokenEvent| {
        if let Some(a) = recording {
            a.token(TokenFrame { index: ev.index as u32, id: ev.id, text: ev.text.clone(), logprob: ev.logprob, top: ev.top_logprobs.clone() });
        }
        let (visible, hit) = stops.push(&ev.text);
        if hit.is_some() {
            text_stop = hit;
            cancel.store(true, Ordering::Release);
        }
        if !on_token(ev, visible) {
            cancel.store(true, Ordering::Release);
        }
    })?;
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
    let (stop_reason, stop_sequence) = match (text_stop, outcome.stop_sequence) {
        (Some(i), _) => ("STOP_SEQUENCE", Some(i as u32)),
        (None, Some(i)) => (outcome.stop_reason.as_str(), Some(i as u32)),
        (None, None) => (outcome.stop_reason.as_str(), None),
    };
    let finish_reason = match outcome.stop_reason {
        StopReason::MaxTokens | StopReason::ContextFull if text_stop.is_none() => "length",
        _ => "stop",
    };
    Ok(RunResult { text_stop, cancelled, stop_reason, stop_sequence, finish_reason, tail, shown: stops.shown().to_string(), outcome })
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
