//! Block backends: where virtio-blk requests land. The file backend serves
//! raw images and instance-store ("ephemeral") disks; the EBS backend
//! (NBD to the block service) implements the same trait.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// A disk. Calls come from device worker threads, possibly several at once
/// (multi-queue), so implementations take `&self`.
pub trait BlockBackend: Send + Sync {
    /// Size in bytes (a multiple of 512).
    fn size(&self) -> u64;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// The range may read back as anything afterwards; space may be freed.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// The range reads back as zeroes; with `unmap`, space may be freed.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// The file behind a file backend: the device then reads and writes guest
    /// buffers with preadv/pwritev directly (one copy instead of two).
    fn as_file(&self) -> Option<&File> {
        None
    }
}

/// A raw image file.
pub struct FileBackend {
    file: File,
    size: u64,
}

impl FileBackend {
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let size = file.metadata()?.len();
        if !size.is_multiple_of(512) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: size {size} is not a multiple of 512 bytes",
                    path.display()
                ),
            ));
        }
        Ok(Self { file, size })
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on a descriptor we own, with plain integer args.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset as i64, len as i64) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl BlockBackend for FileBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn as_file(&self) -> Option<&File> {
        Some(&self.file)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(mode, offset, len) {
            Ok(()) => Ok(()),
            // Not every file system can do this: write real zeroes.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                let zeroes = vec![0u8; len.min(1 << 20) as usize];
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(zeroes.len() as u64) as usize;
                    self.file.write_all_at(&zeroes[..n], offset + done)?;
                    done += n as u64;
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}
