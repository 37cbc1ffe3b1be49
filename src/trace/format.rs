//! The recording file format, version 1: the file header, the frame codec and the frame
//! payload types, exactly as `recordings/README.md` documents them.
//!
//! This file knows bytes and serde shapes only: it does no file I/O, no threading, and knows
//! nothing of HTTP or of the engine's loop. Payloads are postcard 1 (a frozen, documented wire
//! format: <https://postcard.jamesmunns.com/wire-format>), so every field order below is part
//! of the format: append new fields only in a new format version.

use std::io::Read;

use serde::{Deserialize, Serialize};

/// First 8 bytes of every recording.
pub const MAGIC: [u8; 8] = *b"WORCDREC";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Magic (8) + version u32 LE (4) + reserved u32 (4, zero).
pub const FILE_HEADER_LEN: usize = 16;
/// kind u8, codec u8, reserved u16, stored_len u32, raw_len u32, crc32 u32 (all LE).
pub const FRAME_HEADER_LEN: usize = 16;
/// No frame's stored or decoded payload may exceed this (1 GiB); a reader rejects larger
/// lengths before allocating anything.
pub const MAX_FRAME_BYTES: u32 = 1 << 30;

/// Payload stored as is.
pub const CODEC_RAW: u8 = 0;
/// Payload compressed as one zstd frame.
pub const CODEC_ZSTD: u8 = 1;

/// What a frame holds. Unknown kinds are skipped by readers (forward compatibility).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Header = 1,
    Trace = 2,
    Token = 3,
    Footer = 4,
}

impl FrameKind {
    pub fn from_u8(v: u8) -> Option<FrameKind> {
        match v {
            1 => Some(FrameKind::Header),
            2 => Some(FrameKind::Trace),
            3 => Some(FrameKind::Token),
            4 => Some(FrameKind::Footer),
            _ => None,
        }
    }
}

/// The 16-byte file header.
pub fn file_header() -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// Frames `raw`: returns the 16-byte frame header and the bytes to store after it. With a
/// compressor, the payload is zstd-compressed into `zbuf` when that makes it smaller, else it
/// is stored raw. `zbuf` is reused between calls to avoid allocating per frame.
pub fn encode_frame<'a>(
    kind: FrameKind,
    raw: &'a [u8],
    compressor: Option<&mut zstd::bulk::Compressor<'static>>,
    zbuf: &'a mut Vec<u8>,
) -> std::io::Result<([u8; FRAME_HEADER_LEN], &'a [u8])> {
    if raw.len() > MAX_FRAME_BYTES as usize {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("frame of {} bytes exceeds the format's limit", raw.len())));
    }
    let mut codec = CODEC_RAW;
    if let Some(c) = compressor {
        zbuf.clear();
        zbuf.reserve(zstd::zstd_safe::compress_bound(raw.len()));
        c.compress_to_buffer(raw, zbuf)?;
        if zbuf.len() < raw.len() {
            codec = CODEC_ZSTD;
        }
    }
    let stored: &'a [u8] = if codec == CODEC_ZSTD { zbuf } else { raw };
    let mut head = [0u8; FRAME_HEADER_LEN];
    head[0] = kind as u8;
    head[1] = codec;
    head[4..8].copy_from_slice(&(stored.len() as u32).to_le_bytes());
    head[8..12].copy_from_slice(&(raw.len() as u32).to_le_bytes());
    let crc = FrameHeader::checksum(&head, stored);
    head[12..16].copy_from_slice(&crc.to_le_bytes());
    Ok((head, stored))
}

/// A frame header as read from a file, before its payload is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: u8,
    pub codec: u8,
    pub reserved: u16,
    pub stored_len: u32,
    pub raw_len: u32,
    pub crc32: u32,
}

impl FrameHeader {
    pub fn parse(b: &[u8; FRAME_HEADER_LEN]) -> FrameHeader {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        FrameHeader { kind: b[0], codec: b[1], reserved: u16::from_le_bytes([b[2], b[3]]), stored_len: u32_at(4), raw_len: u32_at(8), crc32: u32_at(12) }
    }

    /// CRC-32 (ISO-HDLC, as zlib) of the first 12 header bytes and the stored payload.
    pub fn checksum(header_bytes: &[u8; FRAME_HEADER_LEN], stored: &[u8]) -> u32 {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header_bytes[..12]);
        crc.update(stored);
        crc.finalize()
    }
}

/// Decodes a checked frame payload to its postcard bytes. The output grows only as data
/// actually decompresses, and never beyond `raw_len`, so a hostile length cannot make the
/// reader allocate more than the frame really holds.
pub fn decode_payload(h: &FrameHeader, stored: &[u8]) -> Result<Vec<u8>, String> {
    match h.codec {
        CODEC_RAW => {
            if stored.len() != h.raw_len as usize {
                return Err(format!("raw payload of {} bytes, header says {}", stored.len(), h.raw_len));
            }
            Ok(stored.to_vec())
        }
        CODEC_ZSTD => {
            let dec = zstd::stream::read::Decoder::with_buffer(stored).map_err(|e| format!("zstd: {e}"))?;
            let cap = (h.raw_len as usize).min(stored.len().saturating_mul(8) + 4096);
            let mut out = Vec::with_capacity(cap);
            dec.take(h.raw_len as u64 + 1).read_to_end(&mut out).map_err(|e| format!("zstd: {e}"))?;
            if out.len() != h.raw_len as usize {
                return Err(format!("payload decompresses to {} bytes, header says {}", out.len(), h.raw_len));
            }
            Ok(out)
        }
        c => Err(format!("unknown codec {c}")),
    }
}

