//! The instance type's limits, applied: EBS bandwidth and IOPS on the VMM's drives,
//! network bandwidth on the emulated ENI, and CPU credits of burstable (T) types
//! through a cgroup v2 per instance whose `cpu.max` the supervisor adjusts.
//!
//! EBS and network: the VMM's limiters are one-second token buckets, which cannot
//! model EC2's daily burst allowance (30 minutes at the maximum per 24 hours for EBS,
//! network credits for "up to" bandwidth). What is enforced is the type's ceiling:
//! the EBS-optimized *maximum* throughput and IOPS, and the *peak* network bandwidth,
//! so no instance is ever faster than on EC2; the baselines are what
//! describe-instance-types reports. The instance's EBS limit is an aggregate; the
//! VMM limits each drive, so the aggregate is split evenly between the drives (an
//! instance with one volume gets all of it).
//!
//! CPU credits: every `CREDIT_INTERVAL` the supervisor reads the cgroup's
//! `cpu.stat` usage, runs the account (`cpu_credits`), writes the resulting
//! `cpu.max` (unlimited mode and a positive balance: no limit; standard mode with no
//! credits: the baseline) and persists the account in the instance record, so the
//! balance survives supervisor restarts and stops (T3: seven days).

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use super::paths::StatePaths;
use crate::cgroup::{find_cgroup2_mount, Cgroup, CgroupError};
use crate::cpu_credits::{Clock, CpuMax, CreditAccount, CreditMode, SystemClock};
use crate::error::Ec2Error;
use crate::instance_types::InstanceTypeInfo;
use crate::instances::{InstanceRecord, InstanceStateName, InstanceStore};

/// How often credits are accounted and `cpu.max` adjusted.
pub const CREDIT_INTERVAL: Duration = Duration::from_secs(5);
/// The cgroup (under the cgroup2 mount) holding one child per instance.
const CGROUP_PARENT: &str = "nitro";

/// `bw=` (bytes/s) and `iops=` for each of `drives` drives.
pub fn drive_limits(info: &InstanceTypeInfo, drives: usize) -> (u64, u64) {
    let n = drives.max(1) as f64;
    let bytes = info.ebs.maximum_throughput_in_m_bps * 1_000_000.0 / n;
    let iops = f64::from(info.ebs.maximum_iops) / n;
    ((bytes.round() as u64).max(1), (iops as u64).max(1))
}

/// `rx_bw=`/`tx_bw=` (bytes/s) of the ENI.
pub fn network_limit(info: &InstanceTypeInfo) -> u64 {
    ((info.network.peak_bandwidth_in_gbps * 1e9 / 8.0) as u64).max(1)
}

/// The instance's cgroup: `<cgroup2>/nitro/<instance-id>`, with the cpu controller
/// enabled on the way when the host lets us (on a host whose cpu controller is bound
/// to cgroup v1 only usage is accounted, and cpu.max cannot be written).
pub fn instance_cgroup(instance_id: &str) -> Result<Cgroup, CgroupError> {
    let mount = find_cgroup2_mount().ok_or_else(|| CgroupError::NotCgroup2 {
        path: PathBuf::from("/sys/fs/cgroup"),
    })?;
    let root = Cgroup::open(&mount)?;
    if let Err(e) = root.enable_controller("cpu") {
        log::warn!(
            "cgroup {}: {e}; CPU credits are accounted, not enforced",
            mount.display()
        );
    }
    let parent = root.create_child(CGROUP_PARENT)?;
    let _ = parent.enable_controller("cpu");
    parent.create_child(instance_id)
}

/// Remove the instance's cgroup once its VMM is gone.
pub fn remove_cgroup(instance_id: &str) {
    if let Some(mount) = find_cgroup2_mount() {
        let path = mount.join(CGROUP_PARENT).join(instance_id);
        if path.exists() {
            if let Err(e) = std::fs::remove_dir(&path) {
                log::warn!("{}: {e}", path.display());
            }
        }
    }
}

/// One control step: account the usage up to `now` and return the limit for the next
/// interval.
pub fn credit_step(
    account: &mut CreditAccount,
    now: Duration,
    usage_usec: u64,
    interval: Duration,
) -> CpuMax {
    account.update(now, usage_usec);
    account.cpu_max(interval)
}

/// The credits file beside the instance's console (CloudWatch's metric names).
pub fn credits_file(paths: &StatePaths, instance_id: &str) -> PathBuf {
    paths.run_dir(instance_id).join("cpu-credits.json")
}

