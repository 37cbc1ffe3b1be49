//! Chat template tests: expected strings were rendered with Python jinja2
//! (ImmutableSandboxedEnvironment, trim_blocks and lstrip_blocks on, HF's
//! tojson and raise_exception) and hard-coded here.

use worker_orcd::chat::{apply_chat_template, model_chat_template, ChatError, ChatMessage};
use worker_orcd::gguf::{GgufFile, GgufWriter, MetadataValue};

/// SmolLM2-135M-Instruct's `tokenizer.chat_template`.
const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage { role: role.into(), content: content.into() }
}

fn smol(messages: &[ChatMessage], add_generation_prompt: bool) -> String {
    apply_chat_template(SMOLLM2_TEMPLATE, messages, add_generation_prompt, "<|im_start|>", "<|im_end|>").unwrap()
}

#[test]
fn smollm2_inserts_default_system_message() {
    assert_eq!(
        smol(&[msg("user", "Hi")], true),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn smollm2_uses_a_given_system_message() {
    assert_eq!(
        smol(&[msg("system", "Be brief."), msg("user", "Hi")], true),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn smollm2_without_generation_prompt() {
    assert_eq!(
        smol(&[msg("user", "Hi"), msg("assistant", "Hello!")], false),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    );
}

#[test]
fn model_template_is_read_from_gguf() {
    let path = crate::support::model_path();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(model_chat_template(&file).unwrap(), SMOLLM2_TEMPLATE);
}

#[test]
fn model_template_errors_name_the_key() {
    let mut w = GgufWriter::new();
    w.add_metadata("general.name", MetadataValue::String("x".into()));
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    let e = model_chat_template(&f).unwrap_err();
    assert!(matches!(e, ChatError::MissingTemplate { .. }), "{e:?}");
    assert!(e.to_string().contains("tokenizer.chat_template"), "{e}");

    let mut w = GgufWriter::new();
    w.add_metadata("tokenizer.chat_template", MetadataValue::U32(1));
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    let e = model_chat_template(&f).unwrap_err();
    assert!(matches!(e, ChatError::WrongType { found: "u32", .. }), "{e:?}");
}

/// Whitespace control, `.strip()`, `| trim`, `tojson` (with and without
/// indent) and `.items()`, as jinja2 renders them for HF.
const WS_TEMPLATE: &str = "{{ bos_token }}\n{% for m in messages %}\n    {% if m.role == 'system' %}\n        <<SYS>>{{ m.content | trim }}<</SYS>>\n    {% elif m['role'] == 'user' %}\n[INST] {{ m.content.strip() }} [/INST]\n    {% else %}\n {{ m.content }}{{ eos_token }}\n    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\nASSISTANT:\n{% endif %}\n{{ messages[0] | tojson }}\n{{ messages | tojson(indent=2) }}\n{% for k, v in messages[-1].items() %}{{ k }}={{ v }};{% endfor %}\n";

#[test]
fn whitespace_control_and_python_methods_match_jinja2() {
    let messages = [msg("system", "  sys  "), msg("user", " q \"<&>\" "), msg("assistant", "a\n")];
    let got = apply_chat_template(WS_TEMPLATE, &messages, true, "<s>", "</s>").unwrap();
    let want = "<s>\n        <<SYS>>sys<</SYS>>\n[INST] q \"<&>\" [/INST]\n a\n</s>\nASSISTANT:\n\
                {\"role\": \"system\", \"content\": \"  sys  \"}\n[\n  {\n    \"role\": \"system\",\n    \
                \"content\": \"  sys  \"\n  },\n  {\n    \"role\": \"user\",\n    \"content\": \" q \\\"<&>\\\" \"\n  },\n  \
                {\n    \"role\": \"assistant\",\n    \"content\": \"a\\n\"\n  }\n]\nrole=assistant;content=a\n;";
    assert_eq!(got, want);
}

#[test]
fn raise_exception_fails_the_render_with_its_message() {
    let t = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok";
    assert_eq!(apply_chat_template(t, &[msg("user", "x")], false, "", "").unwrap(), "ok");
    let e = apply_chat_template(t, &[msg("assistant", "x")], false, "", "").unwrap_err();
    assert!(matches!(&e, ChatError::Raised { message } if message == "Conversation must start with user"), "{e:?}");
}

#[test]
fn syntax_errors_are_reported() {
    let e = apply_chat_template("{% for %}", &[], false, "", "").unwrap_err();
    assert!(matches!(e, ChatError::Syntax(_)), "{e:?}");
}

#[test]
fn chat_message_serde_round_trip() {
    let m = msg("user", "Hi");
    let json = serde_json::to_string(&m).unwrap();
    assert_eq!(json, r#"{"role":"user","content":"Hi"}"#);
    assert_eq!(serde_json::from_str::<ChatMessage>(&json).unwrap(), m);
}
