//! One supervisor process per running instance (`ec2 __supervise STATE ID`): it
//! prepares the instance's tap and metadata record, runs `vmm`, and acts on how it
//! ended, reading the record the CLI may have changed meanwhile:
//!
//! | record state          | VMM ended by                  | supervisor does            |
//! |-----------------------|-------------------------------|----------------------------|
//! | stopping              | anything                      | finish the stop            |
//! | shutting-down         | anything                      | finish the termination     |
//! | pending/running       | guest reboot                  | start the VMM again        |
//! | pending/running       | guest power-off               | shutdown behaviour         |
//! | pending/running       | crash, kill -9, fault         | auto-recover: start again  |
//!
//! Auto-recovery gives up after `MAX_RECOVERIES` crashes in `RECOVERY_WINDOW`, and
//! the instance stops with `Server.InternalError` (EC2's recovery also gives up).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use super::enhanced::{self, EniKind, ImdsService};
use super::paths::{io_error, StatePaths};
use super::services::{detach, sibling, BlockService};
use super::{network, qos, vf_dhcp, LaunchState, Launcher};
use crate::cpu_credits::SystemClock;
use crate::error::Ec2Error;
use crate::instances::{InstanceRecord, InstanceStateName, InstanceStore};

const MAX_RECOVERIES: usize = 3;
const RECOVERY_WINDOW: Duration = Duration::from_secs(600);
/// A crashed VMM stays down this long before recovery, so the system status check
/// reports it (EC2 recovers after the check has failed, too).
const RECOVERY_DELAY: Duration = Duration::from_secs(3);

/// Start the supervisor of `instance_id`, detached from the caller.
pub fn spawn(paths: &StatePaths, instance_id: &str) -> Result<(), Ec2Error> {
    let run = paths.run_dir(instance_id);
    std::fs::create_dir_all(&run).map_err(|e| io_error(&run, e))?;
    let log_path = run.join("supervisor.log");
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| io_error(&log_path, e))?;
    let exe =
        std::env::current_exe().map_err(|e| Ec2Error::internal(format!("own executable: {e}")))?;
    let mut command = Command::new(exe);
    command
        .arg("--state-dir")
        .arg(paths.root())
        .arg("__supervise")
        .arg(instance_id)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| io_error(&log_path, e))?)
        .stderr(log);
    detach(&mut command);
    command
        .spawn()
        .map_err(|e| Ec2Error::internal(format!("starting the supervisor: {e}")))?;
    Ok(())
}

/// How a VMM run ended, from its exit status and the last line of its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmEnd {
    GuestReset,
    GuestPowerOff,
    /// Asked to stop (SIGTERM from a stop/terminate).
    Stopped,
    Crashed,
}

pub fn classify(status: ExitStatus, log_tail: &str) -> VmmEnd {
    use std::os::unix::process::ExitStatusExt;
    if status.signal().is_some() {
        return VmmEnd::Crashed; // killed outright (kill -9, OOM): the VMM never said why
    }
    match status.code() {
        Some(0) if log_tail.contains("VM stopped: GuestShutdown") => VmmEnd::GuestPowerOff,
        Some(0) => VmmEnd::GuestReset,
        Some(code) if code >= 128 => VmmEnd::Stopped,
        _ => VmmEnd::Crashed,
    }
}

fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    text
}

