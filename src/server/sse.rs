//! The SSE body of one job ([`JobStream`]): the inference thread's events turned into SSE
//! events by a [`Formatter`] (`/execute`'s own here, the OpenAI endpoints' in `openai`), with
//! keep-alive comments, cancelling its job when the client goes away.
//!
//! Knows nothing of routes or request parsing (that is `http` and `api`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_core::Stream;
use serde_json::json;
use tokio::sync::mpsc::UnboundedReceiver;

use super::worker::JobEvent;

/// SSE keep-alive comments, which also detect a client that went away while its job waits.
const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// Turns one job event into SSE events; `true` once the terminal event is out.
pub(crate) type Formatter = Box<dyn FnMut(JobEvent) -> (Vec<Event>, bool) + Send>;

/// The SSE body of one job. Dropped before its terminal event (the client went away), it
/// cancels the job.
pub(crate) struct JobStream {
    rx: UnboundedReceiver<JobEvent>,
    cancel: Arc<AtomicBool>,
    format: Formatter,
    pending: VecDeque<Event>,
    finished: bool,
}

impl JobStream {
    pub fn new(rx: UnboundedReceiver<JobEvent>, cancel: Arc<AtomicBool>, format: Formatter) -> JobStream {
        JobStream { rx, cancel, format, pending: VecDeque::new(), finished: false }
    }
}

impl Stream for JobStream {
    type Item = Result<Event, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(e) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(e)));
            }
            if this.finished {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(ev)) => {
                    let (events, terminal) = (this.format)(ev);
                    this.pending.extend(events);
                    this.finished = terminal;
                }
                Poll::Ready(None) => {
                    // The inference thread dropped the job without a terminal event (shutdown).
                    let (events, _) = (this.format)(JobEvent::Error { code: "INFERENCE_FAILED", message: "the worker stopped".into() });
                    this.pending.extend(events);
                    this.finished = true;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl Drop for JobStream {
    fn drop(&mut self) {
        if !self.finished {
            self.cancel.store(true, Ordering::Release);
        }
    }
}

/// The SSE response of one job, with keep-alive comments.
pub(crate) fn response(stream: JobStream) -> Response {
    let mut r = Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response();
    r.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

fn named(name: &str, data: serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// The earlier worker's events: `started`, `token`*, then `end` or `error`, each with its
/// name as the SSE event and as `type` in the data.
pub(crate) fn execute_formatter(job_id: String, model: String) -> Formatter {
    Box::new(move |ev| match ev {
        JobEvent::Started { seed, started_at, prompt_tokens } => (
            vec![named(
                "started",
                json!({"type": "started", "job_id": job_id, "model": model, "seed": seed, "started_at": started_at, "prompt_tokens": prompt_tokens}),
            )],
            false,
        ),
        JobEvent::Token(t) => (vec![named("token", json!({"type": "token", "t": t.piece, "i": t.index, "id": t.id}))], false),
        JobEvent::End(e) => {
            let mut d = json!({
                "type": "end",
                "tokens_out": e.tokens_out,
                "decode_time_ms": e.decode_ms.round() as u64,
                "prefill_time_ms": e.prefill_ms.round() as u64,
                "stop_reason": e.stop_reason,
                "ended_at": e.ended_at,
            });
            if let Some(s) = e.stop_sequence_matched {
                d["stop_sequence_matched"] = json!(s);
            }
            if let Some(r) = e.recording {
                // Only a file that exists is named `recording`.
                d["recording_state"] = json!(r.state);
                if let Some(p) = r.path {
                    d["recording"] = json!(p);
                }
                if let Some(p) = r.pending {
                    d["recording_pending"] = json!(p);
                }
                if let Some(e) = r.error {
                    d["recording_error"] = json!(e);
                }
            }
            (vec![named("end", d)], true)
        }
        JobEvent::Error { code, message } => (vec![named("error", json!({"type": "error", "code": code, "message": message}))], true),
    })
}
