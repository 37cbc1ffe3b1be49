//! Recordings: the versioned file format (`format`), what a trace keeps of a hidden state
//! (`summary`), the taps that capture the forward pass (`tap`), the recorder and its writer
//! thread (`writer`), the reader (`reader`). The recorder benchmark is `benches/recorder.rs`.
//!
//! This module does not know HTTP or JSON request shapes: the server hands it a finished
//! [`Header`] (with the request body as an opaque string). The format is documented in
//! `recordings/README.md`.
//!
//! **Architecture Invariant:** recording never blocks the forward pass. The [`TraceTap`] only
//! copies tapped rows into preallocated pool buffers and hands them to the writer thread; when
//! the writer lags and the pool is spent, that forward call's frame is dropped and counted as a
//! recorder error. Hashing, statistics, projection, compression and I/O all happen on the
//! writer thread.
//!
//! # For replay
//! [`Recording::open`] returns every complete frame, with [`Recording::complete`] false and
//! [`Recording::damage`] saying why (truncated at byte N, checksum mismatch at frame K, no
//! footer) for a partial or corrupt file. A replay needs:
//! - the request to re-run: [`Recording::generate_request`] (or [`Recording::resolved`] for
//!   the prompt text, stop strings and seed), and the body as received in
//!   `header.request_json`;
//! - the environment: [`Recording::fingerprint`]; bit-for-bit agreement is expected only when
//!   it is equal;
//! - the tokens: [`Recording::tokens`] (id, text piece, logprob, top alternatives) and
//!   [`Recording::token_ids`];
//! - per (position, site) traces: [`Recording::row`] / [`Recording::rows`] give a [`RowRef`]
//!   with the exact-bytes hash, the [`RowStats`], the projection and, at `full`, the values.
//!   Run the request again with a [`FrameTap`] at the recording's level and call
//!   [`first_divergence`] on the two frame lists to name the first layer that differs.

pub mod fingerprint;
mod format;
mod reader;
mod summary;
mod tap;
mod writer;

pub use format::{
    file_header, ByteBuf, Fingerprint, Footer, FrameHeader, FrameKind, Header, ModelDims, ProjectionSpec, RecordedParams, ResolvedRequest, RowStats, Site,
    SiteTrace, Timings, TokenFrame, TraceFrame, TraceLevel, Values, CODEC_RAW, CODEC_ZSTD, FILE_HEADER_LEN, FORMAT_VERSION, FRAME_HEADER_LEN, MAGIC,
    MAX_FRAME_BYTES,
};
pub use reader::{first_divergence, recordings_in, Damage, Divergence, FrameInfo, Recording, RecordingError, RowRef};
pub use summary::{
    f32_from_le, le_bytes, projected_sq_distance, projection_bucket, row_hash, row_stats, shuffle4, splitmix64, unshuffle4, Projector, PROJECTION_DIMS,
    PROJECTION_SEED,
};
pub use tap::{site_of, FrameTap, TraceTap};
pub use writer::{
    decode_step_floats, default_encoders, partial_of, ActiveRecording, Recorder, RecorderConfig, RecorderError, RecorderSnapshot, RecorderStatus,
    RecordingOutcome, Verdict, MAX_ENCODERS, MAX_OPEN_RECORDINGS, PARTIAL_SUFFIX, RECORDING_EXT,
};

/// The projection every recording of this format version uses.
pub fn projection_spec() -> ProjectionSpec {
    ProjectionSpec { dims: PROJECTION_DIMS as u32, seed: PROJECTION_SEED }
}