/// The supervisor's credit loop for a burstable instance (runs on its own thread for
/// the supervisor's lifetime). Errors are logged, never fatal: an instance must not
/// stop because its accounting hiccupped.
pub fn run_credits(paths: StatePaths, store: InstanceStore, instance_id: String) {
    let clock = SystemClock;
    loop {
        std::thread::sleep(CREDIT_INTERVAL);
        match credit_tick(&paths, &store, &instance_id, clock.now()) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => log::warn!("{instance_id}: CPU credits: {e}"),
        }
    }
}

/// Returns whether to go on (the instance still runs).
fn credit_tick(
    paths: &StatePaths,
    store: &InstanceStore,
    instance_id: &str,
    now: Duration,
) -> Result<bool, Ec2Error> {
    let cgroup = match instance_cgroup(instance_id) {
        Ok(cgroup) => cgroup,
        Err(e) => return Err(Ec2Error::internal(e.to_string())),
    };
    let usage = cgroup
        .cpu_stat()
        .map_err(|e| Ec2Error::internal(e.to_string()))?;
    let _lock = paths.lock()?;
    let mut record = store.get(instance_id)?;
    if !matches!(
        record.state(),
        InstanceStateName::Pending | InstanceStateName::Running
    ) {
        return Ok(false);
    }
    let Some(account) = record.cpu_credits.as_mut() else {
        return Ok(false);
    };
    let limit = credit_step(account, now, usage.usage_usec, CREDIT_INTERVAL);
    if let Err(e) = cgroup.set_cpu_max(limit) {
        log::debug!("{instance_id}: cpu.max {limit}: {e}");
    }
    let report = json!({
        "CPUCreditBalance": account.balance(),
        "CPUSurplusCreditBalance": account.surplus(),
        "CPUSurplusCreditsCharged": account.charged_surplus(),
        "CpuCredits": account.mode(),
        "CpuMax": limit.to_string(),
        "UsageUsec": usage.usage_usec,
        "NrThrottled": usage.nr_throttled,
    });
    store.put(&record)?;
    let file = credits_file(paths, instance_id);
    let _ = std::fs::write(&file, report.to_string());
    Ok(true)
}

/// The VMM joins the instance's cgroup (best effort: without cgroup v2 the instance
/// runs unaccounted, with a warning). A restarted account counts usage from the
/// cgroup's current total.
pub fn join_cgroup(record: &mut InstanceRecord, pid: u32, now: Duration) {
    if record.cpu_credits.is_none() {
        return;
    }
    let id = record.instance.instance_id.clone();
    match instance_cgroup(&id).and_then(|cgroup| {
        cgroup.add_process(pid)?;
        cgroup.cpu_stat()
    }) {
        Ok(stat) => {
            if let Some(account) = record.cpu_credits.as_mut() {
                // A stopped instance's account resumes here; a running one only
                // re-bases its usage counter if the cgroup is new.
                account.start_with_usage(now, stat.usage_usec);
            }
        }
        Err(e) => log::warn!("{id}: no cgroup for CPU credits: {e}"),
    }
}

impl super::Launcher {
    /// ModifyInstanceCreditSpecification: `[(instance id, mode)]`; takes effect at the
    /// supervisor's next step.
    pub fn modify_credit_specification(
        &self,
        changes: &[(String, CreditMode)],
    ) -> Result<serde_json::Value, Ec2Error> {
        let mut successful = Vec::new();
        let mut unsuccessful = Vec::new();
        for (id, mode) in changes {
            let _lock = self.paths.lock()?;
            let result = self.instances().update(id, |record| {
                if record.owner_id != self.account {
                    return Err(Ec2Error::instances_not_found(&[id.as_str()]));
                }
                let account = record.cpu_credits.as_mut().ok_or_else(|| {
                    Ec2Error::combination(format!(
                        "The instance {id} is not a burstable performance instance"
                    ))
                })?;
                account.set_mode(*mode);
                record.credit_specification = Some(*mode);
                Ok(())
            });
            match result {
                Ok(()) => successful.push(json!({"InstanceId": id})),
                Err(e) => unsuccessful.push(json!({"InstanceId": id,
                    "Error": {"Code": e.code.as_str(), "Message": e.message}})),
            }
        }
        Ok(json!({
            "SuccessfulInstanceCreditSpecifications": successful,
            "UnsuccessfulInstanceCreditSpecifications": unsuccessful,
        }))
    }

