//! OpenAI response shapes for `/v1/completions` and `/v1/chat/completions`: streamed chunks
//! ending in `data: [DONE]`, and whole responses, with `logprobs` and `usage`.
//!
//! Follows OpenAI's published shapes field for field so existing clients work unchanged. Knows
//! nothing of request parsing (that is `api`) or generation (that is `worker`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::sse::Event;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::tokenizer::Tokenizer;

use super::api::ApiError;
use super::sse::Formatter;
use super::worker::{JobEvent, RecordingRef, TokenOut};

/// What every chunk or response of one request shares.
pub(crate) struct Ctx {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub chat: bool,
    pub logprobs: bool,
    pub include_usage: bool,
    pub prompt_tokens: usize,
    pub tokenizer: Arc<Tokenizer>,
}

impl Ctx {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.chat, chunk) {
            (true, true) => "chat.completion.chunk",
            (true, false) => "chat.completion",
            (false, _) => "text_completion",
        }
    }

    fn token_str(&self, id: u32) -> (String, Vec<u8>) {
        let b = self.tokenizer.token_bytes(id);
        (String::from_utf8_lossy(&b).into_owned(), b)
    }

    /// A chat `logprobs.content` entry.
    fn chat_entry(&self, t: &TokenOut) -> Value {
        let (token, bytes) = self.token_str(t.id);
        let top: Vec<Value> = t
            .top
            .iter()
            .map(|&(id, lp)| {
                let (tok, b) = self.token_str(id);
                json!({"token": tok, "logprob": lp, "bytes": b})
            })
            .collect();
        json!({"token": token, "logprob": t.logprob, "bytes": bytes, "top_logprobs": top})
    }

    /// A legacy completions `top_logprobs` entry: token text to logprob.
    fn completion_top(&self, t: &TokenOut) -> Value {
        let mut m = Map::new();
        for &(id, lp) in &t.top {
            m.entry(self.token_str(id).0).or_insert(json!(lp));
        }
        Value::Object(m)
    }

    fn usage(&self, completion_tokens: usize) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": self.prompt_tokens + completion_tokens})
    }

    fn chunk(&self, choice: Value) -> Value {
        let mut c = json!({
            "id": self.id,
            "object": self.object(true),
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.system_fingerprint,
            "choices": [choice],
        });
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }
}

fn data(v: Value) -> Event {
    Event::default().data(v.to_string())
}

fn done() -> Event {
    Event::default().data("[DONE]")
}

fn error_body(code: &str, message: &str) -> Value {
    let kind = if code == "CANCELLED" { "cancelled" } else { "server_error" };
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// Streamed chunks: (chat) a role chunk, a chunk per token with its visible text and
/// logprobs, a final chunk with `finish_reason`, an optional usage chunk, then `[DONE]`.
pub(crate) fn stream_formatter(ctx: Ctx) -> Formatter {
    let mut offset = 0usize;
    Box::new(move |ev| match ev {
        JobEvent::Started { .. } => {
            if ctx.chat {
                let c = ctx.chunk(json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}));
                (vec![data(c)], false)
            } else {
                (Vec::new(), false)
            }
        }
        JobEvent::Token(t) => {
            if t.visible.is_empty() && !ctx.logprobs {
                return (Vec::new(), false);
            }
            let choice = if ctx.chat {
                let lp = if ctx.logprobs { json!({"content": [ctx.chat_entry(&t)], "refusal": null}) } else { Value::Null };
                json!({"index": 0, "delta": {"content": t.visible}, "logprobs": lp, "finish_reason": null})
            } else {
                let lp = if ctx.logprobs {
                    json!({"tokens": [ctx.token_str(t.id).0], "token_logprobs": [t.logprob], "top_logprobs": [ctx.completion_top(&t)], "text_offset": [offset]})
                } else {
                    Value::Null
                };
                json!({"text": t.visible, "index": 0, "logprobs": lp, "finish_reason": null})
            };
            offset += t.piece.chars().count();
            (vec![data(ctx.chunk(choice))], false)
        }
        JobEvent::End(e) => {
            let choice = if ctx.chat {
                let delta = if e.tail.is_empty() { json!({}) } else { json!({"content": e.tail}) };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": e.finish_reason})
            } else {
                json!({"text": e.tail, "index": 0, "logprobs": null, "finish_reason": e.finish_reason})
            };
            let mut out = vec![data(ctx.chunk(choice))];
            if ctx.include_usage {
                let mut u = ctx.chunk(json!(null));
                u["choices"] = json!([]);
                u["usage"] = ctx.usage(e.tokens_out);
                out.push(data(u));
            }
            out.push(done());
            (out, true)
        }
        JobEvent::Error { code, message } => (vec![data(error_body(code, &message)), done()], true),
    })
}

/// Sets the cancel flag if the response is abandoned (the client went away) before the job
/// ended.
struct CancelOnDrop(Option<Arc<AtomicBool>>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.store(true, Ordering::Release);
        }
    }
}

/// Waits for the whole job and builds the non-streamed response.
/// Also returns the job's recording as it stood at the end.
pub(crate) async fn collect(mut rx: UnboundedReceiver<JobEvent>, cancel: Arc<AtomicBool>, ctx: Ctx) -> Result<(Value, Option<RecordingRef>), ApiError> {
    let mut guard = CancelOnDrop(Some(cancel));
    let mut text = String::new();
    let mut chat_entries = Vec::new();
    let (mut tokens, mut token_logprobs, mut tops, mut offsets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut offset = 0usize;
    while let Some(ev) = rx.recv().await {
        match ev {
            JobEvent::Started { .. } => {}
            JobEvent::Token(t) => {
                text.push_str(&t.visible);
                if ctx.logprobs {
                    if ctx.chat {
                        chat_entries.push(ctx.chat_entry(&t));
                    } else {
                        tokens.push(json!(ctx.token_str(t.id).0));
                        token_logprobs.push(json!(t.logprob));
                        tops.push(ctx.completion_top(&t));
                        offsets.push(json!(offset));
                    }
                }
                offset += t.piece.chars().count();
            }
            JobEvent::End(e) => {
                guard.0 = None;
                text.push_str(&e.tail);
                let choice = if ctx.chat {
                    let lp = if ctx.logprobs { json!({"content": chat_entries, "refusal": null}) } else { Value::Null };
                    json!({"index": 0, "message": {"role": "assistant", "content": text, "refusal": null}, "logprobs": lp, "finish_reason": e.finish_reason})
                } else {
                    let lp = if ctx.logprobs {
                        json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets})
                    } else {
                        Value::Null
                    };
                    json!({"text": text, "index": 0, "logprobs": lp, "finish_reason": e.finish_reason})
                };
                let body = json!({
                    "id": ctx.id,
                    "object": ctx.object(false),
                    "created": ctx.created,
                    "model": ctx.model,
                    "system_fingerprint": ctx.system_fingerprint,
                    "choices": [choice],
                    "usage": ctx.usage(e.tokens_out),
                });
                return Ok((body, e.recording));
            }
            JobEvent::Error { code, message } => {
                guard.0 = None;
                let status = if code == "CANCELLED" { StatusCode::CONFLICT } else { StatusCode::INTERNAL_SERVER_ERROR };
                return Err(ApiError::new(status, code, message));
            }
        }
    }
    guard.0 = None;
    Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INFERENCE_FAILED", "the worker stopped"))
}
