//! Harness for the test-host tier: run a command inside the test host
//! (QEMU 10 under TCG with nested KVM, see docs/test-host.md) and collect
//! its output and exit status, and locate the guest assets.
//!
//! Missing assets are a test failure with the command that builds them,
//! never a silent skip: `.ci/run` builds them before the tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The repository's top directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

fn cache_dir() -> PathBuf {
    std::env::var_os("NITRO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache"))
}

/// The guest kernel and initramfs built by `scripts/guest-assets.sh`.
pub struct GuestAssets {
    /// ELF kernel (PVH entry).
    pub vmlinux: PathBuf,
    /// The same kernel as Debian ships it (bzImage).
    pub bzimage: PathBuf,
    pub initramfs: PathBuf,
}

pub fn guest_assets() -> GuestAssets {
    let dir = cache_dir().join("guest");
    let assets = GuestAssets {
        vmlinux: dir.join("vmlinux"),
        bzimage: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio.gz"),
    };
    for p in [&assets.vmlinux, &assets.bzimage, &assets.initramfs] {
        assert!(
            p.is_file(),
            "guest asset {} is missing: run scripts/guest-assets.sh (or scripts/test.sh)",
            p.display()
        );
    }
    assets
}

/// What a command inside the test host produced.
#[derive(Debug)]
pub struct TesthostOutput {
    /// The command's exit status (124: timeout, 125: the test host failed).
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Test-host runs each take a whole core: one at a time per test process.
static TESTHOST_SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Run `command` (a shell command line, cwd = the repository) inside the
/// test host.
pub fn testhost_run(command: &str, timeout: Duration) -> TesthostOutput {
    let _one_at_a_time = TESTHOST_SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let script = repo_root().join("scripts/testhost.sh");
    assert!(script.is_file(), "{} is missing", script.display());
    let start = Instant::now();
    let out = Command::new(&script)
        .args([
            "run",
            "--timeout",
            &timeout.as_secs().to_string(),
            "--",
            "sh",
            "-c",
            command,
        ])
        .current_dir(repo_root())
        .output()
        .expect("cannot run scripts/testhost.sh");
    TesthostOutput {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// Value after `key ` on the first line that starts with `key`.
pub fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(key))
        .map(str::trim)
}

/// Base64 (standard alphabet, padded), for `vmm.run=` guest snippets.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Quote for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_and_quote() {
        let t = "noise\r\nVMM-GUEST-CPUS 2\r\nVMM-GUEST-MEMTOTAL 200000\n";
        assert_eq!(field(t, "VMM-GUEST-CPUS"), Some("2"));
        assert_eq!(field(t, "VMM-GUEST-MEMTOTAL"), Some("200000"));
        assert_eq!(field(t, "MISSING"), None);
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b"hi!"), "aGkh");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
