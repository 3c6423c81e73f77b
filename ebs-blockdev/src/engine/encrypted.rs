//! The at-rest encryption layer of the block store: data is stored XTS-encrypted per
//! 512-byte sector (crate::crypto); requests that do not cover whole sectors are
//! read-modify-written. Holes stay holes: an all-zero stored sector reads as zeros.

use std::os::unix::fs::FileExt;
use std::sync::{Arc, MutexGuard};

use super::{io_context, BlockStore, EngineError};
use crate::crypto::{SectorCipher, SECTOR_SIZE};

fn lock<T>(mutex: &std::sync::Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [start, end) widened to whole sectors.
fn sector_span(offset: u64, length: u64) -> (u64, u64) {
    let start = offset - offset % SECTOR_SIZE;
    let end = (offset + length).div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
    (start, end)
}

impl BlockStore {
    /// Sets (or clears) the data key's cipher; the service sets it when it opens an
    /// encrypted volume.
    pub fn set_cipher(&self, cipher: Option<Arc<SectorCipher>>) {
        *lock(&self.cipher) = cipher;
    }

    pub fn is_encrypted(&self) -> bool {
        lock(&self.cipher).is_some()
    }

    pub(super) fn cipher(&self) -> Option<Arc<SectorCipher>> {
        lock(&self.cipher).clone()
    }

    fn read_sectors(
        &self,
        cipher: &SectorCipher,
        start: u64,
        end: u64,
    ) -> Result<Vec<u8>, EngineError> {
        let mut sectors = vec![0u8; (end - start) as usize];
        self.data
            .read_exact_at(&mut sectors, start)
            .map_err(io_context(format!("read sectors at {start}")))?;
        cipher.decrypt(&mut sectors, start / SECTOR_SIZE);
        Ok(sectors)
    }

    pub(super) fn read_decrypted(
        &self,
        cipher: &SectorCipher,
        offset: u64,
        buffer: &mut [u8],
    ) -> Result<(), EngineError> {
        let (start, end) = sector_span(offset, buffer.len() as u64);
        let sectors = self.read_sectors(cipher, start, end)?;
        let skip = (offset - start) as usize;
        buffer.copy_from_slice(&sectors[skip..skip + buffer.len()]);
        Ok(())
    }

    /// Stores `bytes` at `offset`, encrypting when the volume is encrypted.
    pub(super) fn write_stored(&self, offset: u64, bytes: &[u8]) -> Result<(), EngineError> {
        let Some(cipher) = self.cipher() else {
            return self
                .data
                .write_all_at(bytes, offset)
                .map_err(io_context(format!(
                    "write {} bytes at {offset}",
                    bytes.len()
                )));
        };
        let (start, end) = sector_span(offset, bytes.len() as u64);
        let aligned = start == offset && end == offset + bytes.len() as u64;
        // Partial sectors are read, merged and rewritten; serialise those so two
        // sub-sector writes to one sector cannot lose each other.
        let _partial = (!aligned).then(|| lock(&self.partial_sector_lock));
        let mut sectors = if aligned {
            bytes.to_vec()
        } else {
            let mut sectors = self.read_sectors(&cipher, start, end)?;
            let skip = (offset - start) as usize;
            sectors[skip..skip + bytes.len()].copy_from_slice(bytes);
            sectors
        };
        cipher.encrypt(&mut sectors, start / SECTOR_SIZE);
        self.data
            .write_all_at(&sectors, start)
            .map_err(io_context(format!(
                "write {} bytes at {start}",
                sectors.len()
            )))
    }

    /// For TRIM / WRITE_ZEROES on an encrypted volume: zeroes the partial sectors at the
    /// range's edges through the cipher and returns the whole-sector middle, which may be
    /// punched or zeroed on disk. Unencrypted volumes get the range back unchanged.
    pub(super) fn zero_partial_sectors(
        &self,
        offset: u64,
        length: u64,
    ) -> Result<(u64, u64), EngineError> {
        if self.cipher().is_none() || length == 0 {
            return Ok((offset, length));
        }
        let end = offset + length;
        let middle_start = offset.div_ceil(SECTOR_SIZE) * SECTOR_SIZE;
        let middle_end = end - end % SECTOR_SIZE;
        if middle_start >= middle_end {
            self.write_stored(offset, &vec![0u8; length as usize])?;
            return Ok((offset, 0));
        }
        if middle_start > offset {
            self.write_stored(offset, &vec![0u8; (middle_start - offset) as usize])?;
        }
        if end > middle_end {
            self.write_stored(middle_end, &vec![0u8; (end - middle_end) as usize])?;
        }
        Ok((middle_start, middle_end - middle_start))
    }
}
