//! Crash-safe file helpers: atomic replace and directory syncs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Makes a directory entry change (create, rename, unlink) in `directory` durable.
pub fn sync_directory(directory: &Path) -> io::Result<()> {
    File::open(directory)?.sync_all()
}

/// Replaces `path` with `contents` so that after a crash the file holds either the old or
/// the new contents, never a mix: write a temporary sibling, fdatasync it, rename it over
/// the target, then fsync the directory so the rename itself is durable.
pub fn replace_file_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let directory = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent"))?;
    let mut temporary_name = path.as_os_str().to_owned();
    temporary_name.push(".tmp");
    let temporary = Path::new(&temporary_name);
    {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(temporary)?;
        file.write_all(contents)?;
        file.sync_data()?;
    }
    fs::rename(temporary, path)?;
    sync_directory(directory)
}

/// IEEE CRC-32 (the zlib/PNG polynomial), used to detect torn or corrupted metadata.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn atomic_replace_leaves_no_temporary_and_replaces_contents() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("state.json");
        replace_file_atomically(&path, b"first").unwrap();
        replace_file_atomically(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert!(!directory.path().join("state.json.tmp").exists());
    }
}
