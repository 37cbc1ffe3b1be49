//! Reads recordings: every complete frame of a file, with damage (truncation, corruption, a
//! missing footer) reported instead of failing, and the queries a replay needs.
//!
//! Never panics on any input and never allocates from a length it has not checked against the
//! file's size and the format's limits. Knows nothing of how recordings are produced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::format::{
    self, Fingerprint, Footer, FrameHeader, FrameKind, Header, ResolvedRequest, RowStats, Site, SiteTrace, TokenFrame, TraceFrame, FILE_HEADER_LEN,
    FORMAT_VERSION, FRAME_HEADER_LEN, MAGIC, MAX_FRAME_BYTES,
};
use super::summary;

/// Why a file cannot be read as a recording at all.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("cannot read recording {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("not a recording: {what}")]
    NotARecording { what: String },
    #[error("recording format version {found} is not supported (this build reads version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
}

/// Something wrong with a recording that could still be opened. Frames before the damage
/// (and intact frames after a corrupt one) are still returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    #[error("truncated at byte {offset}: frame {frame} needs {needed} bytes, {available} remain")]
    Truncated { offset: u64, frame: usize, needed: u64, available: u64 },
    #[error("checksum mismatch at frame {frame} (byte {offset})")]
    ChecksumMismatch { frame: usize, offset: u64 },
    #[error("bad frame header at frame {frame} (byte {offset}): {reason}")]
    BadFrameHeader { frame: usize, offset: u64, reason: String },
    #[error("frame {frame} (byte {offset}) does not decode: {reason}")]
    Undecodable { frame: usize, offset: u64, reason: String },
    #[error("no header frame")]
    MissingHeader,
    #[error("no footer frame: the recording was not finished")]
    MissingFooter,
}

/// One intact frame's place in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameInfo {
    pub offset: u64,
    pub kind: u8,
    pub codec: u8,
    /// Payload bytes on disk.
    pub stored_len: u32,
    /// Postcard bytes after decompression.
    pub raw_len: u32,
}

/// A recording as read from a file.
#[derive(Debug, Clone)]
pub struct Recording {
    pub path: Option<PathBuf>,
    pub version: u32,
    pub file_len: u64,
    pub header: Option<Header>,
    /// Token frames in file order (which is generation order).
    pub tokens: Vec<TokenFrame>,
    /// Trace frames in file order (one per forward call, unless dropped).
    pub traces: Vec<TraceFrame>,
    pub footer: Option<Footer>,
    /// Frames read intact.
    pub frames: usize,
    /// Where each intact frame lies and how big it is, in file order.
    pub frame_index: Vec<FrameInfo>,
    /// Intact frames of kinds this build does not know (skipped).
    pub unknown_frames: usize,
    pub damage: Vec<Damage>,
    /// A header, a footer and no damage.
    pub complete: bool,
    /// The file still has its `.partial` name: its writer never finished it.
    pub partial_name: bool,
}

