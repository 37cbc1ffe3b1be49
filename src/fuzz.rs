//! Entry points of the fuzz targets (`fuzz/fuzz_targets/*.rs`, `cargo xtask fuzz`), in the
//! library so that the regression tests (`tests/it/fuzz_seeds.rs`) run exactly what the
//! fuzzer ran, on the committed seeds and on every input that ever crashed.
//!
//! Each function takes arbitrary bytes and must return without panicking, looping or
//! allocating beyond what the input justifies; what it returns is ignored. Not an API.

use crate::chat::ChatMessage;

/// The GGUF reader on a whole file's bytes, then every tensor's data and, for the small ones,
/// its dequantization.
pub fn gguf(data: &[u8]) {
    let Ok(f) = crate::gguf::GgufFile::from_bytes(data.to_vec()) else { return };
    for (i, (key, _)) in f.metadata.iter().enumerate() {
        let _ = f.metadata(key);
        let _ = f.metadata_entry_bytes(i);
    }
    for t in &f.tensors {
        let bytes = f.tensor_data(t);
        let n = t.n_elements();
        if n <= 1 << 16 {
            let mut out = vec![0f32; n as usize];
            let _ = crate::gguf::quant::dequantize(t.ggml_type, bytes, &mut out);
        }
    }
}

/// The recording reader, and the queries a replay makes on what it read.
pub fn recording(data: &[u8]) {
    let Ok(r) = crate::trace::Recording::from_bytes(data) else { return };
    let _ = r.problems();
    let _ = r.token_ids();
    let _ = r.generate_request();
    for row in r.rows().iter().take(64) {
        let _ = row.values();
        let _ = r.row(row.pos, row.site);
    }
    let _ = crate::trace::first_divergence(&r.traces, &r.traces);
}

/// HTTP request handling short of the network: the three endpoints' body parsers and the
/// header checks, on the same bytes. The first line, if any, is also tried as header values.
pub fn http_request(data: &[u8]) {
    crate::server::fuzz_request(data);
}

/// Chat-template rendering: input `template \0 role \1 content \0 role \1 content ...`; the
/// template is also replaced by the default model's when the input starts with `@`.
pub fn chat_template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let template = parts.next().unwrap_or("");
    let messages: Vec<ChatMessage> = parts
        .take(16)
        .map(|m| {
            let (role, content) = m.split_once('\u{1}').unwrap_or(("user", m));
            ChatMessage { role: role.to_string(), content: content.to_string() }
        })
        .collect();
    let template = match template.strip_prefix('@') {
        Some(_) => SMOLLM2_TEMPLATE,
        None => template,
    };
    let _ = crate::chat::apply_chat_template(template, &messages, true, "<|im_start|>", "<|im_end|>");
}

/// SmolLM2-Instruct's chat template, as its GGUF carries it.
pub const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