/// The supervisor's main loop (runs until the instance is stopped or terminated).
pub fn supervise(paths: &StatePaths, instance_id: &str) -> Result<(), Ec2Error> {
    // Opened once: the instance store, the block service and the kernels' store
    // serve every VMM this supervisor starts.
    let launcher = Launcher::open(paths.clone(), crate::ids::LOCAL_ACCOUNT_ID)?;
    let (store, ebs) = (launcher.instances(), launcher.ebs());
    {
        let _lock = paths.lock()?;
        store.update(instance_id, |record| {
            let mut state = LaunchState::of(record)?;
            state.supervisor_pid = Some(std::process::id());
            state.store(record);
            Ok(())
        })?;
    }
    let launch = LaunchState::of(&store.get(instance_id)?)?;
    if launch.eni == EniKind::Enhanced {
        start_vf_dhcp(&store.get(instance_id)?, &launch)?;
    }
    if store.get(instance_id)?.cpu_credits.is_some() {
        let credits_store = InstanceStore::open(paths.instances())?;
        let (paths, id) = (paths.clone(), instance_id.to_string());
        std::thread::spawn(move || qos::run_credits(paths, credits_store, id));
    }
    let mut crashes: Vec<Instant> = Vec::new();
    loop {
        let record = store.get(instance_id)?;
        match record.state() {
            InstanceStateName::Pending | InstanceStateName::Running => {}
            InstanceStateName::Stopping | InstanceStateName::ShuttingDown => {
                return finish(paths, store, ebs, instance_id)
            }
            InstanceStateName::Stopped | InstanceStateName::Terminated => return Ok(()),
        }
        let end = run_vmm(paths, store, ebs, launcher.kernels(), &record)?;
        log::info!("{instance_id}: vmm ended: {end:?}");
        let _lock = paths.lock()?;
        let mut record = store.get(instance_id)?;
        let mut state = LaunchState::of(&record)?;
        state.vmm_pid = None;
        state.last_exit = Some(format!("{end:?}"));
        match (record.state(), end) {
            (InstanceStateName::Stopping | InstanceStateName::ShuttingDown, _) => {}
            (_, VmmEnd::GuestReset) => {}
            (_, VmmEnd::GuestPowerOff) => {
                record.guest_shutdown(super::unix_now())?;
            }
            (_, VmmEnd::Crashed | VmmEnd::Stopped) => {
                let now = Instant::now();
                crashes.retain(|t| now.duration_since(*t) < RECOVERY_WINDOW);
                crashes.push(now);
                if crashes.len() > MAX_RECOVERIES {
                    log::error!("{instance_id}: VMM keeps failing; giving up recovery");
                    record.launch_failed(super::unix_now());
                } else {
                    state.recoveries += 1;
                    log::warn!(
                        "{instance_id}: VMM crashed; recovering (#{})",
                        state.recoveries
                    );
                }
            }
        }
        state.store(&mut record);
        store.put(&record)?;
        let recovering = matches!(end, VmmEnd::Crashed | VmmEnd::Stopped)
            && matches!(
                record.state(),
                InstanceStateName::Running | InstanceStateName::Pending
            );
        drop(_lock);
        if recovering {
            std::thread::sleep(RECOVERY_DELAY);
        }
    }
}