impl Recording {
    pub fn open(path: &Path) -> Result<Recording, RecordingError> {
        let bytes = std::fs::read(path).map_err(|source| RecordingError::Io { path: path.to_path_buf(), source })?;
        let mut r = Recording::from_bytes(&bytes)?;
        r.partial_name = path.to_string_lossy().ends_with(super::writer::PARTIAL_SUFFIX);
        r.path = Some(path.to_path_buf());
        Ok(r)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Recording, RecordingError> {
        if bytes.len() < FILE_HEADER_LEN || bytes[..8] != MAGIC {
            let what = if bytes.len() >= 8 && bytes[..8] == MAGIC {
                format!("{} bytes, shorter than the {FILE_HEADER_LEN}-byte file header", bytes.len())
            } else {
                "the file does not start with the WORCDREC magic".to_string()
            };
            return Err(RecordingError::NotARecording { what });
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != FORMAT_VERSION {
            return Err(RecordingError::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
        }
        if bytes[12..16] != [0, 0, 0, 0] {
            return Err(RecordingError::NotARecording { what: "reserved file header bytes are not zero".into() });
        }
        let mut r = Recording {
            path: None,
            version,
            file_len: bytes.len() as u64,
            header: None,
            tokens: Vec::new(),
            traces: Vec::new(),
            footer: None,
            frames: 0,
            frame_index: Vec::new(),
            unknown_frames: 0,
            damage: Vec::new(),
            complete: false,
            partial_name: false,
        };
        let mut off = FILE_HEADER_LEN;
        let mut frame = 0usize;
        let mut bad_in_a_row = 0;
        while off < bytes.len() {
            let available = (bytes.len() - off) as u64;
            if available < FRAME_HEADER_LEN as u64 {
                r.damage.push(Damage::Truncated { offset: off as u64, frame, needed: FRAME_HEADER_LEN as u64, available });
                break;
            }
            let mut hb = [0u8; FRAME_HEADER_LEN];
            hb.copy_from_slice(&bytes[off..off + FRAME_HEADER_LEN]);
            let h = FrameHeader::parse(&hb);
            if h.stored_len > MAX_FRAME_BYTES || h.raw_len > MAX_FRAME_BYTES {
                let reason = format!("length {} / {} exceeds the format's limit", h.stored_len, h.raw_len);
                r.damage.push(Damage::BadFrameHeader { frame, offset: off as u64, reason });
                break;
            }
            let needed = FRAME_HEADER_LEN as u64 + h.stored_len as u64;
            if needed > available {
                r.damage.push(Damage::Truncated { offset: off as u64, frame, needed, available });
                break;
            }
            let stored = &bytes[off + FRAME_HEADER_LEN..off + needed as usize];
            let frame_off = off as u64;
            off += needed as usize;
            frame += 1;
            if FrameHeader::checksum(&hb, stored) != h.crc32 {
                r.damage.push(Damage::ChecksumMismatch { frame: frame - 1, offset: frame_off });
                // A bad length leads the next frame astray too; two in a row means stop.
                bad_in_a_row += 1;
                if bad_in_a_row >= 2 {
                    break;
                }
                continue;
            }
            bad_in_a_row = 0;
            if let Err(reason) = r.take_frame(&h, stored) {
                r.damage.push(Damage::Undecodable { frame: frame - 1, offset: frame_off, reason });
                continue;
            }
            r.frames += 1;
            r.frame_index.push(FrameInfo { offset: frame_off, kind: h.kind, codec: h.codec, stored_len: h.stored_len, raw_len: h.raw_len });
        }
        if r.header.is_none() {
            r.damage.push(Damage::MissingHeader);
        }
        if r.footer.is_none() {
            r.damage.push(Damage::MissingFooter);
        }
        r.complete = r.damage.is_empty();
        Ok(r)
    }

    fn take_frame(&mut self, h: &FrameHeader, stored: &[u8]) -> Result<(), String> {
        if h.reserved != 0 {
            return Err(format!("reserved field is {}", h.reserved));
        }
        let Some(kind) = FrameKind::from_u8(h.kind) else {
            format::decode_payload(h, stored)?;
            self.unknown_frames += 1;
            return Ok(());
        };
        let raw = format::decode_payload(h, stored)?;
        let err = |e: postcard::Error| format!("{kind:?} payload: {e}");
        match kind {
            FrameKind::Header => {
                let v: Header = postcard::from_bytes(&raw).map_err(err)?;
                if self.header.is_some() {
                    return Err("a second header frame".into());
                }
                self.header = Some(v);
            }
            FrameKind::Trace => {
                let v: TraceFrame = postcard::from_bytes(&raw).map_err(err)?;
                check_trace(&v)?;
                self.traces.push(v);
            }
            FrameKind::Token => self.tokens.push(postcard::from_bytes(&raw).map_err(err)?),
            FrameKind::Footer => {
                let v: Footer = postcard::from_bytes(&raw).map_err(err)?;
                if self.footer.is_some() {
                    return Err("a second footer frame".into());
                }
                self.footer = Some(v);
            }
        }
        Ok(())
    }

    /// Every problem, one per line; `None` for a complete recording.
    pub fn problems(&self) -> Option<String> {
        let mut lines: Vec<String> = self.damage.iter().map(|d| d.to_string()).collect();
        if self.partial_name {
            lines.push("the file still has its .partial name".into());
        }
        (!lines.is_empty()).then(|| lines.join("\n"))
    }

    pub fn resolved(&self) -> Option<&ResolvedRequest> {
        self.header.as_ref().map(|h| &h.resolved)
    }

    pub fn fingerprint(&self) -> Option<&Fingerprint> {
        self.header.as_ref().map(|h| &h.fingerprint)
    }

    /// The engine request that re-runs this recording.
    pub fn generate_request(&self) -> Option<crate::engine::GenerateRequest> {
        self.resolved().map(ResolvedRequest::generate_request)
    }

    /// Generated ids: the footer's list, else (unfinished recording) the token frames'.
    pub fn token_ids(&self) -> Vec<u32> {
        match &self.footer {
            Some(f) => f.tokens.clone(),
            None => self.tokens.iter().map(|t| t.id).collect(),
        }
    }

    /// Every traced row, ordered by position, then site in forward-pass order.
    pub fn rows(&self) -> Vec<RowRef<'_>> {
        rows_of(&self.traces).into_values().collect()
    }

    /// The row traced for `site` at position `pos`.
    pub fn row(&self, pos: u32, site: Site) -> Option<RowRef<'_>> {
        for f in &self.traces {
            for s in &f.sites {
                if s.site == site && pos >= s.row0 && pos - s.row0 < s.n_rows {
                    return Some(RowRef::new(f.forward, s, (pos - s.row0) as usize));
                }
            }
        }
        None
    }
}

/// Readers check a trace frame's shapes once, so queries can index without checks.
fn check_trace(f: &TraceFrame) -> Result<(), String> {
    for s in &f.sites {
        let n = s.n_rows as usize;
        let bad = |what: &str| Err(format!("site {} of forward {}: {what}", s.site.name(), f.forward));
        if s.hashes.len() != n {
            return bad("hash count differs from the row count");
        }
        if !s.stats.is_empty() && s.stats.len() != n {
            return bad("stats count differs from the row count");
        }
        if !s.projection.is_empty() && s.projection.len() % n.max(1) != 0 {
            return bad("projection length is not a multiple of the row count");
        }
        if let Some(v) = &s.values {
            if v.bytes.0.len() as u64 != n as u64 * s.width as u64 * 4 {
                return bad("values length differs from rows × width × 4");
            }
        }
    }
    Ok(())
}

/// One traced row: a position's value at one site.
#[derive(Debug, Clone, Copy)]
pub struct RowRef<'a> {
    pub pos: u32,
    pub site: Site,
    /// The forward call that computed it.
    pub forward: u32,
    pub hash: [u8; 16],
    pub stats: Option<RowStats>,
    /// The summary projection (`summary` and `full`).
    pub projection: Option<&'a [f32]>,
    trace: &'a SiteTrace,
    row: usize,
}

