//! Enhanced networking at launch: whether an instance's primary ENI is an SR-IOV VF
//! leased from the host's VF pool ("enhanced", as EC2's ENA) or virtio-net on a tap
//! ("emulated"), and the host-side services a VF instance needs because its traffic
//! never passes through the VMM: `imdsd` on the PFs for the metadata service, a host
//! route to the instance's address over its PF, and a DHCP responder (`vf_dhcp`).
//!
//! The VF itself is leased by the VMM (`vmm --vf pool=DIR,mac=MAC,instance=ID`), so
//! the lease lives exactly as long as the VMM: a crash, a reboot or a recovery gives
//! it back (the pool releases leases of dead holders whenever it is opened, which the
//! supervisor does when an instance stops) and the next VMM takes one again with the
//! same MAC; the pool refuses a second lease of a MAC, so there is never a double lease.
//! What the front door decides is whether there is a VF for the instance at launch,
//! under the state directory's lock, counting the instances that are entitled to one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::paths::{io_error, StatePaths};
use super::services::{detach, sibling};
use super::LaunchState;
use crate::error::{Ec2Error, ErrorCode};
use crate::instances::{InstanceRecord, InstanceStateName};

/// The VF pool's directory for this host's instances; overrides `STATE/vf-pool`.
pub const VF_POOL_ENV: &str = "NITRO_VF_POOL";
/// The address the metadata service answers on.
pub const IMDS_ADDRESS: &str = "169.254.169.254";

/// What an instance's primary ENI is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EniKind {
    /// virtio-net on a tap on the bridge; DHCP and IMDS from the VMM.
    #[default]
    Emulated,
    /// A VF from the pool passed through to the guest.
    Enhanced,
}

/// What the request asked for: `--network-interfaces DeviceIndex=0,InterfaceType=...`
/// with EC2's `interface` (or none: the launcher decides) or this host's extensions
/// `enhanced` (a VF, or fail) and `emulated` (never a VF).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InterfaceChoice {
    #[default]
    Auto,
    Emulated,
    Enhanced,
}

impl InterfaceChoice {
    pub fn parse(interface_type: Option<&str>) -> Result<InterfaceChoice, Ec2Error> {
        match interface_type {
            None | Some("interface") => Ok(InterfaceChoice::Auto),
            Some("emulated") => Ok(InterfaceChoice::Emulated),
            Some("enhanced") => Ok(InterfaceChoice::Enhanced),
            Some(other) => Err(Ec2Error::invalid_value(format!(
                "Value ({other}) for parameter InterfaceType is invalid. Valid values: \
                 interface, enhanced, emulated"
            ))),
        }
    }
}

/// Everything the choice depends on.
#[derive(Debug, Clone)]
pub struct EnhancedInputs<'a> {
    pub image_id: &'a str,
    /// The image's `EnaSupport`.
    pub image_ena: bool,
    /// The image's `SriovNetSupport` (`simple`: the Intel 82599 VF interface).
    pub image_sriov: Option<&'a str>,
    pub instance_type: &'a str,
    pub type_supports: bool,
    /// `--hibernation-options Configured=true`: the VMM cannot snapshot a VF.
    pub hibernation: bool,
    /// The pool, when one is configured.
    pub pool: Option<&'a Path>,
    /// Free VFs for this launch (pool VFs nobody holds, minus those promised to
    /// instances whose VMM has not leased yet); `Err` when the pool cannot be read.
    pub free_vfs: Result<usize, String>,
}

