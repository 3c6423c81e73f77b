//! The per-volume block map: which 512 KiB blocks hold data (`allocated`), which changed
//! since the last snapshot (`changed`), and which are authoritative locally rather than
//! still to be fetched from a source snapshot (`local`). Format: docs/ebs-format.md.

use super::durable::crc32;
use super::EngineError;

/// EBS's block size (also the snapshot block size of the EBS direct APIs).
pub const BLOCK_SIZE: u64 = 512 * 1024;

const MAGIC: &[u8; 8] = b"EBSBMAP1";
const FORMAT_VERSION: u32 = 1;
const HEADER_LEN: usize = 48;
const FLAG_CLEAN_SHUTDOWN: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    len: u64,
}

impl Bitmap {
    pub fn new(len: u64, value: bool) -> Self {
        let fill = if value { !0u64 } else { 0 };
        let mut bitmap = Bitmap {
            words: vec![fill; len.div_ceil(64) as usize],
            len,
        };
        bitmap.clear_tail();
        bitmap
    }

    fn clear_tail(&mut self) {
        let used = self.len % 64;
        if used != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << used) - 1;
            }
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, index: u64) -> bool {
        index < self.len && self.words[(index / 64) as usize] & (1 << (index % 64)) != 0
    }

    /// Sets bit `index` to `value`; returns whether it changed.
    pub fn set(&mut self, index: u64, value: bool) -> bool {
        if index >= self.len {
            return false;
        }
        let word = &mut self.words[(index / 64) as usize];
        let mask = 1u64 << (index % 64);
        let before = *word & mask != 0;
        if value {
            *word |= mask;
        } else {
            *word &= !mask;
        }
        before != value
    }

    /// Grows to `len` bits, new bits set to `value`.
    pub fn grow(&mut self, len: u64, value: bool) {
        let old_len = self.len;
        self.words.resize(len.div_ceil(64) as usize, 0);
        self.len = len;
        for index in old_len..len {
            self.set(index, value);
        }
    }

    pub fn count_ones(&self) -> u64 {
        self.words
            .iter()
            .map(|word| u64::from(word.count_ones()))
            .sum()
    }

    pub fn iter_ones(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len).filter(|&index| self.get(index))
    }

    fn byte_len(len: u64) -> usize {
        len.div_ceil(8) as usize
    }

    fn write_bytes(&self, out: &mut Vec<u8>) {
        let bytes = Self::byte_len(self.len);
        let mut written = 0;
        for word in &self.words {
            for byte in word.to_le_bytes() {
                if written < bytes {
                    out.push(byte);
                    written += 1;
                }
            }
        }
    }

    fn read_bytes(bytes: &[u8], len: u64) -> Self {
        let mut bitmap = Bitmap::new(len, false);
        for (chunk_index, chunk) in bytes.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            bitmap.words[chunk_index] = u64::from_le_bytes(word);
        }
        bitmap.clear_tail();
        bitmap
    }
}

/// The map of one volume; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMap {
    pub volume_size: u64,
    pub generation: u64,
    pub clean_shutdown: bool,
    pub allocated: Bitmap,
    pub changed: Bitmap,
    pub local: Bitmap,
}

pub fn block_count(volume_size: u64) -> u64 {
    volume_size.div_ceil(BLOCK_SIZE)
}

impl BlockMap {
    /// A map for a new volume; `has_source` leaves every block to be hydrated from a
    /// snapshot, otherwise every block is local (and reads as zeros until written).
    pub fn new(volume_size: u64, has_source: bool) -> Self {
        let blocks = block_count(volume_size);
        BlockMap {
            volume_size,
            generation: 0,
            clean_shutdown: true,
            allocated: Bitmap::new(blocks, false),
            changed: Bitmap::new(blocks, false),
            local: Bitmap::new(blocks, !has_source),
        }
    }

    pub fn grow(&mut self, volume_size: u64) {
        let blocks = block_count(volume_size);
        self.volume_size = volume_size;
        self.allocated.grow(blocks, false);
        self.changed.grow(blocks, false);
        // Space beyond the source snapshot's end is new and reads as zeros.
        self.local.grow(blocks, true);
    }

