//! Minimal NumPy `.npy` (format 1.0) writer and reader for little-endian f32 arrays, for
//! `worker-orcd dump` and for comparing with llama.cpp's eval-callback dumps.

use std::io::Write;
use std::path::Path;

/// Writes `data` with `shape` as a C-order `<f4` array.
pub fn write_f32(path: &Path, shape: &[usize], data: &[f32]) -> std::io::Result<()> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "npy shape does not match data");
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_txt}, }}");
    // Pad so that magic(6) + version(2) + len(2) + header + '\n' is a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    std::fs::File::create(path)?.write_all(&out)
}

/// Reads a C-order `<f4` array written by [`write_f32`] (or NumPy): (shape, data).
pub fn read_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(format!("{}: not an npy file", path.display()));
    }
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(bytes.get(10..10 + hlen).ok_or("npy header truncated")?).map_err(|e| e.to_string())?;
    if !header.contains("'<f4'") || header.contains("'fortran_order': True") {
        return Err(format!("{}: only C-order <f4 arrays are supported", path.display()));
    }
    let shape_txt = header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).ok_or("npy header has no shape")?;
    let shape: Vec<usize> =
        shape_txt.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse().map_err(|_| format!("bad npy dim {s:?}"))).collect::<Result<_, _>>()?;
    let body = &bytes[10 + hlen..];
    let n: usize = shape.iter().product();
    if body.len() != n * 4 {
        return Err(format!("{}: npy body has {} bytes, shape needs {}", path.display(), body.len(), n * 4));
    }
    Ok((shape, body.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        super::write_f32(&p, &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.5]).unwrap();
        let (shape, data) = super::read_f32(&p).unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(data[5], 6.5);
        // The data starts on a 64-byte boundary, as the format asks.
        assert_eq!((std::fs::metadata(&p).unwrap().len() as usize - 24) % 64, 0);
    }
}