/// EC2's rules, as close as this host allows: enhanced networking needs an image with
/// ENA (or SriovNetSupport=simple), an instance type that supports it, and a VF. Asked
/// for explicitly, a missing piece is an error (no VF free: InsufficientInstanceCapacity,
/// as EC2 says when a host has no room); left to the launcher, the instance falls back
/// to an emulated ENI, so images without ENA keep booting and a host without a pool
/// works as before.
pub fn decide(choice: InterfaceChoice, inputs: &EnhancedInputs) -> Result<EniKind, Ec2Error> {
    let image_ok = inputs.image_ena || inputs.image_sriov == Some("simple");
    match choice {
        InterfaceChoice::Emulated => Ok(EniKind::Emulated),
        InterfaceChoice::Auto => {
            let free = matches!(inputs.free_vfs, Ok(n) if n > 0);
            if let Err(e) = &inputs.free_vfs {
                if inputs.pool.is_some() {
                    log::warn!("VF pool unreadable ({e}); using an emulated ENI");
                }
            }
            Ok(
                if image_ok
                    && inputs.type_supports
                    && !inputs.hibernation
                    && inputs.pool.is_some()
                    && free
                {
                    EniKind::Enhanced
                } else {
                    EniKind::Emulated
                },
            )
        }
        InterfaceChoice::Enhanced => {
            if !image_ok {
                return Err(Ec2Error::combination(format!(
                    "Enhanced networking is not enabled for image {}: register it with \
                     EnaSupport=true or SriovNetSupport=simple",
                    inputs.image_id
                )));
            }
            if !inputs.type_supports {
                return Err(Ec2Error::combination(format!(
                    "Enhanced networking is not supported for the '{}' instance type",
                    inputs.instance_type
                )));
            }
            if inputs.hibernation {
                return Err(Ec2Error::new(
                    ErrorCode::UnsupportedHibernationConfiguration,
                    "Hibernation is not supported with an enhanced (VF) network interface \
                     on this host",
                ));
            }
            let Some(pool) = inputs.pool else {
                return Err(Ec2Error::new(
                    ErrorCode::Unsupported,
                    format!(
                        "The requested configuration is currently not supported: no VF pool \
                         is configured for enhanced networking (set {VF_POOL_ENV} or write \
                         the pool directory to STATE/vf-pool)"
                    ),
                ));
            };
            match &inputs.free_vfs {
                Ok(n) if *n > 0 => Ok(EniKind::Enhanced),
                Ok(_) => Err(insufficient(inputs.instance_type, pool, "no free VF")),
                Err(e) => Err(insufficient(inputs.instance_type, pool, e)),
            }
        }
    }
}

fn insufficient(instance_type: &str, pool: &Path, why: &str) -> Ec2Error {
    Ec2Error::new(
        ErrorCode::InsufficientInstanceCapacity,
        format!(
            "We currently do not have sufficient {instance_type} capacity with enhanced \
             networking ({why} in VF pool {}). You can retry later, or launch with an \
             emulated interface (InterfaceType=emulated).",
            pool.display()
        ),
    )
}

/// StartInstances of a stopped instance with an enhanced ENI: its VMM will lease a VF
/// again, so refuse before anything starts when none is free (as EC2 refuses a start
/// without capacity) rather than let the VMM fail and recovery give up.
pub fn check_start_capacity(
    free: Result<usize, String>,
    instance_type: &str,
    pool: &Path,
) -> Result<(), Ec2Error> {
    match free {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err(insufficient(instance_type, pool, "no free VF")),
        Err(e) => Err(insufficient(instance_type, pool, &e)),
    }
}

/// The pool this host's instances lease from: `NITRO_VF_POOL` (empty: none), else the
/// first line of `STATE/vf-pool`, else none (no enhanced networking).
pub fn configured_pool(paths: &StatePaths) -> Option<PathBuf> {
    if let Some(value) = std::env::var_os(VF_POOL_ENV) {
        return (!value.is_empty()).then(|| PathBuf::from(value));
    }
    let text = std::fs::read_to_string(paths.root().join("vf-pool")).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| PathBuf::from(line))
}

/// Whether the instance is entitled to a VF now (it is starting or running).
fn holds_vf(record: &InstanceRecord) -> bool {
    matches!(
        record.state(),
        InstanceStateName::Pending | InstanceStateName::Running
    ) && LaunchState::of(record).is_ok_and(|s| s.eni == EniKind::Enhanced)
}

/// Free VFs in the pool at `dir` for one more instance, given the instance records
/// (call with the state directory's lock held): VFs without a lease, minus the enhanced
/// instances starting or running whose VMM holds no lease yet.
pub fn free_vfs(dir: &Path, records: &[InstanceRecord]) -> Result<usize, String> {
    let pool = sriov::Pool::open(dir).map_err(|e| e.to_string())?;
    let status = pool.status().map_err(|e| e.to_string())?;
    let unleased = status
        .iter()
        .filter(|entry| entry.lease.is_none() && !entry.release_pending)
        .count();
    let leased_by: Vec<&str> = status
        .iter()
        .filter_map(|entry| entry.lease.as_ref().map(|l| l.instance_id.as_str()))
        .collect();
    Ok(count_free(unleased, &leased_by, records))
}

fn count_free(unleased: usize, leased_by: &[&str], records: &[InstanceRecord]) -> usize {
    let promised = records
        .iter()
        .filter(|r| holds_vf(r) && !leased_by.contains(&r.instance.instance_id.as_str()))
        .count();
    unleased.saturating_sub(promised)
}

/// Give back leases of VMMs that are gone (a crash or kill -9 skips the VMM's own
/// release); called when an instance stops or terminates.
pub fn reconcile_pool(dir: &Path) {
    match sriov::Pool::open(dir).and_then(|pool| pool.reconcile()) {
        Ok(released) if !released.is_empty() => {
            log::info!("released {} abandoned VF lease(s)", released.len())
        }
        Ok(_) => {}
        Err(e) => log::warn!("VF pool {}: {e}", dir.display()),
    }
}

