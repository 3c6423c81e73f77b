//! Start, stop, reboot, terminate, describe, console output and status checks.

use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{supervisor, LaunchState, Launcher};
use crate::error::{Ec2Error, ErrorCode};
use crate::ids::ResourceKind;
use crate::instances::{
    describe_instances, Action, DescribeInstancesRequest, InstanceRecord, InstanceStateName,
    Outcome,
};

/// How long a stop waits for the guest to shut down on Ctrl-Alt-Del before the VMM
/// is stopped outright (EC2 also forces a stop that takes too long).
const GRACEFUL_STOP: Duration = Duration::from_secs(60);
/// EC2 keeps the latest 64 KiB of console output.
const CONSOLE_BYTES: u64 = 64 * 1024;

impl Launcher {
    fn records(&self, ids: &[String]) -> Result<Vec<InstanceRecord>, Ec2Error> {
        if ids.is_empty() {
            return Err(Ec2Error::missing("InstanceIds"));
        }
        for id in ids {
            crate::ids::validate(ResourceKind::Instance, id)?;
        }
        let all = self.instances().list()?;
        let missing: Vec<&str> = ids
            .iter()
            .filter(|id| !all.iter().any(|r| &r.instance.instance_id == *id))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(Ec2Error::instances_not_found(&missing));
        }
        Ok(all
            .into_iter()
            .filter(|r| ids.contains(&r.instance.instance_id) && r.owner_id == self.account)
            .collect())
    }

    pub fn describe_instances(
        &self,
        request: &DescribeInstancesRequest,
    ) -> Result<Value, Ec2Error> {
        let records = self.instances().list()?;
        describe_instances(records, request, &self.account)
    }

    /// Start/Stop/Reboot/Terminate: EC2's state changes, the work begun.
    pub fn change_state(
        &self,
        ids: &[String],
        action: Action,
        force: bool,
    ) -> Result<Value, Ec2Error> {
        self.records(ids)?;
        let mut changes = Vec::new();
        for id in ids {
            let (change, outcome, state) = {
                let _lock = self.paths.lock()?;
                let mut record = self.instances().get(id)?;
                if action == Action::Start && record.state() == InstanceStateName::Stopped {
                    let state = LaunchState::of(&record)?;
                    if let (super::enhanced::EniKind::Enhanced, Some(pool)) =
                        (state.eni, &state.vf_pool)
                    {
                        let free = super::enhanced::free_vfs(pool, &self.instances().list()?);
                        super::enhanced::check_start_capacity(
                            free,
                            &record.instance.instance_type,
                            pool,
                        )?;
                    }
                }
                let (change, outcome) = record.apply(action, super::unix_now())?;
                let change = serde_json::to_value(change).unwrap_or_default();
                self.instances().put(&record)?;
                (change, outcome, LaunchState::of(&record)?)
            };
            match outcome {
                Outcome::NoChange => {}
                Outcome::Reboot => self.vmm_action(id, "SendCtrlAltDel")?,
                Outcome::Begin(InstanceStateName::Pending) => {
                    supervisor::spawn(&self.paths, id)?;
                }
                Outcome::Begin(InstanceStateName::Stopping) if action == Action::Hibernate => {
                    self.hibernate(id, &state)?
                }
                Outcome::Begin(_) => self.shut_down(id, &state, force)?,
            }
            changes.push(change);
        }
        let key = match action {
            Action::Start => "StartingInstances",
            Action::Stop | Action::Hibernate => "StoppingInstances",
            Action::Terminate => "TerminatingInstances",
            Action::Reboot => return Ok(json!({})),
        };
        Ok(json!({ key: changes }))
    }

    /// Ask the guest to shut down (Ctrl-Alt-Del), or stop the VMM when forced; a
    /// supervisor that is gone is replaced by finishing here.
    fn shut_down(&self, id: &str, state: &LaunchState, force: bool) -> Result<(), Ec2Error> {
        let vmm_running = Self::alive(state.vmm_pid);
        if !Self::alive(state.supervisor_pid) || !vmm_running {
            if let Some(pid) = state.vmm_pid.filter(|_| vmm_running) {
                // SAFETY: plain kill(2) on a pid we started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
            return supervisor::finish(&self.paths, self.instances(), self.ebs(), id);
        }
        if force || self.vmm_action(id, "SendCtrlAltDel").is_err() {
            if let Some(pid) = state.vmm_pid {
                // SAFETY: plain kill(2) on a pid we started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
            return Ok(());
        }
        // The guest gets its chance to shut down; then the VMM is stopped.
        let paths = self.paths.clone();
        let id = id.to_string();
        let vmm_pid = state.vmm_pid;
        std::thread::spawn(move || {
            let deadline = Instant::now() + GRACEFUL_STOP;
            while Instant::now() < deadline && Launcher::alive(vmm_pid) {
                std::thread::sleep(Duration::from_millis(200));
            }
            if let Some(pid) = vmm_pid.filter(|_| Launcher::alive(vmm_pid)) {
                log::warn!("{id}: guest did not shut down in time; stopping its VMM");
                // SAFETY: plain kill(2) on a pid we started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            }
            drop(paths);
        });
        Ok(())
    }

    /// Snapshot the VM to a hibernation volume, then stop its VMM. When the snapshot
    /// cannot be taken the instance is shut down normally, as EC2 does.
    fn hibernate(&self, id: &str, state: &LaunchState) -> Result<(), Ec2Error> {
        if !Self::alive(state.vmm_pid) {
            return self.shut_down(id, state, false);
        }
        match self.hibernate_vmm(id, state) {
            Ok(volume) => {
                {
                    let _lock = self.paths.lock()?;
                    self.instances().update(id, |record| {
                        let mut s = LaunchState::of(record)?;
                        s.hibernation_volume = Some(volume.clone());
                        s.store(record);
                        Ok(())
                    })?;
                }
                self.shut_down(id, state, true)
            }
            Err(e) => {
                log::warn!("{id}: hibernation failed ({e}); stopping instead");
                let _ = self.vmm_call(id, "PATCH", "/vm", &json!({"state": "Resumed"}));
                self.shut_down(id, state, false)
            }
        }
    }

    /// PUT /actions on the instance's VMM.
    fn vmm_action(&self, id: &str, action: &str) -> Result<(), Ec2Error> {
        self.vmm_call(id, "PUT", "/actions", &json!({"action_type": action}))
    }

    /// Wait until every instance is in `state` (the CLI's `--wait` / `aws ec2 wait`).
    pub fn wait_for(
        &self,
        ids: &[String],
        state: InstanceStateName,
        limit: Duration,
    ) -> Result<(), Ec2Error> {
        let deadline = Instant::now() + limit;
        loop {
            let records = self.records(ids)?;
            if records.iter().all(|r| r.state() == state) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let now: Vec<String> = records
                    .iter()
                    .map(|r| format!("{} is {}", r.instance.instance_id, r.state().as_str()))
                    .collect();
                return Err(Ec2Error::new(
                    ErrorCode::IncorrectInstanceState,
                    format!(
                        "Waiter for {} timed out: {}",
                        state.as_str(),
                        now.join(", ")
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The latest console output (64 KiB), as text.
    pub fn console_output(&self, id: &str) -> Result<Value, Ec2Error> {
        self.records(&[id.to_string()])?;
        let path = self.paths.run_dir(id).join("console.log");
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&path) {
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = file.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_BYTES)));
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        Ok(json!({"InstanceId": id, "Timestamp": super::iso_now(), "Output": text}))
    }

    /// DescribeInstanceStatus: the system check is the instance's VMM and supervisor
    /// being alive and the block service answering; the instance check is EC2's: the
    /// guest answering ARP for its private address (reachability.rs). Until the guest
    /// of the current VMM has answered once, a silent guest is `initializing` (for
    /// [`BOOT_GRACE`] after the VMM started); after that, or once it has answered,
    /// silence is `impaired`.
    pub fn instance_status(&self, ids: &[String]) -> Result<Value, Ec2Error> {
        let records = if ids.is_empty() {
            self.instances().list()?
        } else {
            self.records(ids)?
        };
        let ebs_ok = self.ebs().call("DescribeVolumes", &json!({})).is_ok();
        let mut statuses = Vec::new();
        for record in records
            .iter()
            .filter(|r| r.state() == InstanceStateName::Running)
        {
            let id = &record.instance.instance_id;
            let state = LaunchState::of(record)?;
            let system_ok =
                ebs_ok && Self::alive(state.vmm_pid) && Self::alive(state.supervisor_pid);
            let reachable = system_ok
                && match state.ip.parse() {
                    Ok(ip) => super::reachability::reachable(ip).unwrap_or_else(|e| {
                        log::warn!("{id}: reachability probe: {}", e.message);
                        false
                    }),
                    Err(_) => false,
                };
            // Which VMM's guest answered last (the run directory outlives VMMs).
            let marker = self.paths.run_dir(id).join("reachable-vmm");
            let vmm = state.vmm_pid.map(|p| p.to_string()).unwrap_or_default();
            let answered_before = std::fs::read_to_string(&marker).is_ok_and(|p| p == vmm);
            if reachable && !answered_before {
                if let Err(e) = std::fs::write(&marker, &vmm) {
                    log::warn!("{}: {e}", marker.display());
                }
            }
            let booting = !answered_before
                && state
                    .vmm_pid
                    .and_then(process_age)
                    .is_some_and(|age| age < BOOT_GRACE);
            let check = |ok: bool, pending: bool| {
                let status = if ok {
                    "ok"
                } else if pending {
                    "initializing"
                } else {
                    "impaired"
                };
                json!({"Status": status, "Details": [{"Name": "reachability", "Status": if ok { "passed" } else if pending { "initializing" } else { "failed" }}]})
            };
            statuses.push(json!({
                "InstanceId": id,
                "AvailabilityZone": record.instance.placement.availability_zone,
                "InstanceState": record.instance.state,
                "SystemStatus": check(system_ok, false),
                "InstanceStatus": check(reachable, system_ok && booting),
                "Recoveries": state.recoveries,
            }));
        }
        Ok(json!({"InstanceStatuses": statuses}))
    }
}

/// How long a fresh VMM's guest may take to answer before the instance check fails
/// (nested KVM under TCG boots in about a minute; hardware in seconds).
pub const BOOT_GRACE: Duration = Duration::from_secs(300);

/// How long process `pid` has been running (from /proc: its start in clock ticks
/// since boot against the system's uptime).
fn process_age(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let start_ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let started = Duration::from_millis(start_ticks * 1000 / hz);
    Some(Duration::from_secs_f64(uptime).saturating_sub(started))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_age_counts_from_the_process_start() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let young = process_age(child.id()).expect("age of a running child");
        let own = process_age(std::process::id()).expect("own age");
        assert!(young < Duration::from_secs(2), "{young:?}");
        assert!(own >= young, "{own:?} < {young:?}");
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(process_age(u32::MAX), None);
    }
}
