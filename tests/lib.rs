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
    /// The same plus curl, fio, iperf3 and sockperf (larger: give the guest >= 512 MiB).
    pub tools_initramfs: PathBuf,
}

pub fn guest_assets() -> GuestAssets {
    let dir = cache_dir().join("guest");
    let assets = GuestAssets {
        vmlinux: dir.join("vmlinux"),
        bzimage: dir.join("vmlinuz"),
        initramfs: dir.join("initramfs.cpio.gz"),
        tools_initramfs: dir.join("initramfs-tools.cpio.gz"),
    };
    for p in [
        &assets.vmlinux,
        &assets.bzimage,
        &assets.initramfs,
        &assets.tools_initramfs,
    ] {
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

/// Build `package`'s binaries into the calling test's target directory and
/// return the path of binary `name` (tests cannot use CARGO_BIN_EXE_* for
/// other packages' binaries).
pub fn workspace_bin(package: &str, name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", package, "--bins"])
        .current_dir(repo_root())
        .status()
        .unwrap_or_else(|e| panic!("cargo build -p {package}: {e}"));
    assert!(status.success(), "building {package} failed");
    // Test executables run from target/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join(name)
}

/// A running `ebsd` (the block service) for tests, killed on drop.
pub struct Ebsd {
    child: std::process::Child,
    pub api: PathBuf,
    pub data: PathBuf,
    pub port: u16,
    bin: PathBuf,
    ebs: PathBuf,
}

impl Ebsd {
    /// Build ebs-blockdev's binaries into the calling test's target
    /// directory and start `ebsd` with its NBD export on 127.0.0.1:`port`
    /// (0: any free port) and its API on a socket under `dir`.
    pub fn start(dir: &Path, port: u16) -> Ebsd {
        let ebsd = workspace_bin("ebs-blockdev", "ebsd");
        let ebs = ebsd.with_file_name("ebs");
        let port = if port == 0 { free_port() } else { port };
        Self::spawn(ebsd, ebs, dir, port)
    }

    fn spawn(bin: PathBuf, ebs: PathBuf, dir: &Path, port: u16) -> Ebsd {
        std::fs::create_dir_all(dir).expect("ebsd dir");
        let api = dir.join("api.sock");
        let data = dir.join("data");
        let child = Self::run_daemon(&bin, &api, &data, port);
        Ebsd {
            child,
            api,
            data,
            port,
            bin,
            ebs,
        }
    }

    fn run_daemon(bin: &Path, api: &Path, data: &Path, port: u16) -> std::process::Child {
        let _ = std::fs::remove_file(api);
        let child = Command::new(bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(data)
            .arg("--nbd-listen")
            .arg(format!("tcp:127.0.0.1:{port}"))
            .arg("--api-sock")
            .arg(api)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start ebsd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !api.exists() || std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "ebsd did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// kill -9 the daemon and start it again on the same port and data.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::run_daemon(&self.bin, &self.api, &self.data, self.port);
    }

    /// Run the `ebs` CLI against this daemon; returns its JSON output.
    pub fn ebs(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(&self.ebs)
            .args(args)
            .env("EBS_API_SOCK", &self.api)
            .output()
            .expect("run ebs");
        assert!(
            out.status.success(),
            "ebs {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("ebs prints JSON")
    }

    /// Create a gp3 volume of `gib` and attach it; (volume id, export name).
    pub fn attached_volume(&self, gib: u32) -> (String, String) {
        let vol = self.ebs(&[
            "create-volume",
            "--size",
            &gib.to_string(),
            "--volume-type",
            "gp3",
        ]);
        let id = vol["VolumeId"].as_str().expect("VolumeId").to_string();
        let att = self.ebs(&[
            "attach-volume",
            "--volume-id",
            &id,
            "--instance-id",
            "i-0123456789abcdef0",
            "--device",
            "/dev/vda",
        ]);
        let export = att["NbdExport"]["ExportName"]
            .as_str()
            .expect("ExportName")
            .to_string();
        (id, export)
    }
}

impl Drop for Ebsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
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
