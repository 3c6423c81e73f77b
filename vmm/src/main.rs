//! `vmm` command line. Exit codes: 0 when the guest rebooted or powered off,
//! 128+N when stopped by signal N, 1 on a vCPU fault or runtime error,
//! 2 on bad configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;

use vmm::arch::smbios::SmbiosConfig;
use vmm::config::{BootSource, DriveConfig, MachineConfig, NetConfig, SerialConfig, VmConfig};
use vmm::runtime::{run, RunOptions, RuntimeError};
use vmm::vcpu::ExitReason;

#[derive(Parser, Debug)]
#[command(
    name = "vmm",
    version,
    about = "Boot a Linux guest on KVM, one process per guest"
)]
#[command(group = clap::ArgGroup::new("source").args(["kernel", "restore"]).multiple(false))]
struct Cli {
    /// Guest kernel: ELF vmlinux (PVH entry when present) or bzImage.
    #[arg(long, conflicts_with = "config")]
    kernel: Option<PathBuf>,
    /// Restore the VM saved in this snapshot file (PUT /snapshot/create)
    /// instead of booting a kernel; device flags, when given, must name
    /// the snapshot's devices and may only move their backends.
    #[arg(long, requires = "restore_mem", conflicts_with = "config")]
    restore: Option<PathBuf>,
    /// The memory file that goes with --restore.
    #[arg(long = "restore-mem", requires = "restore")]
    restore_mem: Option<PathBuf>,
    /// Leave the restored VM paused (resume with PATCH /vm).
    #[arg(long = "restore-paused", requires = "restore")]
    restore_paused: bool,
    /// Initial ramdisk.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, requires = "kernel")]
    cmdline: Option<String>,
    /// Number of vCPUs (1-32).
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long = "mem-mib", default_value_t = 128)]
    mem_mib: u32,
    /// Write the guest console to FILE instead of stdout.
    #[arg(long)]
    serial: Option<PathBuf>,
    /// SMBIOS system UUID (e.g. ec2xxxxx-... to look like EC2 to cloud-init).
    #[arg(long)]
    smbios_uuid: Option<String>,
    /// SMBIOS system serial number.
    #[arg(long)]
    smbios_serial: Option<String>,
    /// SMBIOS system manufacturer.
    #[arg(long)]
    smbios_manufacturer: Option<String>,
    /// A virtio-blk drive: id=ID,path=FILE[,ro=on][,serial=S][,queues=N]
    /// (repeatable).
    #[arg(long = "drive", requires = "source")]
    drives: Vec<String>,
    /// A virtio-net interface on a tap: tap=NAME[,mac=MAC][,id=ID]
    /// (repeatable).
    #[arg(long = "net", requires = "source")]
    nets: Vec<String>,
    /// Instance record (JSON, imds crate format) for the metadata service
    /// at 169.254.169.254 on the first --net interface.
    #[arg(long, requires = "kernel")]
    imds: Option<PathBuf>,
    /// Pass through an SR-IOV VF: its address dddd:bb:ss.f (bound to
    /// vfio-pci), or pool=DIR,mac=MAC[,instance=ID] to lease one from a VF
    /// pool for the VM's lifetime (repeatable).
    #[arg(long = "vf", requires = "kernel")]
    vfs: Vec<String>,
    /// Whole VM configuration as JSON (Firecracker-style).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve the REST API on this Unix socket.
    #[arg(long = "api-sock")]
    api_sock: Option<PathBuf>,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
}