impl<'a> RowRef<'a> {
    fn new(forward: u32, s: &'a SiteTrace, row: usize) -> RowRef<'a> {
        let dims = if s.n_rows == 0 { 0 } else { s.projection.len() / s.n_rows as usize };
        RowRef {
            pos: s.row0 + row as u32,
            site: s.site,
            forward,
            hash: s.hashes[row],
            stats: s.stats.get(row).copied(),
            projection: (dims > 0).then(|| &s.projection[row * dims..(row + 1) * dims]),
            trace: s,
            row,
        }
    }

    pub fn width(&self) -> u32 {
        self.trace.width
    }

    /// Every value of the row (`full` recordings only), bit-exact.
    pub fn values(&self) -> Option<Vec<f32>> {
        let v = self.trace.values.as_ref()?;
        let (n, w) = (self.trace.n_rows as usize, self.trace.width as usize);
        let b = &v.bytes.0;
        let mut out = Vec::with_capacity(w);
        for c in 0..w {
            let i = self.row * w + c;
            let bytes = if v.shuffled {
                let plane = n * w;
                [b[i], b[plane + i], b[2 * plane + i], b[3 * plane + i]]
            } else {
                [b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]
            };
            out.push(f32::from_le_bytes(bytes));
        }
        Some(out)
    }
}

fn rows_of(frames: &[TraceFrame]) -> BTreeMap<(u32, Site), RowRef<'_>> {
    let mut m = BTreeMap::new();
    for f in frames {
        for s in &f.sites {
            for r in 0..s.n_rows as usize {
                let row = RowRef::new(f.forward, s, r);
                m.insert((row.pos, row.site), row);
            }
        }
    }
    m
}

/// Where two traces first differ.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    pub pos: u32,
    pub site: Site,
    /// Estimated RMS of the difference from the projections (`summary` and `full` only).
    pub est_rms_error: Option<f64>,
    /// Whether the row is missing from one side instead of differing.
    pub missing: bool,
}

/// The worker recordings (`*.wrec`) directly in `dir`, sorted by file name.
pub fn recordings_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == super::RECORDING_EXT) {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(paths)
}

/// The first (position, site), in position order then forward-pass order, whose hashes
/// differ, or that one side traced and the other did not; `None` when all agree.
pub fn first_divergence(a: &[TraceFrame], b: &[TraceFrame]) -> Option<Divergence> {
    let (ra, rb) = (rows_of(a), rows_of(b));
    let keys: std::collections::BTreeSet<&(u32, Site)> = ra.keys().chain(rb.keys()).collect();
    for k in keys {
        match (ra.get(k), rb.get(k)) {
            (Some(x), Some(y)) if x.hash == y.hash => continue,
            (Some(x), Some(y)) => {
                let est = match (x.projection, y.projection) {
                    (Some(p), Some(q)) if p.len() == q.len() => Some((summary::projected_sq_distance(p, q) / x.width().max(1) as f64).sqrt()),
                    _ => None,
                };
                return Some(Divergence { pos: k.0, site: k.1, est_rms_error: est, missing: false });
            }
            _ => return Some(Divergence { pos: k.0, site: k.1, est_rms_error: None, missing: true }),
        }
    }
    None
}