    pub fn encode(&self) -> Vec<u8> {
        let bitmap_bytes = Bitmap::byte_len(self.allocated.len());
        let mut out = Vec::with_capacity(HEADER_LEN + 3 * bitmap_bytes + 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let flags = if self.clean_shutdown {
            FLAG_CLEAN_SHUTDOWN
        } else {
            0
        };
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&self.volume_size.to_le_bytes());
        out.extend_from_slice(&self.allocated.len().to_le_bytes());
        out.extend_from_slice(&self.generation.to_le_bytes());
        debug_assert_eq!(out.len(), HEADER_LEN);
        self.allocated.write_bytes(&mut out);
        self.changed.write_bytes(&mut out);
        self.local.write_bytes(&mut out);
        let checksum = crc32(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        let corrupt = |why: &str| EngineError::CorruptMetadata(format!("block map: {why}"));
        if bytes.len() < HEADER_LEN + 4 {
            return Err(corrupt("shorter than its header"));
        }
        let (body, checksum) = bytes.split_at(bytes.len() - 4);
        let stored = u32::from_le_bytes(checksum.try_into().map_err(|_| corrupt("checksum"))?);
        if crc32(body) != stored {
            return Err(corrupt("checksum mismatch"));
        }
        if &body[..8] != MAGIC {
            return Err(corrupt("bad magic"));
        }
        let u32_at =
            |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
        let u64_at = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&body[at..at + 8]);
            u64::from_le_bytes(word)
        };
        if u32_at(8) != FORMAT_VERSION {
            return Err(corrupt(&format!("unsupported version {}", u32_at(8))));
        }
        if u64::from(u32_at(16)) != BLOCK_SIZE {
            return Err(corrupt(&format!("unsupported block size {}", u32_at(16))));
        }
        let volume_size = u64_at(24);
        let blocks = u64_at(32);
        if blocks != block_count(volume_size) {
            return Err(corrupt("block count does not match volume size"));
        }
        let bitmap_bytes = Bitmap::byte_len(blocks);
        if body.len() != HEADER_LEN + 3 * bitmap_bytes {
            return Err(corrupt("length does not match block count"));
        }
        let bitmap_at = |index: usize| {
            let start = HEADER_LEN + index * bitmap_bytes;
            Bitmap::read_bytes(&body[start..start + bitmap_bytes], blocks)
        };
        Ok(BlockMap {
            volume_size,
            generation: u64_at(40),
            clean_shutdown: u32_at(12) & FLAG_CLEAN_SHUTDOWN != 0,
            allocated: bitmap_at(0),
            changed: bitmap_at(1),
            local: bitmap_at(2),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_set_reports_changes_and_grows() {
        let mut bitmap = Bitmap::new(70, false);
        assert!(bitmap.set(69, true));
        assert!(!bitmap.set(69, true));
        assert!(bitmap.get(69));
        assert!(!bitmap.set(70, true), "out of range is ignored");
        bitmap.grow(130, true);
        assert_eq!(bitmap.count_ones(), 1 + 60);
        assert_eq!(bitmap.iter_ones().next(), Some(69));
    }

    #[test]
    fn map_round_trips_and_detects_corruption() {
        let mut map = BlockMap::new(10 * BLOCK_SIZE + 1, true);
        map.allocated.set(3, true);
        map.changed.set(10, true);
        map.local.set(0, true);
        map.generation = 42;
        map.clean_shutdown = false;
        let encoded = map.encode();
        assert_eq!(BlockMap::decode(&encoded).unwrap(), map);
        for position in [0, 20, encoded.len() / 2, encoded.len() - 1] {
            let mut damaged = encoded.clone();
            damaged[position] ^= 0x10;
            assert!(
                BlockMap::decode(&damaged).is_err(),
                "flip at {position} undetected"
            );
        }
        assert!(BlockMap::decode(&encoded[..encoded.len() - 1]).is_err());
    }
}