fn config_from_flags(cli: &Cli) -> anyhow::Result<Option<VmConfig>> {
    if let Some(path) = &cli.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        return Ok(Some(VmConfig::from_json(&text)?));
    }
    let Some(kernel) = &cli.kernel else {
        return Ok(None);
    };
    let mut smbios = SmbiosConfig {
        uuid: cli.smbios_uuid.clone(),
        serial: cli.smbios_serial.clone(),
        ..Default::default()
    };
    if let Some(m) = &cli.smbios_manufacturer {
        smbios.manufacturer = m.clone();
    }
    Ok(Some(VmConfig {
        boot_source: BootSource {
            kernel_image_path: kernel.clone(),
            initrd_path: cli.initrd.clone(),
            boot_args: cli.cmdline.clone(),
        },
        machine_config: MachineConfig {
            vcpu_count: cli.vcpus,
            mem_size_mib: cli.mem_mib,
            smt: false,
            smbios,
        },
        serial: SerialConfig {
            output_path: cli.serial.clone(),
        },
        drives: cli
            .drives
            .iter()
            .map(|d| DriveConfig::from_cli(d))
            .collect::<Result<_, _>>()?,
        net: cli
            .nets
            .iter()
            .enumerate()
            .map(|(i, n)| NetConfig::from_cli(n, i))
            .collect::<Result<_, _>>()?,
        imds: match &cli.imds {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read instance record {}", path.display()))?;
                Some(
                    serde_json::from_str(&text)
                        .with_context(|| format!("{}: not JSON", path.display()))?,
                )
            }
            None => None,
        },
        vfs: cli
            .vfs
            .iter()
            .enumerate()
            .map(|(i, v)| {
                vmm::config::VfConfig::from_cli(v).map(|mut vf| {
                    if vf.vf_id.is_empty() {
                        vf.vf_id = format!("vf{i}");
                    }
                    vf
                })
            })
            .collect::<Result<_, _>>()?,
    }))
}

/// The restore request of `--restore`, with the device flags to check
/// against the snapshot and the machine shape when given explicitly.
fn restore_request(
    cli: &Cli,
    matches: &clap::ArgMatches,
) -> anyhow::Result<Option<vmm::runtime::RestoreRequest>> {
    let (Some(snapshot_path), Some(mem_file_path)) = (&cli.restore, &cli.restore_mem) else {
        return Ok(None);
    };
    let explicit =
        |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    Ok(Some(vmm::runtime::RestoreRequest {
        snapshot_path: snapshot_path.clone(),
        mem_file_path: mem_file_path.clone(),
        overrides: vmm::snapshot::RestoreOverrides {
            serial_output: cli.serial.clone(),
            vcpu_count: explicit("vcpus").then_some(cli.vcpus),
            mem_size_mib: explicit("mem_mib").then_some(cli.mem_mib),
            ..Default::default()
        },
        drives: cli
            .drives
            .iter()
            .map(|d| DriveConfig::from_cli(d))
            .collect::<Result<_, _>>()?,
        net: cli
            .nets
            .iter()
            .enumerate()
            .map(|(i, n)| NetConfig::from_cli(n, i))
            .collect::<Result<_, _>>()?,
        resume: !cli.restore_paused,
    }))
}

fn main() -> ExitCode {
    let start = Instant::now();
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(&cli.log_level))
        .format_timestamp_micros()
        .init();
    match real_main(cli, &matches, start) {
        Ok(reason) => {
            match &reason {
                ExitReason::Fault(msg) => log::error!("VM stopped on a fault: {msg}"),
                other => log::info!("VM stopped: {other:?}"),
            }
            ExitCode::from(reason.exit_code() as u8)
        }
        Err(e) => {
            let code = match e.downcast_ref::<RuntimeError>() {
                Some(RuntimeError::Config(_)) => 2,
                Some(RuntimeError::Snapshot(
                    vmm::snapshot::SnapshotError::Mismatch(_)
                    | vmm::snapshot::SnapshotError::Config(_),
                )) => 2,
                Some(RuntimeError::Vm(vmm::vm::VmError::TooManyVcpus { .. })) => 2,
                _ if e.downcast_ref::<vmm::config::ConfigError>().is_some() => 2,
                _ => 1,
            };
            eprintln!("vmm: error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn real_main(cli: Cli, matches: &clap::ArgMatches, start: Instant) -> anyhow::Result<ExitReason> {
    let restore = restore_request(&cli, matches)?;
    let config = if restore.is_some() {
        None
    } else {
        config_from_flags(&cli)?
    };
    if let Some(cfg) = &config {
        cfg.validate()?;
    } else if cli.api_sock.is_none() && restore.is_none() {
        return Err(vmm::config::ConfigError::new(
            "arguments",
            "nothing to run: give --kernel, --config, --restore or --api-sock (see --help)",
        )
        .into());
    }
    let reason = run(RunOptions {
        config,
        api_sock: cli.api_sock.clone(),
        restore,
        start,
    })?;
    Ok(reason)
}
