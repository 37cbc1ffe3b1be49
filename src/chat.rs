//! Chat templates: renders a model's Jinja chat template (`tokenizer.chat_template`)
//! over a list of messages the way Hugging Face `apply_chat_template` does.
//!
//! HF semantics mirrored: `trim_blocks` and `lstrip_blocks` on, no trailing
//! newline kept, globals `messages`, `add_generation_prompt`, `bos_token`,
//! `eos_token`, a `raise_exception(msg)` function that fails the render, a
//! `tojson` filter that formats like Python's `json.dumps` (no HTML escaping),
//! and Python string/dict methods (`.strip()`, `.items()`, ...) via
//! minijinja-contrib's pycompat. Not mirrored: `tools`/`documents`,
//! `strftime_now`, `{% generation %}` blocks, loop controls. Pure: renders
//! strings, reads only metadata of a given GGUF file, does no tokenization.

use std::sync::Arc;

use minijinja::value::{Enumerator, Kwargs, Object, Value, ValueKind};
use minijinja::{Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::gguf::GgufFile;

/// The metadata key holding the Jinja template.
pub const CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// One chat turn, serialized to the template as `{"role": .., "content": ..}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role: role.into(), content: content.into() }
    }
}

/// Why a chat template could not be found or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("missing gguf metadata key {key}")]
    MissingTemplate { key: &'static str },

    #[error("gguf metadata key {key} has type {found}, expected string")]
    WrongType { key: &'static str, found: &'static str },

    /// The template does not parse.
    #[error("invalid chat template: {0:#}")]
    Syntax(#[source] minijinja::Error),

    /// The template called `raise_exception(message)`.
    #[error("chat template raised an exception: {message}")]
    Raised { message: String },

    /// Any other failure while rendering (undefined calls, type errors, ...).
    #[error("chat template render failed: {0:#}")]
    Render(#[source] minijinja::Error),
}

/// A chat template: the file's Jinja source, or one of llama.cpp's built-in templates
/// (`llm_chat_apply_template`), for a file that carries none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    Jinja(String),
    /// llama.cpp's `gemma` template (LLM_CHAT_TEMPLATE_GEMMA): the one llama.cpp renders for
    /// every Gemma template it detects, and what it is asked for by name for a gemma file without
    /// a template (Gemma-3-270M's GGUF has none).
    LlamaCppGemma,
}

impl ChatTemplate {
    /// The template of a model: `tokenizer.chat_template`, else the built-in one of its
    /// architecture (gemma3: [`ChatTemplate::LlamaCppGemma`]), else the missing-key error.
    pub fn of_model(file: &GgufFile) -> Result<ChatTemplate, ChatError> {
        match model_chat_template(file) {
            Ok(t) => Ok(ChatTemplate::Jinja(t)),
            Err(ChatError::MissingTemplate { .. }) if file.get_str("general.architecture").ok() == Some("gemma3") => Ok(ChatTemplate::LlamaCppGemma),
            Err(e) => Err(e),
        }
    }

    /// Renders `messages` (HF `apply_chat_template` for Jinja, llama.cpp's C++ for built-ins).
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool, bos_token: &str, eos_token: &str) -> Result<String, ChatError> {
        match self {
            ChatTemplate::Jinja(t) => apply_chat_template(t, messages, add_generation_prompt, bos_token, eos_token),
            ChatTemplate::LlamaCppGemma => Ok(render_gemma(messages, add_generation_prompt)),
        }
    }
}