/// Prepare and run one VMM; returns how it ended.
fn run_vmm(
    paths: &StatePaths,
    store: &InstanceStore,
    ebs: &BlockService,
    kernels: &super::kernels::Kernels,
    record: &InstanceRecord,
) -> Result<VmmEnd, Ec2Error> {
    let id = &record.instance.instance_id;
    let state = LaunchState::of(record)?;
    let run = paths.run_dir(id);
    let itype = crate::instance_types::lookup(&record.instance.instance_type)?;
    let (kernel, ramdisk, cmdline) = if state.boot_from_volume && state.hibernation_volume.is_none()
    {
        // The newest kernel in the root volume's /boot, read before every start.
        let root = state.volumes.first().ok_or_else(|| {
            Ec2Error::internal(format!("instance {id} has no root volume to boot from"))
        })?;
        let uri = format!(
            "nbd+unix:///{}?socket={}",
            root.export,
            ebs.nbd_socket().display()
        );
        let files = super::boot_volume::extract(&uri, &run.join("boot"), &root.device_name)?;
        log::info!(
            "{id}: booting {} from the root volume's /boot",
            files.version
        );
        (files.kernel, files.initrd, files.cmdline)
    } else if state.boot_from_volume {
        // Resuming from hibernation: the kernel is in the saved memory.
        (std::path::PathBuf::new(), None, String::new())
    } else {
        let ramdisk = match &state.ramdisk_id {
            Some(id) => Some(kernels.ramdisk_file(id)?),
            None => None,
        };
        (
            kernels.kernel_file(&state.kernel_id)?,
            ramdisk,
            state.kernel_parameters.clone(),
        )
    };
    let enhanced = state.eni == EniKind::Enhanced;
    if enhanced {
        // The subnet's gateway address lives on the bridge; the host answers ARP for
        // it on the PF too (Linux answers for any local address), which is how a VF
        // guest reaches its gateway and, through it, the metadata service.
        network::ensure_bridge()?;
        let _lock = paths.lock()?;
        ImdsService::write_config(paths, &store.list()?)?;
        ImdsService::ensure(paths)?;
    } else {
        network::create_tap(&state.tap)?;
    }
    let imds = run.join("imds.json");
    let imds_record = serde_json::to_vec_pretty(&metadata_record(record, &state))
        .map_err(|e| Ec2Error::internal(e.to_string()))?;
    std::fs::write(&imds, imds_record).map_err(|e| io_error(&imds, e))?;
    let console_in = run.join("console.in");
    if !console_in.exists() {
        let c = std::ffi::CString::new(console_in.to_string_lossy().as_bytes())
            .map_err(|e| Ec2Error::internal(e.to_string()))?;
        // SAFETY: mkfifo with a valid NUL-terminated path.
        if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(io_error(&console_in, std::io::Error::last_os_error()));
        }
    }
    // Read-write so the FIFO never reports end-of-file when no CLI is attached.
    let stdin = File::options()
        .read(true)
        .write(true)
        .open(&console_in)
        .map_err(|e| io_error(&console_in, e))?;
    let open_append = |name: &str| {
        let path = run.join(name);
        File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_error(&path, e))
    };
    let api_sock = run.join("vmm.sock");
    let _ = std::fs::remove_file(&api_sock);
    let mut command = Command::new(sibling("vmm")?);
    let resuming = match &state.hibernation_volume {
        Some(volume) => {
            let (snap, mem) = super::hibernate::fetch(ebs, id, volume, &run)?;
            command
                .arg("--restore")
                .arg(snap)
                .arg("--restore-mem")
                .arg(mem);
            true
        }
        None => false,
    };
    if !resuming {
        command
            .arg("--kernel")
            .arg(&kernel)
            .arg("--cmdline")
            .arg(&cmdline)
            .arg("--smbios-uuid")
            .arg(smbios_uuid(id))
            .arg("--smbios-serial")
            .arg(id);
        if let Some(ramdisk) = &ramdisk {
            command.arg("--initrd").arg(ramdisk);
        }
        if !enhanced {
            command.arg("--imds").arg(&imds);
        }
    }
    command
        .arg("--vcpus")
        .arg(state.vcpus.to_string())
        .arg("--mem-mib")
        .arg(state.mem_mib.to_string())
        .arg("--api-sock")
        .arg(&api_sock);
    match (&state.vf_pool, enhanced) {
        (Some(pool), true) => {
            // The VMM holds the lease for its lifetime (see enhanced.rs).
            command.arg("--vf").arg(format!(
                "pool={},mac={},instance={id}",
                pool.display(),
                state.mac
            ));
            raise_memlock(&mut command);
        }
        _ => {
            let bw = qos::network_limit(itype);
            command.arg("--net").arg(format!(
                "tap={},mac={},ip={}/{},gw={},rx_bw={bw},tx_bw={bw}",
                state.tap,
                state.mac,
                state.ip,
                network::PREFIX,
                network::GATEWAY
            ));
        }
    }
    let (drive_bw, drive_iops) = qos::drive_limits(itype, state.volumes.len());
    for (i, volume) in state.volumes.iter().enumerate() {
        let (vol, token) = volume
            .export
            .split_once('/')
            .ok_or_else(|| Ec2Error::internal(format!("bad export {}", volume.export)))?;
        command.arg("--drive").arg(format!(
            "id=disk{i},vol={vol},endpoint={},token={token},bw={drive_bw},iops={drive_iops}",
            ebs.nbd_endpoint()
        ));
    }
    let vmm_log = run.join("vmm.log");
    let mut child = command
        .stdin(stdin)
        .stdout(open_append("console.log")?)
        .stderr(open_append("vmm.log")?)
        .spawn()
        .map_err(|e| Ec2Error::internal(format!("starting vmm: {e}")))?;
    {
        let _lock = paths.lock()?;
        store.update(id, |record| {
            let mut state = LaunchState::of(record)?;
            state.vmm_pid = Some(child.id());
            state.store(record);
            qos::join_cgroup(
                record,
                child.id(),
                crate::cpu_credits::Clock::now(&SystemClock),
            );
            Ok(())
        })?;
    }
    // Running once the VMM's API answers (the guest is booting).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Ok(classify(status, &tail(&vmm_log, 4096)));
        }
        if std::os::unix::net::UnixStream::connect(&api_sock).is_ok() {
            let _lock = paths.lock()?;
            let mut discard = None;
            store.update(id, |record| {
                if record.state() == InstanceStateName::Pending {
                    record.complete();
                }
                if resuming {
                    let mut s = LaunchState::of(record)?;
                    discard = s.hibernation_volume.take();
                    s.restored_from_hibernation = true;
                    s.store(record);
                }
                Ok(())
            })?;
            if let Some(volume) = discard {
                // Resumed: the snapshot lives on in the mapped memory file.
                super::hibernate::discard(ebs, &volume);
            }
            if let (true, Some(pool)) = (enhanced, &state.vf_pool) {
                route_to_vf(pool, id, &state.ip);
            }
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child
        .wait()
        .map_err(|e| Ec2Error::internal(format!("waiting for vmm: {e}")))?;
    Ok(classify(status, &tail(&vmm_log, 4096)))
}