    /// DescribeInstanceCreditSpecifications, with this host's balance beside the mode
    /// (EC2 shows balances in CloudWatch, which this host does not have).
    pub fn describe_credit_specifications(
        &self,
        ids: &[String],
    ) -> Result<serde_json::Value, Ec2Error> {
        let records = self.instances().list()?;
        for id in ids {
            crate::ids::validate(crate::ids::ResourceKind::Instance, id)?;
            if !records
                .iter()
                .any(|r| &r.instance.instance_id == id && r.owner_id == self.account)
            {
                return Err(Ec2Error::instances_not_found(&[id.as_str()]));
            }
        }
        let specifications: Vec<serde_json::Value> = records
            .iter()
            .filter(|r| r.owner_id == self.account)
            .filter(|r| ids.is_empty() || ids.contains(&r.instance.instance_id))
            .filter(|r| r.state() != InstanceStateName::Terminated)
            .filter_map(|r| {
                let account = r.cpu_credits.as_ref()?;
                Some(json!({
                    "InstanceId": r.instance.instance_id,
                    "CpuCredits": account.mode(),
                    "CPUCreditBalance": account.balance(),
                    "CPUSurplusCreditBalance": account.surplus(),
                }))
            })
            .collect();
        Ok(json!({ "InstanceCreditSpecifications": specifications }))
    }
}

/// Whether `path` is the instance's cgroup (for tests and diagnostics).
pub fn cgroup_path(instance_id: &str) -> Option<PathBuf> {
    find_cgroup2_mount().map(|m| m.join(CGROUP_PARENT).join(instance_id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_credits::ManualClock;
    use crate::instance_types::lookup;

    #[test]
    fn drive_and_network_limits_follow_the_type() {
        let nano = lookup("t3.nano").unwrap();
        let (bw, iops) = drive_limits(nano, 1);
        assert_eq!(bw, 260_570_000);
        assert_eq!(iops, u64::from(nano.ebs.maximum_iops));
        let (bw2, iops2) = drive_limits(nano, 2);
        assert_eq!((bw2, iops2), (bw / 2, iops / 2), "the aggregate is split");
        assert_eq!(drive_limits(nano, 0), drive_limits(nano, 1));
        assert_eq!(network_limit(nano), 625_000_000, "5 Gbps peak");
    }

    #[test]
    fn standard_mode_runs_out_and_holds_the_baseline() {
        let clock = ManualClock::new(Duration::from_secs(1_000_000));
        let nano = lookup("t3.nano").unwrap();
        let mut account = CreditAccount::new(nano, CreditMode::Standard, clock.now()).unwrap();
        // Launch with one minute of credit (the test host's "tiny balance"): a busy
        // vCPU spends it in a minute.
        account.update(clock.now() + Duration::from_secs(600), 0);
        let mut usage = 0;
        let mut limits = Vec::new();
        let mut now = clock.now() + Duration::from_secs(600);
        for _ in 0..30 {
            now += CREDIT_INTERVAL;
            usage += CREDIT_INTERVAL.as_micros() as u64; // one vCPU flat out
            limits.push(credit_step(&mut account, now, usage, CREDIT_INTERVAL));
        }
        let baseline = (0.05 * 2.0 * 100_000.0) as u64; // 5% of each of 2 vCPUs
        assert!(
            limits[0].quota_usec.is_none_or(|q| q > baseline),
            "{limits:?}"
        );
        let last = limits.last().unwrap();
        assert_eq!(last.quota_usec, Some(baseline), "{limits:?}");
        assert!(account.balance() < 0.01);
    }

    #[test]
    fn unlimited_mode_is_never_held() {
        let nano = lookup("t3.nano").unwrap();
        let start = Duration::from_secs(1_000_000);
        let mut account = CreditAccount::new(nano, CreditMode::Unlimited, start).unwrap();
        let limit = credit_step(
            &mut account,
            start + CREDIT_INTERVAL,
            5_000_000,
            CREDIT_INTERVAL,
        );
        assert_eq!(limit, CpuMax::unlimited());
        assert!(
            account.surplus() > 0.0,
            "spending beyond the balance is surplus"
        );
    }

    #[test]
    fn a_restarted_supervisor_goes_on_from_the_persisted_account() {
        let nano = lookup("t3.nano").unwrap();
        let start = Duration::from_secs(1_000_000);
        let mut account = CreditAccount::new(nano, CreditMode::Standard, start).unwrap();
        account.update(start + Duration::from_secs(3600), 0);
        let balance = account.balance();
        let saved = serde_json::to_string(&account).unwrap();
        let mut back: CreditAccount = serde_json::from_str(&saved).unwrap();
        // Same cgroup, its counter went on: only the new usage is charged.
        back.start_with_usage(start + Duration::from_secs(3600), 0);
        back.update(start + Duration::from_secs(3600), 60_000_000);
        assert!(
            (balance - back.balance() - 1.0).abs() < 1e-6,
            "one credit spent"
        );
    }
}
