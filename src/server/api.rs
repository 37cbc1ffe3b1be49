//! Request shapes: parses and validates the JSON bodies of `/execute`, `/v1/completions` and
//! `/v1/chat/completions` into [`ParsedRequest`], naming the field at fault in every error.
//!
//! Pure: no tokenizer, no model, no I/O (token-level limits are checked when the request is
//! prepared). Bodies are parsed as `serde_json::Value` first and checked field by field, so
//! wrong types, huge numbers and unknown fields all become a 400 that names the field; nothing
//! here can panic on input.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::chat::ChatMessage;

/// Limits of the earlier worker's API.
pub const MAX_PROMPT_CHARS: usize = 32_768;
pub const MAX_EXECUTE_TOKENS: u64 = 2048;
pub const MAX_STOP_SEQUENCES: usize = 4;
pub const MAX_STOP_TOKENS: usize = 32;
pub const MAX_JOB_ID_CHARS: usize = 128;

/// An error answer: HTTP status, a stable code, the field at fault and a message. The body has
/// OpenAI's error shape (`{"error": {"message", "type", "param", "code"}}`) plus `field`, so
/// both kinds of client can read it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub field: Option<String>,
    pub message: String,
    pub retry_after_s: Option<u64>,
    /// Close the connection after answering (a body that will not be read).
    pub close: bool,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl std::fmt::Display) -> ApiError {
        let field = field.into();
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_REQUEST",
            message: format!("{field}: {reason}"),
            field: Some(field),
            retry_after_s: None,
            close: false,
        }
    }

    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, field: None, message: message.into(), retry_after_s: None, close: false }
    }

    pub fn body(&self) -> Value {
        let kind = match self.status.as_u16() {
            400 | 404 | 405 | 408 | 409 | 413 | 415 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            503 => "server_overloaded",
            _ => "server_error",
        };
        json!({"error": {"message": self.message, "type": kind, "param": self.field, "code": self.code, "field": self.field}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = json_response(self.status, &self.body());
        if let Some(s) = self.retry_after_s {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, s.into());
        }
        if self.close {
            resp.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A JSON response (axum's `json` feature is left off: this is all it would give us).
pub fn json_response(status: StatusCode, v: &Value) -> Response {
    (status, [(axum::http::header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// Sampling fields common to every endpoint, unvalidated against the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    pub repetition_penalty: f32,
    pub seed: Option<u64>,
}

/// What the prompt is made of.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
    Chat(Vec<ChatMessage>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Execute,
    Completions,
    Chat,
}

impl Endpoint {
    pub fn path(&self) -> &'static str {
        match self {
            Endpoint::Execute => "/execute",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Chat => "/v1/chat/completions",
        }
    }
}

/// A syntactically valid request.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    pub endpoint: Endpoint,
    /// `/execute`'s `job_id`; generated for OpenAI requests.
    pub job_id: Option<String>,
    pub prompt: PromptInput,
    /// `None`: as many as the context allows (chat only).
    pub max_tokens: Option<u64>,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Whether to report logprobs, and how many alternatives.
    pub logprobs: bool,
    pub top_logprobs: usize,
}

/// A JSON object being checked field by field; `null` counts as absent.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
}

impl<'a> Fields<'a> {
    fn new(map: &'a Map<String, Value>, prefix: &str) -> Fields<'a> {
        Fields { map, prefix: prefix.to_string() }
    }

    fn name(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn reject_unknown(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.map.keys().find(|k| !known.contains(&k.as_str())) {
            Some(k) => Err(ApiError::invalid(self.name(k), "unknown field")),
            None => Ok(()),
        }
    }

    fn string(&self, field: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(ApiError::invalid(self.name(field), format!("expected a string, got {}", type_name(v)))),
        }
    }

    fn required_string(&self, field: &str) -> Result<&'a str, ApiError> {
        self.string(field)?.ok_or_else(|| ApiError::invalid(self.name(field), "is required"))
    }

    fn bool(&self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(ApiError::invalid(self.name(field), format!("expected a boolean, got {}", type_name(v)))),
        }
    }

    /// An integer in `min..=max`.
    fn int(&self, field: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        let Some(v) = self.get(field) else { return Ok(None) };
        let n = match v {
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    u
                } else if n.as_i64().is_some() {
                    return Err(ApiError::invalid(self.name(field), format!("must be between {min} and {max}, got {n}")));
                } else {
                    match n.as_f64() {
                        Some(f) if f.fract() == 0.0 && (0.0..1.8e19).contains(&f) => f as u64,
                        _ => return Err(ApiError::invalid(self.name(field), format!("expected an integer, got {n}"))),
                    }
                }
            }
            v => return Err(ApiError::invalid(self.name(field), format!("expected an integer, got {}", type_name(v)))),
        };
        if n < min || n > max {
            return Err(ApiError::invalid(self.name(field), format!("must be between {min} and {max}, got {n}")));
        }
        Ok(Some(n))
    }

    /// A finite number accepted by `ok`, described by `range` in errors.
    fn number(&self, field: &str, range: &str, ok: impl Fn(f64) -> bool) -> Result<Option<f32>, ApiError> {
        let Some(v) = self.get(field) else { return Ok(None) };
        let Value::Number(n) = v else {
            return Err(ApiError::invalid(self.name(field), format!("expected a number, got {}", type_name(v))));
        };
        match n.as_f64() {
            Some(f) if f.is_finite() && ok(f) => Ok(Some(f as f32)),
            _ => Err(ApiError::invalid(self.name(field), format!("must be {range}, got {n}"))),
        }
    }

    /// Present only with the value that means "off" (features this worker does not have).
    fn only(&self, field: &str, neutral: &Value, what: &str) -> Result<(), ApiError> {
        match self.get(field) {
            None => Ok(()),
            Some(v) if v == neutral => Ok(()),
            Some(Value::Object(m)) if m.is_empty() && neutral.is_object() => Ok(()),
            Some(Value::Array(a)) if a.is_empty() && neutral.is_array() => Ok(()),
            Some(Value::Number(n)) if neutral.is_number() && n.as_f64() == neutral.as_f64() => Ok(()),
            Some(_) => Err(ApiError::invalid(self.name(field), format!("is not supported by this worker ({what})"))),
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a body into a JSON object.
pub fn parse_body(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(bytes).map_err(|e| ApiError::invalid("body", format!("not UTF-8: {e}")))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(v) => Err(ApiError::invalid("body", format!("expected a JSON object, got {}", type_name(&v)))),
        Err(e) => Err(ApiError::invalid("body", format!("invalid JSON: {e}"))),
    }
}

fn sampling(f: &Fields) -> Result<Sampling, ApiError> {
    Ok(Sampling {
        temperature: f
            .number("temperature", &format!("0 (greedy) or between {} and 2", crate::sampler::MIN_TEMPERATURE), |x| {
                x == 0.0 || ((x as f32) >= crate::sampler::MIN_TEMPERATURE && x <= 2.0)
            })?
            .unwrap_or(1.0),
        top_p: f.number("top_p", "in (0, 1]", |x| x > 0.0 && x <= 1.0)?.unwrap_or(1.0),
        top_k: f.int("top_k", 0, 1 << 22)?.unwrap_or(0) as usize,
        min_p: f.number("min_p", "between 0 and 1", |x| (0.0..=1.0).contains(&x))?.unwrap_or(0.0),
        repetition_penalty: f.number("repetition_penalty", "in (0, 10]", |x| x > 0.0 && x <= 10.0)?.unwrap_or(1.0),
        seed: f.int("seed", 0, u64::MAX)?,
    })
}

fn is_valid_job_id(s: &str) -> bool {
    !s.is_empty() && s.chars().count() <= MAX_JOB_ID_CHARS && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
}

/// `POST /execute`: the earlier worker's request; prompts of at most `max_prompt_chars`
/// (and never more than [`MAX_PROMPT_CHARS`], the earlier worker's limit).
pub fn parse_execute(bytes: &[u8], max_prompt_chars: usize) -> Result<ParsedRequest, ApiError> {
    let map = parse_body(bytes)?;
    let f = Fields::new(&map, "");
    f.reject_unknown(&["job_id", "prompt", "max_tokens", "temperature", "seed", "top_p", "top_k", "min_p", "repetition_penalty", "stop"])?;
    let job_id = f.required_string("job_id")?;
    if !is_valid_job_id(job_id) {
        return Err(ApiError::invalid("job_id", format!("must be 1 to {MAX_JOB_ID_CHARS} characters of A-Z a-z 0-9 - _ . :")));
    }
    let prompt = f.required_string("prompt")?;
    check_prompt_text("prompt", prompt, Some(max_prompt_chars.min(MAX_PROMPT_CHARS)))?;
    let max_tokens = f.int("max_tokens", 1, MAX_EXECUTE_TOKENS)?.ok_or_else(|| ApiError::invalid("max_tokens", "is required"))?;
    let sampling = sampling(&f)?;
    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::Array(a)) => string_list("stop", a)?,
        Some(v) => return Err(ApiError::invalid("stop", format!("expected an array of strings, got {}", type_name(v)))),
    };
    Ok(ParsedRequest {
        endpoint: Endpoint::Execute,
        job_id: Some(job_id.to_string()),
        prompt: PromptInput::Text(prompt.to_string()),
        max_tokens: Some(max_tokens),
        sampling,
        stop,
        stream: true,
        include_usage: false,
        logprobs: false,
        top_logprobs: 0,
    })
}

fn check_prompt_text(field: &str, s: &str, max_chars: Option<usize>) -> Result<(), ApiError> {
    if s.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if let Some(max) = max_chars {
        let n = s.chars().count();
        if n > max {
            return Err(ApiError::invalid(field, format!("has {n} characters, at most {max} are allowed")));
        }
    }
    Ok(())
}

fn string_list(field: &str, a: &[Value]) -> Result<Vec<String>, ApiError> {
    if a.len() > MAX_STOP_SEQUENCES {
        return Err(ApiError::invalid(field, format!("has {} sequences, at most {MAX_STOP_SEQUENCES} are allowed", a.len())));
    }
    a.iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            Value::String(_) => Err(ApiError::invalid(format!("{field}[{i}]"), "must not be empty")),
            v => Err(ApiError::invalid(format!("{field}[{i}]"), format!("expected a string, got {}", type_name(v)))),
        })
        .collect()
}