/// Stops and terminations end here, once no VMM runs.
pub fn finish(
    paths: &StatePaths,
    store: &InstanceStore,
    ebs: &BlockService,
    instance_id: &str,
) -> Result<(), Ec2Error> {
    let _lock = paths.lock()?;
    let mut record = store.get(instance_id)?;
    let mut state = LaunchState::of(&record)?;
    network::delete_tap(&state.tap);
    if let (EniKind::Enhanced, Some(pool)) = (state.eni, &state.vf_pool) {
        // A VMM that crashed or was killed never gave its VF back.
        enhanced::reconcile_pool(pool);
        enhanced::delete_route(&state.ip);
    }
    if record.state() == InstanceStateName::ShuttingDown {
        for volume in &state.volumes {
            if let Err(e) = ebs.detach(&volume.volume_id) {
                log::warn!("{instance_id}: detach {}: {e}", volume.volume_id);
            }
            if volume.delete_on_termination {
                if let Err(e) = ebs.delete_volume(&volume.volume_id) {
                    log::warn!("{instance_id}: delete {}: {e}", volume.volume_id);
                }
            }
        }
        if let Some(volume) = state.hibernation_volume.take() {
            super::hibernate::discard(ebs, &volume);
        }
        // EC2 shows a terminated instance without its volumes.
        record.instance.block_device_mappings.clear();
        let run = paths.run_dir(instance_id);
        let _ = std::fs::remove_file(run.join("console.in"));
    }
    if let Some(account) = record.cpu_credits.as_mut() {
        // Surplus is charged at a stop; the balance waits (T3: seven days).
        account.stop(crate::cpu_credits::Clock::now(&SystemClock));
    }
    qos::remove_cgroup(instance_id);
    if state.restored_from_hibernation {
        // The VMM that mapped the restored memory is gone.
        let run = paths.run_dir(instance_id);
        let _ = std::fs::remove_file(super::hibernate::state_file(&run));
        let _ = std::fs::remove_file(super::hibernate::memory_file(&run));
        state.restored_from_hibernation = false;
    }
    state.vmm_pid = None;
    state.supervisor_pid = None;
    state.store(&mut record);
    record.complete();
    store.put(&record)?;
    if state.eni == EniKind::Enhanced {
        // imdsd stops serving the instance (it reloads the file on change).
        ImdsService::write_config(paths, &store.list()?)?;
    }
    Ok(())
}

/// The host side of a VF's link: DHCP for the instance's MAC, on a thread for as long
/// as the supervisor lives (across VMM restarts).
fn start_vf_dhcp(record: &InstanceRecord, state: &LaunchState) -> Result<(), Ec2Error> {
    let mac = vf_dhcp::parse_mac(&state.mac)
        .ok_or_else(|| Ec2Error::internal(format!("bad MAC {}", state.mac)))?;
    let ip = state
        .ip
        .parse()
        .map_err(|_| Ec2Error::internal(format!("bad address {}", state.ip)))?;
    let lease = imds::dhcp::DhcpLease {
        guest_mac: mac,
        ip,
        prefix_len: network::PREFIX,
        gateway: network::GATEWAY,
        dns: None,
        mtu: 1500,
        lease_secs: vf_dhcp::LEASE_SECS,
        hostname: record
            .instance
            .private_dns_name
            .split('.')
            .next()
            .map(str::to_string),
    };
    let responder = vf_dhcp::Responder::open()?;
    std::thread::spawn(move || responder.serve(&lease));
    Ok(())
}

