//! VM snapshots: save a paused VM to a snapshot file (vCPU, KVM and device
//! state, plus the configuration it was built from) and a memory file, and
//! build a VM from them in a new process. This is the mechanism behind an
//! EC2-style hibernation (stop --hibernate, then start). See
//! docs/snapshot.md for the format and what is saved.

pub mod cpu;
pub mod format;
pub mod matching;
pub mod memory;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::vm::{Vm, VmError};
use devices::state::{LegacyState, PciSlotState, StateError};
pub use matching::{DriveOverride, NetOverride, RestoreOverrides};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the VM is running: pause it first (PATCH /vm {{\"state\": \"Paused\"}})")]
    NotPaused,
    #[error("snapshots are not supported while VFIO devices (SR-IOV VFs) are attached: a passed-through device's state cannot be saved; hibernation needs emulated devices only")]
    Vfio,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: snapshot format version {found}, this vmm reads version {supported}")]
    Version {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path}: truncated snapshot: the header announces {expected} bytes of state, the file has {found}")]
    Truncated {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error(
        "{path}: corrupt snapshot: crc32 {found:08x} does not match the header's {expected:08x}"
    )]
    Checksum {
        path: PathBuf,
        expected: u32,
        found: u32,
    },
    #[error("{path}: invalid snapshot state at {field}: {reason}")]
    Parse {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("configuration mismatch: {0}")]
    Mismatch(String),
    #[error("invalid configuration in the snapshot: {0}")]
    Config(String),
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error("KVM {op} failed: {source}")]
    Kvm {
        op: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("device state: {0}")]
    Device(#[from] StateError),
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// The snapshot file's body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub vmm_version: String,
    /// Seconds since the epoch when the snapshot was taken.
    pub created_unix: u64,
    /// The configuration the VM was built from.
    pub config: VmConfig,
    pub memory: memory::MemoryInfo,
    pub vm: cpu::VmState,
    pub vcpus: Vec<cpu::VcpuState>,
    pub legacy: LegacyState,
    pub pci: Vec<PciSlotState>,
}

/// What `PUT /snapshot/create` reports.
#[derive(Clone, Debug, Serialize)]
pub struct CreateStats {
    pub snapshot_bytes: u64,
    /// The memory file's length (guest memory size).
    pub mem_file_bytes: u64,
    /// Bytes actually written (pages that are not all zero).
    pub mem_data_bytes: u64,
    pub duration_ms: f64,
}