/// OpenAI's `stop`: a string or an array of at most 4 strings.
fn openai_stop(f: &Fields) -> Result<Vec<String>, ApiError> {
    match f.get("stop") {
        None => Ok(Vec::new()),
        Some(Value::String(s)) if !s.is_empty() => Ok(vec![s.clone()]),
        Some(Value::String(_)) => Err(ApiError::invalid("stop", "must not be empty")),
        Some(Value::Array(a)) => string_list("stop", a),
        Some(v) => Err(ApiError::invalid("stop", format!("expected a string or an array of strings, got {}", type_name(v)))),
    }
}

/// `stream` and `stream_options.include_usage`.
fn openai_stream(f: &Fields) -> Result<(bool, bool), ApiError> {
    let stream = f.bool("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(_) if !stream => return Err(ApiError::invalid("stream_options", "is only allowed when stream is true")),
        Some(Value::Object(m)) => {
            let o = Fields::new(m, "stream_options.");
            o.reject_unknown(&["include_usage", "include_obfuscation"])?;
            o.bool("include_usage")?.unwrap_or(false)
        }
        Some(v) => return Err(ApiError::invalid("stream_options", format!("expected an object, got {}", type_name(v)))),
    };
    Ok((stream, include_usage))
}

/// Fields OpenAI defines that do not change this worker's output; accepted and ignored.
const IGNORED: &[&str] = &["model", "user", "store", "metadata", "service_tier", "parallel_tool_calls", "prompt_cache_key", "safety_identifier"];