/// Bytes serialized with serde's `bytes` type (postcard: varint length, then the bytes), so a
/// megabyte of trace values is one copy instead of a million `u8` calls. Same wire format as a
/// `Vec<u8>`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ByteBuf(pub Vec<u8>);

impl std::fmt::Debug for ByteBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ByteBuf({} bytes)", self.0.len())
    }
}

impl Serialize for ByteBuf {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteBuf, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// How much of the hidden states a recording keeps (`--trace`). Every level but `Off` stores a
/// hash of each row's exact bytes; each level adds to the one before it.
// Postcard encodes the variant index, so the serde names (lowercase, for JSON) are free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceLevel {
    /// No trace frames (the request, tokens and outcome are still recorded).
    Off,
    /// A 128-bit hash of the exact bytes of every row.
    Hashes,
    /// Hashes, RMS/absmax/non-finite count, and a fixed 32-dimensional random projection
    /// (a count sketch).
    Summary,
    /// Summary plus every value, lossless.
    Full,
}

impl TraceLevel {
    pub fn as_str(&self) -> &'static str {
        match self {
            TraceLevel::Off => "off",
            TraceLevel::Hashes => "hashes",
            TraceLevel::Summary => "summary",
            TraceLevel::Full => "full",
        }
    }
}

impl std::fmt::Display for TraceLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TraceLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<TraceLevel, String> {
        match s {
            "off" => Ok(TraceLevel::Off),
            "hashes" => Ok(TraceLevel::Hashes),
            "summary" => Ok(TraceLevel::Summary),
            "full" => Ok(TraceLevel::Full),
            _ => Err(format!("unknown trace level {s:?} (expected off, hashes, summary or full)")),
        }
    }
}

/// A traced point of the forward pass. Derived order is forward-pass order, which is the order
/// in which a replay looks for the first difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Site {
    /// Token embeddings (llama.cpp `embd`), width `dim`.
    Embd,
    /// The residual stream after layer N (llama.cpp `l_out-N`), width `dim`.
    LOut(u32),
    /// The final RMS norm (llama.cpp `result_norm`), width `dim`.
    ResultNorm,
    /// Logits (llama.cpp `result_output`), width `n_vocab`; only for rows the engine computed.
    Logits,
}

impl Site {
    /// llama.cpp's tensor name.
    pub fn name(&self) -> String {
        match self {
            Site::Embd => "embd".into(),
            Site::LOut(l) => format!("l_out-{l}"),
            Site::ResultNorm => "result_norm".into(),
            Site::Logits => "result_output".into(),
        }
    }
}

/// Sampling parameters as recorded (the format's own copy, so that a change to the sampler's
/// struct can never change what old recordings mean).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedParams {
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
    pub repetition_penalty: f32,
}

impl From<&crate::sampler::SamplingParams> for RecordedParams {
    fn from(p: &crate::sampler::SamplingParams) -> Self {
        RecordedParams {
            temperature: p.temperature,
            top_k: p.top_k.min(u32::MAX as usize) as u32,
            top_p: p.top_p,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
        }
    }
}

impl From<&RecordedParams> for crate::sampler::SamplingParams {
    fn from(p: &RecordedParams) -> Self {
        crate::sampler::SamplingParams {
            temperature: p.temperature,
            top_k: p.top_k as usize,
            top_p: p.top_p,
            min_p: p.min_p,
            repetition_penalty: p.repetition_penalty,
        }
    }
}

/// Everything needed to re-run a request: the engine's inputs, resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResolvedRequest {
    /// The text that was tokenized (after the chat template, for chat requests).
    pub prompt_text: String,
    /// Whether special-token text in `prompt_text` was parsed as special ids.
    pub parse_special: bool,
    pub prompt_ids: Vec<u32>,
    pub params: RecordedParams,
    pub seed: u64,
    /// True when the request gave no seed and the worker drew one.
    pub seed_generated: bool,
    pub max_tokens: u32,
    /// Token-id stop sequences the engine matched (`/execute`'s `stop`).
    pub stop_ids: Vec<Vec<u32>>,
    /// Stop strings the server matched on decoded text (OpenAI's `stop`); the engine never
    /// saw these, so a replay applies them to the decoded text the same way.
    pub stop_strings: Vec<String>,
    /// How many most-likely alternatives were recorded with each token.
    pub top_logprobs: u32,
    /// Prefill chunk size the engine used (results do not depend on it on the CPU backend).
    pub prefill_chunk: u32,
}