/// llama.cpp's built-in `gemma` template, as `llm_chat_apply_template` writes it: system
/// messages (trimmed, concatenated) are merged into the next non-model turn followed by a blank
/// line, "assistant" is called "model", every content is trimmed of ASCII whitespace (C's
/// `isspace`), each turn is `<start_of_turn>{role}\n{content}<end_of_turn>\n`, and the
/// generation prompt is `<start_of_turn>model\n`.
pub fn render_gemma(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    let trim = |s: &str| s.trim_matches(|c: char| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')).to_string();
    let mut out = String::new();
    let mut system = String::new();
    for m in messages {
        if m.role == "system" {
            system.push_str(&trim(&m.content));
            continue;
        }
        let role = if m.role == "assistant" { "model" } else { m.role.as_str() };
        out.push_str("<start_of_turn>");
        out.push_str(role);
        out.push('\n');
        if !system.is_empty() && role != "model" {
            out.push_str(&system);
            out.push_str("\n\n");
            system.clear();
        }
        out.push_str(&trim(&m.content));
        out.push_str("<end_of_turn>\n");
    }
    if add_generation_prompt {
        out.push_str("<start_of_turn>model\n");
    }
    out
}

/// The chat template stored in `file` under `tokenizer.chat_template`.
pub fn model_chat_template(file: &GgufFile) -> Result<String, ChatError> {
    match file.metadata(CHAT_TEMPLATE_KEY) {
        None => Err(ChatError::MissingTemplate { key: CHAT_TEMPLATE_KEY }),
        Some(v) => v.as_str().map(str::to_owned).ok_or(ChatError::WrongType { key: CHAT_TEMPLATE_KEY, found: v.type_name() }),
    }
}

/// Marker prefix so that an error raised by `raise_exception` can be told
/// apart from other render errors after minijinja wraps it.
const RAISED: &str = "raise_exception: ";

/// Renders `template` over `messages` like HF `apply_chat_template(..., tokenize=False)`.
pub fn apply_chat_template(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, ChatError> {
    let mut env = Environment::new();
    // HF: jinja2 ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, minijinja::Error> {
        Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{msg}")))
    });
    env.add_filter("tojson", tojson);
    env.add_template("chat", template).map_err(ChatError::Syntax)?;
    let tmpl = env.get_template("chat").map_err(ChatError::Syntax)?;
    let messages: Vec<Value> = messages.iter().map(|m| Value::from_object(MessageObject(m.clone()))).collect();
    let ctx = minijinja::context! {
        messages => messages,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    tmpl.render(ctx).map_err(|e| match e.detail().and_then(|d| d.strip_prefix(RAISED)) {
        Some(message) => ChatError::Raised { message: message.to_owned() },
        None => ChatError::Render(e),
    })
}

/// HF's `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=indent)`,
/// i.e. Python's separators `", "` / `": "` (or `","` + newlines with indent),
/// map key order as the value enumerates it, no HTML escaping.
fn tojson(value: &Value, indent: Option<usize>, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent = match kwargs.get::<Option<usize>>("indent")? {
        Some(i) => Some(i),
        None => indent,
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_py_json(value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_py_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) -> Result<(), minijinja::Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    let json_str = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => match v.as_i64() {
            Some(i) if v.is_integer() => out.push_str(&i.to_string()),
            _ => {
                let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
                // Python prints floats with a fractional part ("1.0", not "1").
                let s = serde_json::Value::from(f).to_string();
                out.push_str(if s == "null" { "NaN" } else { &s });
            }
        },
        ValueKind::String => out.push_str(&json_str(v.as_str().unwrap_or(""))),
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&json_str(&k.to_string()));
                out.push_str(": ");
                write_py_json(&v.get_item(k)?, indent, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_py_json(x, indent, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        _ => out.push_str(&json_str(&v.to_string())),
    }
    Ok(())
}

/// A message as the template sees it: a map whose keys enumerate in the
/// order `role`, `content` (Python dict order), which a serialized struct
/// would not keep (minijinja sorts its maps).
#[derive(Debug)]
struct MessageObject(ChatMessage);

impl Object for MessageObject {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match key.as_str()? {
            "role" => Some(Value::from(self.0.role.as_str())),
            "content" => Some(Value::from(self.0.content.as_str())),
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

/// The ids of a prompt as llama.cpp's generation tools make them: `tokenize(text, add_special =
/// true, parse_special)`, so BOS is added where the vocabulary says so (`add_bos_token`: SmolLM2
/// and Qwen2 no, Gemma and SentencePiece llama yes) and EOS likewise; and when a chat template
/// already wrote the BOS text itself, the doubled BOS at the start is dropped once, as
/// llama.cpp's chat path strips the template's (common/chat.cpp) instead of sending two.
pub fn prompt_ids(tok: &crate::tokenizer::Tokenizer, text: &str, parse_special: bool) -> Vec<u32> {
    let mut ids = tok.tokenize(text, true, parse_special);
    if tok.add_bos() && ids.len() >= 2 && ids[0] == ids[1] && Some(ids[0]) == tok.bos_id() {
        ids.remove(0);
    }
    ids
}
