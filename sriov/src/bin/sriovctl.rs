//! sriovctl: list SR-IOV PFs and VFs, enable VFs, change per-VF settings and drive the VF
//! pool from the shell (the test host's scenarios use it).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use sriov::vf::{set_num_vfs, VfLinkState, VfRate, VfVlan};
use sriov::{
    MacAddress, NetlinkVfConfigurator, PciAddress, PhysicalFunction, Pool, PoolConfig, Sysfs,
    VfConfigurator, VfSettings,
};

#[derive(Parser)]
#[command(version, about = "SR-IOV physical/virtual functions and the VF pool")]
struct Cli {
    /// Where sysfs is mounted (another root serves tests).
    #[arg(long, default_value = "/sys", global = true)]
    sysfs: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List SR-IOV PFs and their VFs.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Create N VFs on a PF (its interface must be up); 0 removes them.
    Enable {
        /// The PF, by PCI address or interface name.
        pf: String,
        count: u32,
        /// Refused while this pool leases VFs of the PF, unless --force.
        #[arg(long, default_value = sriov::DEFAULT_POOL_DIR)]
        state_dir: PathBuf,
        /// Change the VFs even though instances hold some of them.
        #[arg(long)]
        force: bool,
    },
    /// Change one VF's settings through rtnetlink (like `ip link set PF vf N ...`).
    SetVf(SetVfArgs),
    /// Lease VFs to instances and give them back.
    Pool {
        /// The pool's state directory.
        #[arg(long, default_value = sriov::DEFAULT_POOL_DIR)]
        state_dir: PathBuf,
        /// Only VFs of these PFs (PCI addresses) belong to the pool; default: every PF.
        #[arg(long = "pf")]
        pfs: Vec<PciAddress>,
        #[command(subcommand)]
        command: PoolCommand,
    },
}

#[derive(Args)]
struct SetVfArgs {
    /// The PF, by PCI address or interface name.
    pf: String,
    /// The VF number on the PF.
    vf_index: u32,
    #[arg(long)]
    mac: Option<MacAddress>,
    /// VLAN id the PF tags the VF's traffic with (0 removes it).
    #[arg(long)]
    vlan: Option<u16>,
    #[arg(long, default_value_t = 0, requires = "vlan")]
    qos: u8,
    #[arg(long)]
    spoof_check: Option<OnOff>,
    #[arg(long)]
    trust: Option<OnOff>,
    /// Maximum transmit rate in Mbit/s (0: unlimited).
    #[arg(long)]
    max_rate: Option<u32>,
    /// Minimum transmit rate in Mbit/s (igb supports only 0).
    #[arg(long, default_value_t = 0, requires = "max_rate")]
    min_rate: u32,
    #[arg(long)]
    link_state: Option<LinkStateArg>,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum LinkStateArg {
    Auto,
    Enable,
    Disable,
}

#[derive(Subcommand)]
enum PoolCommand {
    /// Lease a VF: bind it to vfio-pci with the MAC set; prints the lease as JSON.
    Lease {
        #[arg(long)]
        instance: String,
        #[arg(long)]
        mac: MacAddress,
        /// A particular VF instead of any free one.
        #[arg(long)]
        vf: Option<PciAddress>,
        /// The process whose exit ends the lease (e.g. the VMM's, or `$$` for the shell).
        #[arg(long)]
        holder_pid: u32,
    },
    /// Give a leased VF back: reset, MAC cleared, original driver.
    Release {
        #[arg(long)]
        vf: PciAddress,
        #[arg(long)]
        instance: String,
    },
    /// Show every VF of the pool and its lease.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Release the leases whose holder process is gone.
    Reconcile,
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let sysfs = Sysfs::new(&cli.sysfs);
    match cli.command {
        Command::List { json } => list(&sysfs, json),
        Command::Enable {
            pf,
            count,
            state_dir,
            force,
        } => {
            let pf = find_pf(&sysfs, &pf)?;
            if !force && state_dir.exists() {
                refuse_if_leased(&sysfs, &state_dir, &pf)?;
            }
            set_num_vfs(&sysfs, &pf.address, count)?;
            println!("{}: {count} VFs", pf.address);
            Ok(())
        }
        Command::SetVf(args) => set_vf(&sysfs, args),
        Command::Pool {
            state_dir,
            pfs,
            command,
        } => pool(sysfs, state_dir, pfs, command),
    }
}

fn list(sysfs: &Sysfs, json: bool) -> Result<()> {
    let pfs = sysfs.physical_functions()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&pfs)?);
        return Ok(());
    }
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".to_string());
    for pf in pfs {
        println!(
            "PF {} driver {} if {} VFs {}/{}",
            pf.address,
            or_dash(pf.driver),
            or_dash(pf.ifname),
            pf.num_vfs,
            pf.total_vfs
        );
        for vf in pf.vfs {
            println!(
                "  vf {} {} {:04x}:{:04x} driver {} group {} if {}",
                vf.index,
                vf.address,
                vf.vendor_id,
                vf.device_id,
                or_dash(vf.driver),
                or_dash(vf.iommu_group.map(|group| group.to_string())),
                or_dash(vf.ifname)
            );
        }
    }
    Ok(())
}