/// Fields OpenAI defines for features this worker lacks: accepted only at their neutral value.
fn reject_unsupported(f: &Fields) -> Result<(), ApiError> {
    f.only("n", &json!(1), "n must be 1")?;
    f.only("presence_penalty", &json!(0), "use repetition_penalty")?;
    f.only("frequency_penalty", &json!(0), "use repetition_penalty")?;
    f.only("logit_bias", &json!({}), "no logit bias")?;
    Ok(())
}

/// `POST /v1/completions`; prompts of at most `max_prompt_chars` characters (or token ids).
pub fn parse_completions(bytes: &[u8], max_prompt_chars: usize) -> Result<ParsedRequest, ApiError> {
    let map = parse_body(bytes)?;
    let f = Fields::new(&map, "");
    let mut known = vec![
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "stream",
        "stream_options",
        "logprobs",
        "echo",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "best_of",
        "logit_bias",
        "suffix",
        "top_k",
        "min_p",
        "repetition_penalty",
    ];
    known.extend_from_slice(IGNORED);
    f.reject_unknown(&known)?;
    f.string("model")?;
    reject_unsupported(&f)?;
    f.only("best_of", &json!(1), "best_of must be 1")?;
    f.only("echo", &json!(false), "echo must be false")?;
    f.only("suffix", &json!(""), "no suffix")?;
    let prompt = match f.get("prompt") {
        None => return Err(ApiError::invalid("prompt", "is required")),
        Some(Value::String(s)) => {
            check_prompt_text("prompt", s, Some(max_prompt_chars))?;
            PromptInput::Text(s.clone())
        }
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            let s = a[0].as_str().unwrap_or_default();
            check_prompt_text("prompt[0]", s, Some(max_prompt_chars))?;
            PromptInput::Text(s.to_string())
        }
        Some(Value::Array(a)) if a.len() > max_prompt_chars => {
            return Err(ApiError::invalid("prompt", format!("has {} token ids, at most {max_prompt_chars} are allowed", a.len())))
        }
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_number) => {
            let ids = a
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_u64()
                        .filter(|&n| n <= u32::MAX as u64)
                        .map(|n| n as u32)
                        .ok_or_else(|| ApiError::invalid(format!("prompt[{i}]"), "expected a token id"))
                })
                .collect::<Result<Vec<u32>, _>>()?;
            PromptInput::Ids(ids)
        }
        Some(Value::Array(a)) if a.len() > 1 && a.iter().all(Value::is_string) => {
            return Err(ApiError::invalid("prompt", "only one prompt per request is supported"))
        }
        Some(v) => {
            return Err(ApiError::invalid("prompt", format!("expected a string, an array of one string, or an array of token ids, got {}", type_name(v))))
        }
    };
    let max_tokens = f.int("max_tokens", 1, u32::MAX as u64)?.unwrap_or(16);
    let (stream, include_usage) = openai_stream(&f)?;
    let logprobs = f.int("logprobs", 0, 5)?;
    Ok(ParsedRequest {
        endpoint: Endpoint::Completions,
        job_id: None,
        prompt,
        max_tokens: Some(max_tokens),
        sampling: sampling(&f)?,
        stop: openai_stop(&f)?,
        stream,
        include_usage,
        logprobs: logprobs.is_some(),
        top_logprobs: logprobs.unwrap_or(0) as usize,
    })
}