/// The interface name of the PF whose VF `instance_id` holds, if it holds one.
pub fn leased_pf(dir: &Path, instance_id: &str) -> Option<String> {
    let pool = sriov::Pool::open(dir).ok()?;
    let entry = pool.status().ok()?.into_iter().find(|e| {
        e.lease
            .as_ref()
            .is_some_and(|l| l.instance_id == instance_id)
    })?;
    sriov::Sysfs::host()
        .physical_function(&entry.pf)
        .ok()?
        .ifname
}

fn ip(args: &[&str]) -> Result<(), Ec2Error> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Ec2Error::internal(format!("ip {}: {e}", args.join(" "))))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Ec2Error::internal(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The host reaches the instance over its PF (more specific than the bridge's subnet
/// route), so imdsd's answers and the gateway's traffic go back through the NIC.
pub fn add_route(address: &str, pf: &str) -> Result<(), Ec2Error> {
    ip(&["route", "replace", &format!("{address}/32"), "dev", pf])
}

pub fn delete_route(address: &str) {
    let _ = ip(&["route", "del", &format!("{address}/32")]);
}

/// The metadata service for VF instances: one `imdsd` per state directory on
/// 169.254.169.254:80, which every PF owns, serving every enhanced instance that is
/// starting or running, told apart by private IP. Started on demand and left running
/// (as ebsd); its configuration is rewritten whenever that set changes and imdsd
/// reloads it within a second.
pub struct ImdsService;

impl ImdsService {
    fn dir(paths: &StatePaths) -> PathBuf {
        paths.root().join("imdsd")
    }

    pub fn config_path(paths: &StatePaths) -> PathBuf {
        Self::dir(paths).join("instances.json")
    }

    /// Rewrite the configuration from the records (call with the state lock held).
    pub fn write_config(paths: &StatePaths, records: &[InstanceRecord]) -> Result<(), Ec2Error> {
        let mut instances = Vec::new();
        for record in records.iter().filter(|r| holds_vf(r)) {
            let state = LaunchState::of(record)?;
            let mut entry = super::supervisor::metadata_record(record, &state);
            entry["source_addresses"] = serde_json::json!([state.ip]);
            instances.push(entry);
        }
        let dir = Self::dir(paths);
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let path = Self::config_path(paths);
        let tmp = dir.join("instances.json.tmp");
        let text = serde_json::to_vec_pretty(&serde_json::json!({ "instances": instances }))
            .map_err(|e| Ec2Error::internal(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(|e| io_error(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))
    }

    /// Make sure imdsd runs and the PFs own the metadata address.
    pub fn ensure(paths: &StatePaths) -> Result<(), Ec2Error> {
        for pf in sriov::Sysfs::host()
            .physical_functions()
            .map_err(|e| Ec2Error::internal(format!("SR-IOV functions: {e}")))?
        {
            if let (Some(name), false) = (&pf.ifname, pf.vfs.is_empty()) {
                ip(&[
                    "addr",
                    "replace",
                    &format!("{IMDS_ADDRESS}/32"),
                    "dev",
                    name,
                ])?;
            }
        }
        let dir = Self::dir(paths);
        let pid_file = dir.join("imdsd.pid");
        let running = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains("imdsd"))
            });
        if running.is_some() {
            return Ok(());
        }
        let log_path = dir.join("imdsd.log");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_error(&log_path, e))?;
        let err_log = log.try_clone().map_err(|e| io_error(&log_path, e))?;
        let mut command = Command::new(sibling("imdsd")?);
        command
            .arg("--config")
            .arg(Self::config_path(paths))
            .arg("--listen")
            .arg(format!("{IMDS_ADDRESS}:80"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log);
        detach(&mut command);
        let child = command
            .spawn()
            .map_err(|e| Ec2Error::internal(format!("starting imdsd: {e}")))?;
        std::fs::write(&pid_file, child.id().to_string()).map_err(|e| io_error(&pid_file, e))?;
        // Up once it accepts connections on the metadata address.
        let deadline = Instant::now() + Duration::from_secs(10);
        let address = std::net::SocketAddr::from(([169, 254, 169, 254], 80));
        while std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err(Ec2Error::internal(format!(
                    "imdsd did not come up (see {})",
                    log_path.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        log::info!("started imdsd for {}", paths.root().display());
        Ok(())
    }
}

#[cfg(test)]
#[path = "enhanced_tests.rs"]
mod tests;