impl ResolvedRequest {
    /// The engine request that reproduces this one.
    pub fn generate_request(&self) -> crate::engine::GenerateRequest {
        crate::engine::GenerateRequest {
            prompt_ids: self.prompt_ids.clone(),
            params: (&self.params).into(),
            seed: self.seed,
            max_tokens: self.max_tokens as usize,
            stop: self.stop_ids.clone(),
            top_logprobs: self.top_logprobs as usize,
            prefill_chunk: self.prefill_chunk as usize,
        }
    }
}

/// Where a recording was made: a replay on an equal fingerprint must match bit for bit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub model_name: String,
    pub model_sha256: String,
    pub worker_version: String,
    pub git_commit: String,
    /// `cpu` or `cuda`.
    pub backend: String,
    pub device: String,
    /// GPU driver version; `None` on the CPU.
    pub driver: Option<String>,
    /// Hash of the kernel sources; `None` where there are no kernels (the CPU backend).
    pub kernel_source_hash: Option<String>,
    pub threads: u32,
    /// How the backend computes (e.g. quantized activations, accumulation type).
    pub numerics: String,
    pub os: String,
    pub arch: String,
    pub cpu: String,
}

/// Model dimensions, so a reader can check widths without the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDims {
    pub n_layers: u32,
    pub dim: u32,
    pub n_vocab: u32,
}

/// The random projection used by `summary` traces (see `summary::Projector`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionSpec {
    pub dims: u32,
    pub seed: u64,
}

/// Frame kind 1: the first frame of every recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub job_id: String,
    /// The endpoint that received the request (`/execute`, `/v1/chat/completions`, ...).
    pub endpoint: String,
    /// The request body exactly as received (UTF-8).
    pub request_json: String,
    /// RFC 3339 UTC time the worker started the request.
    pub started_at: String,
    pub resolved: ResolvedRequest,
    pub fingerprint: Fingerprint,
    pub trace: TraceLevel,
    pub dims: ModelDims,
    pub projection: ProjectionSpec,
}

/// Summary statistics of one row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RowStats {
    /// sqrt(mean(x²)), accumulated in f64.
    pub rms: f32,
    /// max |x| over finite values.
    pub absmax: f32,
    /// Number of NaN or infinite values.
    pub nonfinite: u32,
}

/// Every value of a site's rows: f32 little-endian, row-major (n_rows, width); when
/// `shuffled`, the bytes are split into 4 planes (all first bytes, then all second bytes, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Values {
    pub shuffled: bool,
    pub bytes: ByteBuf,
}

/// One site of one forward call: rows for positions `row0..row0 + n_rows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteTrace {
    pub site: Site,
    pub row0: u32,
    pub n_rows: u32,
    pub width: u32,
    /// xxh3-128 of each row's exact f32 little-endian bytes (`summary::row_hash`).
    pub hashes: Vec<[u8; 16]>,
    /// One per row at `summary` and `full`, else empty.
    pub stats: Vec<RowStats>,
    /// `n_rows * dims` values at `summary` and `full`, row-major, else empty.
    pub projection: Vec<f32>,
    /// At `full` only.
    pub values: Option<Values>,
}

/// Frame kind 2: the traced sites of one forward call (a prefill chunk or one decode step).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceFrame {
    /// 0-based index of the forward call within the request.
    pub forward: u32,
    pub pos0: u32,
    pub n_tok: u32,
    pub sites: Vec<SiteTrace>,
}

/// Frame kind 3: one generated token, written as it is produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenFrame {
    pub index: u32,
    pub id: u32,
    /// The text this token completed, as streamed (may be empty inside a UTF-8 sequence).
    pub text: String,
    /// log-probability under the model (temperature 1, before penalties).
    pub logprob: f32,
    /// The most likely alternatives `(id, logprob)`, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Timings of a request, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// From enqueue to start.
    pub queue_ms: f64,
    pub prefill_ms: f64,
    pub decode_ms: f64,
    /// From start to end.
    pub total_ms: f64,
}

/// Frame kind 4: the last frame; its presence marks a recording complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Footer {
    /// `ok`, `cancelled` or `error`.
    pub outcome: String,
    pub error: Option<String>,
    /// The engine's stop reason (`MAX_TOKENS`, `EOS`, `STOP_SEQUENCE`, `CANCELLED`,
    /// `CONTEXT_FULL`), with text stops reported as `STOP_SEQUENCE`.
    pub stop_reason: String,
    /// Index into `stop_ids` or `stop_strings` of the stop that matched.
    pub stop_sequence: Option<u32>,
    pub stop_sequence_matched: Option<String>,
    pub eog_token: Option<u32>,
    /// Every generated id (the end-of-generation token excluded), also when token frames
    /// were lost.
    pub tokens: Vec<u32>,
    /// The text returned to the client (stop strings trimmed).
    pub text: String,
    pub timings: Timings,
    /// Forward calls whose trace frame was dropped because the writer lagged.
    pub dropped_trace_frames: u32,
    pub ended_at: String,
}
