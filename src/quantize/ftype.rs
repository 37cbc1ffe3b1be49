//! llama.cpp's file types (`enum llama_ftype` in llama.h): the names users pass
//! to `worker-orcd quantize`, the id stored in `general.file_type`, and each
//! type's default tensor type (`llama_ftype_get_default_type`).
//!
//! Only the file types this quantizer can produce are listed; the IQ1/IQ2/IQ3
//! and ternary types need quantizers (and mostly an importance matrix) that are
//! not implemented. The per-tensor mix is in `mix`.

use std::fmt;
use std::str::FromStr;

use crate::gguf::GgmlType;

/// A llama.cpp file type this quantizer can write.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2_K,
    Q2_K_S,
    Q3_K_S,
    Q3_K_M,
    Q3_K_L,
    Q4_K_S,
    Q4_K_M,
    Q5_K_S,
    Q5_K_M,
    Q6_K,
    IQ4_NL,
}

impl FileType {
    /// Every file type, in `llama_ftype` id order.
    pub const ALL: [FileType; 19] = [
        FileType::F32,
        FileType::F16,
        FileType::Q4_0,
        FileType::Q4_1,
        FileType::Q8_0,
        FileType::Q5_0,
        FileType::Q5_1,
        FileType::Q2_K,
        FileType::Q3_K_S,
        FileType::Q3_K_M,
        FileType::Q3_K_L,
        FileType::Q4_K_S,
        FileType::Q4_K_M,
        FileType::Q5_K_S,
        FileType::Q5_K_M,
        FileType::Q6_K,
        FileType::Q2_K_S,
        FileType::IQ4_NL,
        FileType::BF16,
    ];

    /// The `llama_ftype` value written to `general.file_type`.
    pub fn id(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q4_1 => 3,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q5_1 => 9,
            FileType::Q2_K => 10,
            FileType::Q3_K_S => 11,
            FileType::Q3_K_M => 12,
            FileType::Q3_K_L => 13,
            FileType::Q4_K_S => 14,
            FileType::Q4_K_M => 15,
            FileType::Q5_K_S => 16,
            FileType::Q5_K_M => 17,
            FileType::Q6_K => 18,
            FileType::Q2_K_S => 21,
            FileType::IQ4_NL => 25,
            FileType::BF16 => 32,
        }
    }

    /// The name as llama-quantize spells it (`Q4_K_M`, `IQ4_NL`, `F16`).
    pub fn name(self) -> &'static str {
        match self {
            FileType::F32 => "F32",
            FileType::F16 => "F16",
            FileType::BF16 => "BF16",
            FileType::Q4_0 => "Q4_0",
            FileType::Q4_1 => "Q4_1",
            FileType::Q5_0 => "Q5_0",
            FileType::Q5_1 => "Q5_1",
            FileType::Q8_0 => "Q8_0",
            FileType::Q2_K => "Q2_K",
            FileType::Q2_K_S => "Q2_K_S",
            FileType::Q3_K_S => "Q3_K_S",
            FileType::Q3_K_M => "Q3_K_M",
            FileType::Q3_K_L => "Q3_K_L",
            FileType::Q4_K_S => "Q4_K_S",
            FileType::Q4_K_M => "Q4_K_M",
            FileType::Q5_K_S => "Q5_K_S",
            FileType::Q5_K_M => "Q5_K_M",
            FileType::Q6_K => "Q6_K",
            FileType::IQ4_NL => "IQ4_NL",
        }
    }

    /// The tensor type a quantizable tensor gets before the mix adjusts it
    /// (`llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        match self {
            FileType::F32 => GgmlType::F32,
            FileType::F16 => GgmlType::F16,
            FileType::BF16 => GgmlType::BF16,
            FileType::Q4_0 => GgmlType::Q4_0,
            FileType::Q4_1 => GgmlType::Q4_1,
            FileType::Q5_0 => GgmlType::Q5_0,
            FileType::Q5_1 => GgmlType::Q5_1,
            FileType::Q8_0 => GgmlType::Q8_0,
            FileType::Q2_K | FileType::Q2_K_S => GgmlType::Q2_K,
            FileType::Q3_K_S | FileType::Q3_K_M | FileType::Q3_K_L => GgmlType::Q3_K,
            FileType::Q4_K_S | FileType::Q4_K_M => GgmlType::Q4_K,
            FileType::Q5_K_S | FileType::Q5_K_M => GgmlType::Q5_K,
            FileType::Q6_K => GgmlType::Q6_K,
            FileType::IQ4_NL => GgmlType::IQ4_NL,
        }
    }
}

impl fmt::Display for FileType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A file type name that is not one of [`FileType::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown file type {given:?}: expected one of {}", FileType::ALL.map(FileType::name).join(", "))]
pub struct UnknownFileType {
    pub given: String,
}

impl FromStr for FileType {
    type Err = UnknownFileType;

    /// Case-insensitive, so `q4_k_m` works like llama-quantize's `Q4_K_M`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FileType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(s)).ok_or_else(|| UnknownFileType { given: s.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_ids_are_unique() {
        for t in FileType::ALL {
            assert_eq!(t.name().parse::<FileType>().unwrap(), t);
            assert_eq!(t.name().to_lowercase().parse::<FileType>().unwrap(), t);
        }
        let ids: Vec<u32> = FileType::ALL.iter().map(|t| t.id()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ALL is in strict id order: {ids:?}");
        let err = "Q4_K_X".parse::<FileType>().unwrap_err().to_string();
        assert!(err.contains("Q4_K_X") && err.contains("Q4_K_M"), "{err}");
    }
}
