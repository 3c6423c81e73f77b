//! Helpers shared by the integration tests: tool checks, an in-process NBD server over
//! plain block stores, and data patterns.
#![allow(dead_code)]

pub mod daemon;

use std::collections::HashMap;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;

use ebs_blockdev::engine::BlockStore;
use ebs_blockdev::nbd::{Export, ExportProvider, ExportRefusal, NbdServer};

/// Fails the test (not skips) when a peer tool is missing.
pub fn require_tool(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is not installed: run scripts/setup/ebs.sh (as root) to install the test peers"
    );
}

/// Runs a command and returns its output, failing the test with its stderr when it fails.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// qemu-io prints failures but may still exit 0; treat such lines as failures too.
pub fn qemu_io(image_opts: &str, commands: &[&str]) -> String {
    let mut command = Command::new("qemu-io");
    command.arg("--image-opts").arg(image_opts);
    for each in commands {
        command.arg("-c").arg(each);
    }
    let output = run_ok(&mut command);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    for text in [stdout.as_str(), stderr.as_ref()] {
        assert!(
            !text.contains("failed") && !text.contains("error"),
            "qemu-io {commands:?} reported a failure:\n{stdout}\n{stderr}"
        );
    }
    stdout
}

pub struct TestExport {
    pub store: Arc<BlockStore>,
    pub read_only: bool,
    pub revoked: Arc<AtomicBool>,
}

/// Serves fixed export names (`name/token` strings) from block stores.
#[derive(Default)]
pub struct StaticProvider {
    pub exports: HashMap<String, TestExport>,
}

impl ExportProvider for StaticProvider {
    fn open_export(&self, export_name: &str) -> Result<Export, ExportRefusal> {
        let (volume, _) = export_name.split_once('/').unwrap_or((export_name, ""));
        match self.exports.get(export_name) {
            Some(export) => Ok(Export {
                volume_id: volume.to_string(),
                store: Arc::clone(&export.store),
                read_only: export.read_only,
                throttle: None,
                revoked: Arc::clone(&export.revoked),
            }),
            None if self
                .exports
                .keys()
                .any(|name| name.starts_with(&format!("{volume}/"))) =>
            {
                Err(ExportRefusal::NotAuthorized(format!(
                    "wrong token for {volume}"
                )))
            }
            None => Err(ExportRefusal::Unknown(format!("no volume {volume}"))),
        }
    }
}

/// An NBD server on a Unix socket in `directory`, serving `provider`.
pub fn start_unix_server(directory: &Path, provider: StaticProvider) -> PathBuf {
    let socket = directory.join("nbd.sock");
    let listener = UnixListener::bind(&socket).expect("bind test socket");
    let server = NbdServer::new(Arc::new(provider));
    thread::spawn(move || server.serve_unix(listener));
    socket
}

/// A test store of `size` bytes with export name `name` (already including any token).
pub fn provider_with(
    directory: &Path,
    exports: &[(&str, u64, bool)],
) -> (StaticProvider, Vec<Arc<BlockStore>>) {
    let mut provider = StaticProvider::default();
    let mut stores = Vec::new();
    for (index, (name, size, read_only)) in exports.iter().enumerate() {
        let store =
            Arc::new(BlockStore::create(&directory.join(format!("store{index}")), *size).unwrap());
        stores.push(Arc::clone(&store));
        provider.exports.insert(
            name.to_string(),
            TestExport {
                store,
                read_only: *read_only,
                revoked: Arc::new(AtomicBool::new(false)),
            },
        );
    }
    (provider, stores)
}

pub fn qemu_image_opts(socket: &Path, export: &str) -> String {
    format!(
        "driver=nbd,server.type=unix,server.path={},export={export}",
        socket.display()
    )
}

pub fn nbd_uri(socket: &Path, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", socket.display())
}

/// Deterministic pseudo-random bytes (xorshift), different per seed.
pub fn random_bytes(seed: u64, length: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
