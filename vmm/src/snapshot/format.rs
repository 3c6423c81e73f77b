//! The snapshot file: one header line, then the state as JSON.
//!
//! ```text
//! NITRO-VMM-SNAPSHOT version=1 length=<body bytes> crc32=<8 hex digits>\n
//! {"vmm_version": ..., "config": {...}, "vcpus": [...], ...}
//! ```
//!
//! The header makes the file self-describing (`head -1` tells what it is)
//! and lets a reader tell a truncated or corrupted file from a snapshot of
//! another version before parsing anything. JSON keeps the body readable
//! and lets serde name the field at fault when a file does not fit.
//! Files are written to a temporary name in the same directory, synced and
//! renamed, so a crash never leaves half a snapshot under the real name.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::SnapshotError;

pub const MAGIC: &str = "NITRO-VMM-SNAPSHOT";
/// Bumped whenever the body's shape changes incompatibly.
pub const VERSION: u32 = 1;
/// Guard against reading a huge file that is not a snapshot.
const MAX_BODY: u64 = 64 << 20;

/// CRC-32 (IEEE 802.3, reflected, as zlib and `cksum -a crc32b`).
pub fn crc32(data: &[u8]) -> u32 {
    const fn table() -> [u32; 256] {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    }
    static TABLE: [u32; 256] = table();
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The header line for a body.
pub fn header(body: &[u8]) -> String {
    format!(
        "{MAGIC} version={VERSION} length={} crc32={:08x}\n",
        body.len(),
        crc32(body)
    )
}

/// Frame `body` with its header.
pub fn encode(body: &[u8]) -> Vec<u8> {
    let mut out = header(body).into_bytes();
    out.extend_from_slice(body);
    out
}

/// Check the header of `file` and return the body it frames.
pub fn decode<'a>(path: &Path, file: &'a [u8]) -> Result<&'a [u8], SnapshotError> {
    let bad = |reason: String| SnapshotError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let nl = file
        .iter()
        .take(256)
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("not a snapshot file (no header line)".into()))?;
    let line = std::str::from_utf8(&file[..nl])
        .map_err(|_| bad("not a snapshot file (header is not text)".into()))?;
    let mut words = line.split(' ');
    if words.next() != Some(MAGIC) {
        return Err(bad(format!(
            "not a snapshot file (it does not start with {MAGIC})"
        )));
    }
    let mut version = None;
    let mut length = None;
    let mut crc = None;
    for w in words {
        match w.split_once('=') {
            Some(("version", v)) => version = v.parse::<u32>().ok(),
            Some(("length", v)) => length = v.parse::<u64>().ok(),
            Some(("crc32", v)) => crc = u32::from_str_radix(v, 16).ok(),
            _ => {}
        }
    }
    let version = version.ok_or_else(|| bad("header without a version".into()))?;
    if version != VERSION {
        return Err(SnapshotError::Version {
            path: path.to_path_buf(),
            found: version,
            supported: VERSION,
        });
    }
    let (Some(length), Some(crc)) = (length, crc) else {
        return Err(bad("header without length or crc32".into()));
    };
    let body = &file[nl + 1..];
    if (body.len() as u64) < length {
        return Err(SnapshotError::Truncated {
            path: path.to_path_buf(),
            expected: length,
            found: body.len() as u64,
        });
    }
    if body.len() as u64 > length {
        return Err(bad(format!(
            "{} bytes after the {length}-byte body",
            body.len() as u64 - length
        )));
    }
    let actual = crc32(body);
    if actual != crc {
        return Err(SnapshotError::Checksum {
            path: path.to_path_buf(),
            expected: crc,
            found: actual,
        });
    }
    Ok(body)
}

/// Read a snapshot file and return its checked body.
pub fn read(path: &Path) -> Result<Vec<u8>, SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_BODY {
        return Err(SnapshotError::Format {
            path: path.to_path_buf(),
            reason: format!("{len} bytes is too large for a snapshot file"),
        });
    }
    let file = std::fs::read(path).map_err(io)?;
    decode(path, &file).map(<[u8]>::to_vec)
}

/// A file being written under a temporary name, renamed by [`commit`].
/// Dropped without commit, the temporary file is removed.
///
/// [`commit`]: AtomicFile::commit
pub struct AtomicFile {
    pub file: File,
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self, SnapshotError> {
        let name = dest
            .file_name()
            .ok_or_else(|| SnapshotError::Io {
                path: dest.to_path_buf(),
                source: std::io::Error::other("not a file name"),
            })?
            .to_string_lossy();
        let tmp = dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        // Owner only: the files hold all of guest memory and the drives'
        // attachment tokens.
        let file = OpenOptions::new()
            .write(true)
            .read(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|source| SnapshotError::Io {
                path: tmp.clone(),
                source,
            })?;
        Ok(Self {
            file,
            tmp,
            dest: dest.to_path_buf(),
            done: false,
        })
    }

    /// Sync the data, then rename over the destination.
    pub fn commit(mut self) -> Result<(), SnapshotError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Io { path, source }
        };
        self.file.sync_all().map_err(io(&self.tmp))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(io(&self.dest))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write a framed snapshot body atomically.
pub fn write(path: &Path, body: &[u8]) -> Result<(), SnapshotError> {
    let mut f = AtomicFile::create(path)?;
    f.file
        .write_all(&encode(body))
        .map_err(|source| SnapshotError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn header_round_trip_and_errors() {
        let p = Path::new("s");
        let f = encode(b"{\"a\":1}");
        assert_eq!(decode(p, &f).unwrap(), b"{\"a\":1}");
        let e = decode(p, &f[..f.len() - 2]).unwrap_err();
        assert!(matches!(e, SnapshotError::Truncated { .. }), "{e}");
        let mut bad = f.clone();
        let last = bad.len() - 2;
        bad[last] ^= 1;
        let e = decode(p, &bad).unwrap_err();
        assert!(matches!(e, SnapshotError::Checksum { .. }), "{e}");
        let v2 = String::from_utf8(f.clone())
            .unwrap()
            .replace("version=1", "version=2");
        let e = decode(p, v2.as_bytes()).unwrap_err();
        assert!(
            matches!(
                e,
                SnapshotError::Version {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{e}"
        );
        let e = decode(p, b"hello\n{}").unwrap_err();
        assert!(e.to_string().contains("not a snapshot"), "{e}");
        let e = decode(p, b"").unwrap_err();
        assert!(e.to_string().contains("not a snapshot"), "{e}");
    }

    #[test]
    fn atomic_file_leaves_nothing_behind_without_commit() {
        let dir = std::env::temp_dir().join(format!("vmm-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("snap");
        {
            let mut f = AtomicFile::create(&dest).unwrap();
            f.file.write_all(b"partial").unwrap();
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        write(&dest, b"{}").unwrap();
        assert_eq!(read(&dest).unwrap(), b"{}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&dest).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
