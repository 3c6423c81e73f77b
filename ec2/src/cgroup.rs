//! A small cgroup v2 client for CPU-credit enforcement: a child cgroup per instance under
//! a given root, `cpu.max`, `cgroup.procs` and `cpu.stat`.
//!
//! Only plain file operations on cgroupfs; the caller picks the root (a delegated
//! subtree, or a cgroup2 mount such as `/sys/fs/cgroup`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::cpu_credits::CpuMax;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path} is not a cgroup v2 directory (no cgroup.controllers)")]
    NotCgroup2 { path: PathBuf },
    #[error("invalid cgroup name {0:?}: one path component, not '.' or '..'")]
    BadName(String),
    #[error("the {controller} controller is not available in {path} (cgroup.controllers: {available:?})")]
    ControllerUnavailable {
        controller: String,
        path: PathBuf,
        available: String,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("malformed {path}: {detail}")]
    Malformed { path: PathBuf, detail: String },
}

fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The fields of `cpu.stat` the credit model and tests use (microseconds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStat {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
    /// Only present when the cpu controller is enabled for the cgroup.
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_usec: Option<u64>,
}

/// One cgroup v2 directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Opens an existing cgroup v2 directory (it must have `cgroup.controllers`).
    pub fn open(path: impl Into<PathBuf>) -> Result<Cgroup, CgroupError> {
        let path = path.into();
        if !path.join("cgroup.controllers").is_file() {
            return Err(CgroupError::NotCgroup2 { path });
        }
        Ok(Cgroup { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The controllers this cgroup may hand to its children.
    pub fn available_controllers(&self) -> Result<Vec<String>, CgroupError> {
        let path = self.path.join("cgroup.controllers");
        let text = fs::read_to_string(&path).map_err(io_error("read", &path))?;
        Ok(text.split_whitespace().map(str::to_string).collect())
    }

    /// Enables `controller` for this cgroup's children (`+cpu` into subtree_control).
    /// Note cgroup v2's rule: a non-root cgroup with processes in it cannot do this.
    pub fn enable_controller(&self, controller: &str) -> Result<(), CgroupError> {
        let available = self.available_controllers()?;
        if !available.iter().any(|name| name == controller) {
            return Err(CgroupError::ControllerUnavailable {
                controller: controller.to_string(),
                path: self.path.clone(),
                available: available.join(" "),
            });
        }
        let path = self.path.join("cgroup.subtree_control");
        fs::write(&path, format!("+{controller}")).map_err(io_error("write", &path))
    }

    /// Creates (or reuses) the child `name`.
    pub fn create_child(&self, name: &str) -> Result<Cgroup, CgroupError> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(CgroupError::BadName(name.to_string()));
        }
        let path = self.path.join(name);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(io_error("create", &path)(error)),
        }
        Cgroup::open(path)
    }

    /// Moves a process (all its threads) into this cgroup.
    pub fn add_process(&self, pid: u32) -> Result<(), CgroupError> {
        let path = self.path.join("cgroup.procs");
        fs::write(&path, pid.to_string()).map_err(io_error("write", &path))
    }

    pub fn processes(&self) -> Result<Vec<u32>, CgroupError> {
        let path = self.path.join("cgroup.procs");
        let text = fs::read_to_string(&path).map_err(io_error("read", &path))?;
        text.lines()
            .map(|line| {
                line.trim().parse().map_err(|_| CgroupError::Malformed {
                    path: path.clone(),
                    detail: format!("pid {line:?}"),
                })
            })
            .collect()
    }

    /// Writes `cpu.max` (needs the cpu controller enabled by the parent).
    pub fn set_cpu_max(&self, limit: CpuMax) -> Result<(), CgroupError> {
        let path = self.path.join("cpu.max");
        fs::write(&path, limit.to_string()).map_err(io_error("write", &path))
    }

    pub fn cpu_max(&self) -> Result<CpuMax, CgroupError> {
        let path = self.path.join("cpu.max");
        let text = fs::read_to_string(&path).map_err(io_error("read", &path))?;
        text.trim()
            .parse()
            .map_err(|detail| CgroupError::Malformed { path, detail })
    }

    /// Reads `cpu.stat` (present in every v2 cgroup, with or without the cpu controller).
    pub fn cpu_stat(&self) -> Result<CpuStat, CgroupError> {
        let path = self.path.join("cpu.stat");
        let text = fs::read_to_string(&path).map_err(io_error("read", &path))?;
        parse_cpu_stat(&text).map_err(|detail| CgroupError::Malformed { path, detail })
    }

    /// Removes the (empty) cgroup.
    pub fn remove(self) -> Result<(), CgroupError> {
        fs::remove_dir(&self.path).map_err(io_error("remove", &self.path))
    }
}

