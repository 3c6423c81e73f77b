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

/// Run `command` (a shell command line, cwd = the repository) inside the
/// test host.
pub fn testhost_run(command: &str, timeout: Duration) -> TesthostOutput {
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
    }
}
