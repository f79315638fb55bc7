//! How GGML blocks sit in device memory: every block padded to whole 32-bit words (WGSL has no
//! byte loads, so the kernels read words and shift), one row of blocks after another.
//!
//! Pure data layout, no device: the packing is tested here and read by the kernels in
//! [`super::kernels`].

use crate::gguf::GgmlType;

/// A weight format the device kernels read in place. The K-quants and the 32-value formats keep
/// their GGML blocks; F16/BF16 rows are cut into pseudo-blocks of 16 values (32 bytes), so that
/// every format is read as groups of 16 values sharing one scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
    F16,
    BF16,
}

/// Values that share a scale in every format (the kernels' unit of work).
pub const GROUP: usize = 16;

impl BlockFormat {
    /// The device format for a GGML type, if the kernels read it (F32 stays a dense tensor).
    pub fn of(ty: GgmlType) -> Option<Self> {
        Some(match ty {
            GgmlType::Q4_0 => Self::Q4_0,
            GgmlType::Q4_1 => Self::Q4_1,
            GgmlType::Q5_0 => Self::Q5_0,
            GgmlType::Q5_1 => Self::Q5_1,
            GgmlType::Q8_0 => Self::Q8_0,
            GgmlType::Q4K => Self::Q4K,
            GgmlType::Q5K => Self::Q5K,
            GgmlType::Q6K => Self::Q6K,
            GgmlType::F16 => Self::F16,
            GgmlType::BF16 => Self::BF16,
            GgmlType::F32 => return None,
        })
    }

    pub fn ggml(self) -> GgmlType {
        match self {
            Self::Q4_0 => GgmlType::Q4_0,
            Self::Q4_1 => GgmlType::Q4_1,
            Self::Q5_0 => GgmlType::Q5_0,
            Self::Q5_1 => GgmlType::Q5_1,
            Self::Q8_0 => GgmlType::Q8_0,
            Self::Q4K => GgmlType::Q4K,
            Self::Q5K => GgmlType::Q5K,
            Self::Q6K => GgmlType::Q6K,
            Self::F16 => GgmlType::F16,
            Self::BF16 => GgmlType::BF16,
        }
    }

    /// Values per (pseudo-)block: the GGML block, or [`GROUP`] values for F16/BF16.
    pub fn block_values(self) -> usize {
        match self {
            Self::F16 | Self::BF16 => GROUP,
            _ => self.ggml().block_size(),
        }
    }

    /// Bytes of a (pseudo-)block as stored in the file.
    pub fn block_bytes(self) -> usize {
        self.ggml().bytes_for(self.block_values())
    }

    /// 32-bit words a block takes on the device (its bytes rounded up).
    pub fn block_words(self) -> usize {
        self.block_bytes().div_ceil(4)
    }

    /// Groups of [`GROUP`] values per block.
    pub fn groups_per_block(self) -> usize {
        self.block_values() / GROUP
    }

    /// Why rows of `inp` values cannot be kept in this format on the device, if they cannot.
    pub fn check_width(self, inp: usize) -> Result<(), String> {
        if inp == 0 || inp % self.block_values() != 0 {
            return Err(format!("rows of {inp} values do not split into {:?} blocks of {}", self, self.block_values()));
        }
        Ok(())
    }

    /// Words of one row of `inp` values.
    pub fn row_words(self, inp: usize) -> usize {
        inp / self.block_values() * self.block_words()
    }
}

/// The GGML bytes of `rows` rows of `inp` values as device words: each block's bytes little-endian
/// into words, the last word of a block zero-padded.
pub fn pack_words(format: BlockFormat, bytes: &[u8], rows: usize, inp: usize) -> Result<Vec<u32>, String> {
    format.check_width(inp)?;
    let expected = rows * inp / format.block_values() * format.block_bytes();
    if bytes.len() != expected {
        return Err(format!("{} bytes for {rows} rows of {inp} {:?} values, expected {expected}", bytes.len(), format));
    }
    let mut words = Vec::with_capacity(rows * format.row_words(inp));
    for block in bytes.chunks_exact(format.block_bytes()) {
        let mut chunks = block.chunks_exact(4);
        words.extend(chunks.by_ref().map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        let tail = chunks.remainder();
        if !tail.is_empty() {
            let mut last = [0u8; 4];
            last[..tail.len()].copy_from_slice(tail);
            words.push(u32::from_le_bytes(last));
        }
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_start_on_word_boundaries_and_keep_their_bytes() {
        // Two Q4_0 blocks of 18 bytes → 5 words each, the last word of each holding 2 bytes + zeros.
        let bytes: Vec<u8> = (1..=36).collect();
        let words = pack_words(BlockFormat::Q4_0, &bytes, 1, 64).unwrap();
        assert_eq!(words.len(), 10);
        assert_eq!(words[0], u32::from_le_bytes([1, 2, 3, 4]));
        assert_eq!(words[4], u32::from_le_bytes([17, 18, 0, 0]));
        assert_eq!(words[5], u32::from_le_bytes([19, 20, 21, 22]));
        assert_eq!(words[9], u32::from_le_bytes([35, 36, 0, 0]));
    }

    #[test]
    fn padding_adds_at_most_twelve_percent_to_any_format() {
        for f in [BlockFormat::Q4_0, BlockFormat::Q4_1, BlockFormat::Q5_0, BlockFormat::Q5_1, BlockFormat::Q8_0, BlockFormat::Q4K, BlockFormat::Q5K, BlockFormat::Q6K, BlockFormat::F16, BlockFormat::BF16] {
            let ratio = (4 * f.block_words()) as f64 / f.block_bytes() as f64;
            assert!(ratio <= 1.12, "{f:?}: {ratio}");
            assert_eq!(f.ggml().block_bytes() * f.block_values() / f.ggml().block_size(), f.block_bytes(), "{f:?}");
        }
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(pack_words(BlockFormat::Q8_0, &[0; 34], 1, 48).is_err());
        assert!(pack_words(BlockFormat::Q8_0, &[0; 33], 1, 32).is_err());
        assert!(pack_words(BlockFormat::Q6K, &[0; 210], 1, 256).is_ok());
    }
}