/// What a restore reports (logged, and used by the benchmark).
#[derive(Clone, Debug, Serialize)]
pub struct RestoreStats {
    /// Data in the memory file (mapped, faulted in as the guest runs).
    pub mem_data_bytes: u64,
    pub duration_ms: f64,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Save the paused `vm`, built from `cfg`, to `snapshot_path` and
/// `mem_path`. Both files are written under temporary names and renamed.
pub fn create(
    vm: &Vm,
    cfg: &VmConfig,
    snapshot_path: &Path,
    mem_path: &Path,
) -> Result<CreateStats, SnapshotError> {
    let t0 = Instant::now();
    if !cfg.vfs.is_empty() {
        return Err(SnapshotError::Vfio);
    }
    if !vm.is_paused() {
        return Err(SnapshotError::NotPaused);
    }
    let msr_list = vm.msr_list();
    let vcpus = vm
        .parked_vcpus()
        .iter()
        .enumerate()
        .map(|(id, fd)| cpu::save_vcpu(id as u8, fd, msr_list))
        .collect::<Result<Vec<_>, _>>()?;
    let pci = vm.pci_state().map_err(|e| match e {
        StateError::Unsupported(_) => SnapshotError::Vfio,
        other => SnapshotError::Device(other),
    })?;
    let state = Snapshot {
        vmm_version: env!("CARGO_PKG_VERSION").into(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        config: cfg.clone(),
        memory: memory::layout(vm.memory()),
        vm: cpu::save_vm(vm.vm_fd())?,
        vcpus,
        legacy: vm.legacy_state(),
        pci,
    };
    let (info, mem_stats) = memory::save(vm.memory(), mem_path)?;
    debug_assert_eq!(info, state.memory);
    let body = serde_json::to_vec(&state).map_err(|e| SnapshotError::Invalid {
        what: "snapshot".into(),
        reason: e.to_string(),
    })?;
    format::write(snapshot_path, &body)?;
    let stats = CreateStats {
        snapshot_bytes: (format::header(&body).len() + body.len()) as u64,
        mem_file_bytes: info.file_size,
        mem_data_bytes: mem_stats.data_bytes,
        duration_ms: ms(t0.elapsed()),
    };
    log::info!(
        "snapshot {} ({} bytes) and {} ({} of {} bytes written) in {} ms",
        snapshot_path.display(),
        stats.snapshot_bytes,
        mem_path.display(),
        stats.mem_data_bytes,
        stats.mem_file_bytes,
        stats.duration_ms
    );
    Ok(stats)
}

/// Read and check a snapshot file.
pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
    let body = format::read(path)?;
    crate::config::from_json_slice::<Snapshot>(&body, "snapshot").map_err(|e| {
        SnapshotError::Parse {
            path: path.to_path_buf(),
            field: e.field,
            reason: e.reason,
        }
    })
}

/// Build a VM from a snapshot, paused: its vCPUs hold the saved state and
/// its devices wait for [`Vm::resume`]. Returns the VM and the
/// configuration it was built from (the snapshot's with `overrides`).
pub fn restore(
    snap: &Snapshot,
    mem_path: &Path,
    overrides: &RestoreOverrides,
    serial_out: Box<dyn Write + Send>,
    start: Instant,
) -> Result<(Vm, VmConfig, RestoreStats), SnapshotError> {
    let t0 = Instant::now();
    let cfg = overrides.apply(&snap.config)?;
    let vcpus = usize::from(cfg.machine_config.vcpu_count);
    if snap.vcpus.len() != vcpus {
        return Err(SnapshotError::Mismatch(format!(
            "{} vCPU states in the snapshot for a {vcpus}-vCPU machine",
            snap.vcpus.len()
        )));
    }
    let expected = u64::from(cfg.machine_config.mem_size_mib) << 20;
    let file_len = std::fs::metadata(mem_path)
        .map_err(|source| SnapshotError::Io {
            path: mem_path.to_path_buf(),
            source,
        })?
        .len();
    if file_len != expected || snap.memory.file_size != expected {
        return Err(SnapshotError::Mismatch(format!(
            "guest memory is {} MiB but {} holds {file_len} bytes (the snapshot expects {})",
            cfg.machine_config.mem_size_mib,
            mem_path.display(),
            snap.memory.file_size
        )));
    }
    let mem = memory::map(&snap.memory, expected, mem_path)?;
    let mem_data_bytes = memory::allocated_bytes(mem_path);
    let mut vm = Vm::build_machine(&cfg, serial_out, start, Some(mem))?;
    // KVM's VM-wide state before the vCPUs (their LAPICs deliver into it).
    cpu::restore_vm(vm.vm_fd(), &snap.vm)?;
    vm.restore_legacy_state(&snap.legacy)?;
    // PCI state re-creates MSI routes and irqfds from the MSI-X tables and
    // moves BARs the guest had placed elsewhere.
    vm.restore_pci_state(&snap.pci)?;
    for (state, fd) in snap.vcpus.iter().zip(vm.parked_vcpus()) {
        cpu::restore_vcpu(fd, state)?;
    }
    vm.mark_restored();
    let stats = RestoreStats {
        mem_data_bytes,
        duration_ms: ms(t0.elapsed()),
    };
    log::info!(
        "restored {} vCPU(s), {} MiB ({} bytes of data mapped) in {} ms",
        vcpus,
        cfg.machine_config.mem_size_mib,
        stats.mem_data_bytes,
        stats.duration_ms
    );
    Ok((vm, cfg, stats))
}
