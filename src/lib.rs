//! worker-orcd: a deterministic LLM inference worker with record-and-replay.
//!
//! Modules in data-flow order: `gguf` (file format) → `tokenizer`/`chat` → `model` (typed
//! config and weights) → `backend` (CPU reference, CUDA) → `sampler` → `engine` (generation
//! loop) → `trace` → `run` (one recorded run, shared by the server and replay) → `replay` →
//! `server`. `fetch` obtains the test models; `vocab_fetch`
//! obtains llama.cpp's tokenizer test vocabularies; `quantize` rewrites a model in another
//! llama.cpp file type.

pub mod backend;
pub mod chat;
pub mod engine;
pub mod fetch;
#[doc(hidden)]
pub mod fuzz;
pub mod gguf;
pub mod model;
pub mod npy;
pub mod quantize;
pub mod reference;
pub mod replay;
pub mod run;
pub mod sampler;
pub mod server;
pub mod tokenizer;
pub mod trace;
pub mod vocab_fetch;