/// `POST /v1/chat/completions`; all messages' contents together of at most
/// `max_prompt_chars` characters.
pub fn parse_chat(bytes: &[u8], max_prompt_chars: usize) -> Result<ParsedRequest, ApiError> {
    let map = parse_body(bytes)?;
    let f = Fields::new(&map, "");
    let mut known = vec![
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stream",
        "stream_options",
        "logprobs",
        "top_logprobs",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "response_format",
        "tools",
        "tool_choice",
        "top_k",
        "min_p",
        "repetition_penalty",
        "modalities",
        "reasoning_effort",
    ];
    known.extend_from_slice(IGNORED);
    f.reject_unknown(&known)?;
    f.string("model")?;
    reject_unsupported(&f)?;
    f.only("tools", &json!([]), "no tool calls")?;
    f.only("tool_choice", &json!("none"), "no tool calls")?;
    f.only("modalities", &json!(["text"]), "text only")?;
    f.only("reasoning_effort", &json!(null), "not a reasoning model")?;
    if let Some(rf) = f.get("response_format") {
        let ok = rf.get("type").and_then(Value::as_str) == Some("text");
        if !ok {
            return Err(ApiError::invalid("response_format", "only {\"type\": \"text\"} is supported"));
        }
    }
    let messages = match f.get("messages") {
        None => return Err(ApiError::invalid("messages", "is required")),
        Some(Value::Array(a)) if a.is_empty() => return Err(ApiError::invalid("messages", "must not be empty")),
        Some(Value::Array(a)) => a.iter().enumerate().map(|(i, m)| chat_message(i, m)).collect::<Result<Vec<_>, _>>()?,
        Some(v) => return Err(ApiError::invalid("messages", format!("expected an array, got {}", type_name(v)))),
    };
    let chars: usize = messages.iter().map(|m| m.content.chars().count()).sum();
    if chars > max_prompt_chars {
        return Err(ApiError::invalid("messages", format!("have {chars} characters of content, at most {max_prompt_chars} are allowed")));
    }
    let max_tokens = f.int("max_tokens", 1, u32::MAX as u64)?;
    let max_completion = f.int("max_completion_tokens", 1, u32::MAX as u64)?;
    let (stream, include_usage) = openai_stream(&f)?;
    let logprobs = f.bool("logprobs")?.unwrap_or(false);
    let top = f.int("top_logprobs", 0, 20)?;
    if top.is_some() && !logprobs {
        return Err(ApiError::invalid("top_logprobs", "requires logprobs to be true"));
    }
    Ok(ParsedRequest {
        endpoint: Endpoint::Chat,
        job_id: None,
        prompt: PromptInput::Chat(messages),
        max_tokens: max_completion.or(max_tokens),
        sampling: sampling(&f)?,
        stop: openai_stop(&f)?,
        stream,
        include_usage,
        logprobs,
        top_logprobs: top.unwrap_or(0) as usize,
    })
}