/// Changing the VF count removes every VF, including those passed through to instances.
fn refuse_if_leased(sysfs: &Sysfs, state_dir: &Path, pf: &PhysicalFunction) -> Result<()> {
    let mut config = PoolConfig::host();
    config.sysfs = sysfs.clone();
    let pool = Pool::open_with(state_dir, config)
        .with_context(|| format!("opening the pool in {}", state_dir.display()))?;
    let leased: Vec<String> = pool
        .status()?
        .into_iter()
        .filter(|entry| entry.pf == pf.address)
        .filter_map(|entry| entry.lease)
        .map(|lease| format!("{} ({})", lease.bdf, lease.instance_id))
        .collect();
    if !leased.is_empty() {
        bail!(
            "VFs of {} are leased in {}: {}; release them first or use --force",
            pf.address,
            state_dir.display(),
            leased.join(", ")
        );
    }
    Ok(())
}

/// A PF named by PCI address or by its interface name.
fn find_pf(sysfs: &Sysfs, name: &str) -> Result<PhysicalFunction> {
    if let Ok(address) = PciAddress::from_str(name) {
        return Ok(sysfs.physical_function(&address)?);
    }
    sysfs
        .physical_functions()?
        .into_iter()
        .find(|pf| pf.ifname.as_deref() == Some(name))
        .with_context(|| format!("no SR-IOV PF with address or interface {name:?}"))
}

fn set_vf(sysfs: &Sysfs, args: SetVfArgs) -> Result<()> {
    let pf = find_pf(sysfs, &args.pf)?;
    let ifname = pf
        .ifname
        .with_context(|| format!("PF {} has no network interface", pf.address))?;
    if args.vf_index >= pf.num_vfs {
        bail!(
            "PF {} has {} VFs; there is no VF {}",
            pf.address,
            pf.num_vfs,
            args.vf_index
        );
    }
    let on = |value: Option<OnOff>| value.map(|value| matches!(value, OnOff::On));
    let settings = VfSettings {
        mac: args.mac,
        vlan: args.vlan.map(|id| VfVlan { id, qos: args.qos }),
        spoof_check: on(args.spoof_check),
        trust: on(args.trust),
        rate: args.max_rate.map(|max_mbps| VfRate {
            min_mbps: args.min_rate,
            max_mbps,
        }),
        link_state: args.link_state.map(|state| match state {
            LinkStateArg::Auto => VfLinkState::Auto,
            LinkStateArg::Enable => VfLinkState::Enable,
            LinkStateArg::Disable => VfLinkState::Disable,
        }),
    };
    if settings == VfSettings::default() {
        bail!("nothing to set: give at least one of --mac, --vlan, --spoof-check, --trust, --max-rate, --link-state");
    }
    NetlinkVfConfigurator::new().apply(&ifname, args.vf_index, &settings)?;
    Ok(())
}

fn pool(
    sysfs: Sysfs,
    state_dir: PathBuf,
    pfs: Vec<PciAddress>,
    command: PoolCommand,
) -> Result<()> {
    let mut config = PoolConfig::host();
    config.sysfs = sysfs;
    if !pfs.is_empty() {
        config.pfs = Some(pfs);
    }
    if let PoolCommand::Lease { holder_pid, .. } = &command {
        config.holder_pid = *holder_pid;
    }
    let pool = Pool::open_with(&state_dir, config)
        .with_context(|| format!("opening the pool in {}", state_dir.display()))?;
    match command {
        PoolCommand::Lease {
            instance, mac, vf, ..
        } => {
            let lease = match vf {
                Some(vf) => pool.lease_vf(&vf, &instance, mac)?,
                None => pool.lease(&instance, mac)?,
            };
            println!("{}", serde_json::to_string_pretty(&lease)?);
        }
        PoolCommand::Release { vf, instance } => {
            let lease = pool
                .status()?
                .into_iter()
                .filter_map(|entry| entry.lease)
                .find(|lease| lease.bdf == vf && lease.instance_id == instance)
                .with_context(|| format!("no lease of {vf} for instance {instance}"))?;
            pool.release(&lease)?;
            println!("released {vf}");
        }
        PoolCommand::Status { json } => {
            let entries = pool.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                for entry in entries {
                    let lease = match (&entry.lease, entry.release_pending) {
                        (Some(_), true) => "release pending".to_string(),
                        (Some(lease), false) => format!(
                            "leased to {} mac {} pid {}",
                            lease.instance_id, lease.mac, lease.holder_pid
                        ),
                        (None, _) => "free".to_string(),
                    };
                    println!(
                        "{} (PF {} vf {}) driver {}: {lease}",
                        entry.bdf,
                        entry.pf,
                        entry.vf_index,
                        entry.driver.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        PoolCommand::Reconcile => {
            for lease in pool.reconcile()? {
                println!("released {} of {}", lease.bdf, lease.instance_id);
            }
        }
    }
    Ok(())
}