/// Route the instance's address over the PF of the VF its VMM leased (the lease is
/// taken while the VMM builds the VM, so it may take a moment to appear).
fn route_to_vf(pool: &Path, instance_id: &str, ip: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pf) = enhanced::leased_pf(pool, instance_id) {
            match enhanced::add_route(ip, &pf) {
                Ok(()) => log::info!("{instance_id}: {ip} routed via {pf}"),
                Err(e) => log::warn!("{instance_id}: {e}"),
            }
            return;
        }
        if Instant::now() > deadline {
            log::warn!("{instance_id}: no VF lease found in {}", pool.display());
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The VMM pins all guest memory for the VF's DMA, so its locked-memory limit must
/// cover it (root may raise the hard limit).
fn raise_memlock(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            let unlimited = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The metadata service's record for the instance (imds crate's format).
pub(super) fn metadata_record(record: &InstanceRecord, state: &LaunchState) -> serde_json::Value {
    let i = &record.instance;
    let eni = i.network_interfaces.first();
    json!({
        "instance_id": i.instance_id,
        "account_id": record.owner_id,
        "image_id": i.image_id,
        "ami_launch_index": i.ami_launch_index,
        "instance_type": i.instance_type,
        "kernel_id": state.kernel_id,
        "ramdisk_id": state.ramdisk_id,
        "reservation_id": record.reservation_id,
        "pending_time": i.launch_time,
        "local_hostname": i.private_dns_name,
        "placement": {"availability_zone": i.placement.availability_zone,
                      "availability_zone_id": "local-az1"},
        "network_interfaces": [{
            "mac": state.mac,
            "interface_id": eni.map(|e| e.network_interface_id.clone()).unwrap_or_default(),
            "device_number": 0,
            "private_ipv4s": [state.ip],
            "public_ipv4s": [],
            "subnet_id": "subnet-0000000000000local",
            "subnet_ipv4_cidr_block": network::SUBNET_CIDR,
            "vpc_id": "vpc-0000000000000local",
            "vpc_ipv4_cidr_blocks": [network::VPC_CIDR],
            "security_groups": [{"id": "sg-0000000000000local", "name": "default"}],
        }],
        "block_device_mapping": {"ami": i.root_device_name, "root": i.root_device_name},
        "user_data_base64": record.user_data,
        "metadata_options": {
            "http_tokens": i.metadata_options.http_tokens,
            "http_endpoint": i.metadata_options.http_endpoint,
            "http_put_response_hop_limit": i.metadata_options.http_put_response_hop_limit,
        },
    })
}

/// A stable SMBIOS UUID per instance (EC2 guests see theirs starting with "ec2").
fn smbios_uuid(instance_id: &str) -> String {
    let hex = instance_id.trim_start_matches("i-");
    let mut digits: String = format!("ec2{hex}")
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect();
    while digits.len() < 32 {
        digits.push('0');
    }
    format!(
        "{}-{}-{}-{}-{}",
        &digits[0..8],
        &digits[8..12],
        &digits[12..16],
        &digits[16..20],
        &digits[20..32]
    )
}

impl Launcher {
    /// Whether a process is alive (kill -0).
    pub fn alive(pid: Option<u32>) -> bool {
        // SAFETY: signal 0 only checks the pid.
        pid.is_some_and(|p| unsafe { libc::kill(p as libc::pid_t, 0) } == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn vmm_endings() {
        let code = |c: i32| ExitStatus::from_raw(c << 8);
        assert_eq!(
            classify(code(0), "x VM stopped: GuestReset"),
            VmmEnd::GuestReset
        );
        assert_eq!(
            classify(code(0), "VM stopped: GuestShutdown\n"),
            VmmEnd::GuestPowerOff
        );
        assert_eq!(classify(code(143), ""), VmmEnd::Stopped);
        assert_eq!(classify(code(1), "fault"), VmmEnd::Crashed);
        assert_eq!(classify(ExitStatus::from_raw(9), ""), VmmEnd::Crashed);
    }

    #[test]
    fn smbios_uuids_are_stable_and_well_formed() {
        let a = smbios_uuid("i-0123456789abcdef0");
        assert_eq!(a, smbios_uuid("i-0123456789abcdef0"));
        assert_eq!(a.len(), 36);
        assert!(a.starts_with("ec20"));
    }
}