fn chat_message(i: usize, v: &Value) -> Result<ChatMessage, ApiError> {
    let field = format!("messages[{i}]");
    let Value::Object(m) = v else {
        return Err(ApiError::invalid(field, format!("expected an object, got {}", type_name(v))));
    };
    let f = Fields::new(m, &format!("{field}."));
    f.reject_unknown(&["role", "content", "name", "refusal"])?;
    let role = match f.required_string("role")? {
        "developer" => "system",
        r @ ("system" | "user" | "assistant") => r,
        r => return Err(ApiError::invalid(f.name("role"), format!("{r:?} is not supported (system, developer, user or assistant)"))),
    };
    let content = match f.get("content") {
        None if role == "assistant" => String::new(),
        None => return Err(ApiError::invalid(f.name("content"), "is required")),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                let name = format!("{field}.content[{j}]");
                let Value::Object(pm) = p else {
                    return Err(ApiError::invalid(name, format!("expected an object, got {}", type_name(p))));
                };
                let pf = Fields::new(pm, &format!("{name}."));
                pf.reject_unknown(&["type", "text"])?;
                if pf.required_string("type")? != "text" {
                    return Err(ApiError::invalid(pf.name("type"), "only text parts are supported"));
                }
                text.push_str(pf.required_string("text")?);
            }
            text
        }
        Some(v) => return Err(ApiError::invalid(f.name("content"), format!("expected a string or an array of text parts, got {}", type_name(v)))),
    };
    Ok(ChatMessage { role: role.to_string(), content })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(r: Result<ParsedRequest, ApiError>) -> String {
        r.unwrap_err().field.unwrap_or_default()
    }

    #[test]
    fn execute_fields_are_named() {
        let ok = br#"{"job_id":"a","prompt":"hi","max_tokens":4}"#;
        assert!(parse_execute(ok, MAX_PROMPT_CHARS).is_ok());
        let cases: &[(&str, &str)] = &[
            (r#"{"prompt":"hi","max_tokens":4}"#, "job_id"),
            (r#"{"job_id":"a b","prompt":"hi","max_tokens":4}"#, "job_id"),
            (r#"{"job_id":"a","max_tokens":4}"#, "prompt"),
            (r#"{"job_id":"a","prompt":"","max_tokens":4}"#, "prompt"),
            (r#"{"job_id":"a","prompt":"hi"}"#, "max_tokens"),
            (r#"{"job_id":"a","prompt":"hi","max_tokens":0}"#, "max_tokens"),
            (r#"{"job_id":"a","prompt":"hi","max_tokens":2049}"#, "max_tokens"),
            (r#"{"job_id":"a","prompt":"hi","max_tokens":1e300}"#, "max_tokens"),
            (r#"{"job_id":"a","prompt":"hi","max_tokens":-1}"#, "max_tokens"),
            (r#"{"job_id":"a","prompt":"hi","max_tokens":"4"}"#, "max_tokens"),
            (r#"{"job_id":"a","prompt":"hi","max_tokens":4,"temperature":2.5}"#, "temperature"),
            (r#"{"job_id":"a","prompt":"hi","max_tokens":4,"top_p":0}"#, "top_p"),
            (r#"{"job_id":"a","prompt":"hi","max_tokens":4,"top_k":1.5}"#, "top_k"),
            (r#"{"job_id":"a","prompt":"hi","max_tokens":4,"min_p":2}"#, "min_p"),
            (r#"{"job_id":"a","prompt":"hi","max_tokens":4,"repetition_penalty":0}"#, "repetition_penalty"),
            (r#"{"job_id":"a","prompt":"hi","max_tokens":4,"seed":-3}"#, "seed"),
            (r#"{"job_id":"a","prompt":"hi","max_tokens":4,"stop":["a","b","c","d","e"]}"#, "stop"),
            (r#"{"job_id":"a","prompt":"hi","max_tokens":4,"stop":[1]}"#, "stop[0]"),
            (r#"{"job_id":"a","prompt":"hi","max_tokens":4,"bogus":1}"#, "bogus"),
            (r#"[1,2]"#, "body"),
            (r#"{"job_id":"a""#, "body"),
        ];
        for (body, want) in cases {
            assert_eq!(field(parse_execute(body.as_bytes(), MAX_PROMPT_CHARS)), *want, "{body}");
        }
    }

    #[test]
    fn chat_accepts_openai_shapes() {
        let body = br#"{"model":"x","messages":[{"role":"developer","content":[{"type":"text","text":"be brief"}]},{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true},"logprobs":true,"top_logprobs":2,"stop":"\n","n":1,"user":"u","seed":null}"#;
        let r = parse_chat(body, MAX_PROMPT_CHARS).unwrap();
        assert_eq!(r.stop, vec!["\n".to_string()]);
        assert!(r.include_usage && r.logprobs && r.top_logprobs == 2);
        match r.prompt {
            PromptInput::Chat(m) => assert_eq!(m[0].role, "system"),
            _ => panic!(),
        }
        assert_eq!(field(parse_chat(br#"{"messages":[{"role":"user","content":"hi"}],"n":2}"#, MAX_PROMPT_CHARS)), "n");
        assert_eq!(field(parse_chat(br#"{"messages":[{"role":"tool","content":"hi"}]}"#, MAX_PROMPT_CHARS)), "messages[0].role");
        assert_eq!(field(parse_chat(br#"{"messages":[{"role":"user","content":"hi"}],"top_logprobs":2}"#, MAX_PROMPT_CHARS)), "top_logprobs");
    }
}