fn parse_cpu_stat(text: &str) -> Result<CpuStat, String> {
    let mut stat = CpuStat::default();
    let mut saw_usage = false;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        let value: u64 = value
            .trim()
            .parse()
            .map_err(|_| format!("bad value in line {line:?}"))?;
        match key {
            "usage_usec" => {
                stat.usage_usec = value;
                saw_usage = true;
            }
            "user_usec" => stat.user_usec = value,
            "system_usec" => stat.system_usec = value,
            "nr_periods" => stat.nr_periods = Some(value),
            "nr_throttled" => stat.nr_throttled = Some(value),
            "throttled_usec" => stat.throttled_usec = Some(value),
            _ => {}
        }
    }
    if !saw_usage {
        return Err("no usage_usec".into());
    }
    Ok(stat)
}

/// The first cgroup2 mount point in `/proc/self/mountinfo`, if any.
pub fn find_cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // Fields: id parent major:minor root mount-point options ... - fstype source ...
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let mount_point = left.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    #[test]
    fn parses_cpu_stat_with_and_without_the_cpu_controller() {
        let plain = "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n";
        let stat = parse_cpu_stat(plain).unwrap();
        assert_eq!(
            (stat.usage_usec, stat.user_usec, stat.system_usec),
            (1234, 1000, 234)
        );
        assert_eq!(stat.nr_throttled, None);
        let full = "usage_usec 5\nuser_usec 3\nsystem_usec 2\ncore_sched.force_idle_usec 0\n\
                    nr_periods 10\nnr_throttled 4\nthrottled_usec 999\nnr_bursts 0\nburst_usec 0\n";
        let stat = parse_cpu_stat(full).unwrap();
        assert_eq!(
            (stat.nr_periods, stat.nr_throttled, stat.throttled_usec),
            (Some(10), Some(4), Some(999))
        );
        assert!(parse_cpu_stat("user_usec 1\n").is_err());
        assert!(parse_cpu_stat("usage_usec lots\n").is_err());
    }

    #[test]
    fn refuses_bad_names_and_non_cgroup_directories() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Cgroup::open(dir.path()),
            Err(CgroupError::NotCgroup2 { .. })
        ));
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory\n").unwrap();
        let fake = Cgroup::open(dir.path()).unwrap();
        for bad in ["", ".", "..", "a/b"] {
            assert!(
                matches!(fake.create_child(bad), Err(CgroupError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            fake.enable_controller("io"),
            Err(CgroupError::ControllerUnavailable { .. })
        ));
    }

    struct Busy(Child);

    impl Drop for Busy {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn usage_after(group: &Cgroup, wait: Duration) -> (u64, u64) {
        let before = group.cpu_stat().unwrap().usage_usec;
        std::thread::sleep(wait);
        (before, group.cpu_stat().unwrap().usage_usec)
    }

    /// Real cgroupfs: a busy process moved into a child cgroup shows up in its cpu.stat;
    /// with the cpu controller available, cpu.max holds it to the quota.
    #[test]
    fn real_cgroup_v2_child_counts_and_throttles_a_busy_process() {
        let Some(mount) = find_cgroup2_mount() else {
            eprintln!("SKIP: no cgroup2 mount in /proc/self/mountinfo");
            return;
        };
        let root = match Cgroup::open(&mount) {
            Ok(root) => root,
            Err(error) => {
                eprintln!("SKIP: {error}");
                return;
            }
        };
        let name = format!("ec2-test-{}", std::process::id());
        let group = match root.create_child(&name) {
            Ok(group) => group,
            Err(error) => {
                eprintln!(
                    "SKIP: cgroup2 at {} is not writable here: {error}",
                    mount.display()
                );
                return;
            }
        };
        let busy = Busy(
            Command::new("sh")
                .arg("-c")
                .arg("while :; do :; done")
                .spawn()
                .expect("spawn sh"),
        );
        group.add_process(busy.0.id()).unwrap();
        assert_eq!(group.processes().unwrap(), vec![busy.0.id()]);
        let (before, after) = usage_after(&group, Duration::from_millis(400));
        assert!(
            after - before >= 100_000,
            "busy loop used only {} us",
            after - before
        );

        let cpu_ready = root
            .available_controllers()
            .map(|list| list.iter().any(|c| c == "cpu"))
            .unwrap_or(false)
            && root.enable_controller("cpu").is_ok();
        if cpu_ready {
            let limit = CpuMax {
                quota_usec: Some(10_000),
                period_usec: 100_000,
            };
            group.set_cpu_max(limit).unwrap();
            assert_eq!(group.cpu_max().unwrap(), limit);
            let (before, after) = usage_after(&group, Duration::from_millis(1000));
            assert!(
                after - before < 300_000,
                "10% quota let it use {} us in 1 s",
                after - before
            );
            assert!(group.cpu_stat().unwrap().nr_throttled.unwrap_or(0) > 0);
        } else {
            eprintln!(
                "SKIP (cpu.max part): the cpu controller is not available in {} \
                 (a hybrid v1/v2 host binds it to cgroup v1); cpu.stat was checked",
                mount.display()
            );
        }
        drop(busy);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !group.processes().unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "killed process still in the cgroup"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        group.remove().unwrap();
        assert!(!mount.join(&name).exists());
    }
}
