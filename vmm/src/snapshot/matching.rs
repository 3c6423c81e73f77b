//! How the devices of a restored VM are matched with the snapshot's.
//!
//! The snapshot stores the `VmConfig` the VM was built from; restore builds
//! the same machine from it (same devices in the same order, so the same
//! PCI slots, BARs and interrupt lines) and reopens the backends it names.
//! What may change between the two runs is only where a backend is found:
//! a drive's file, an EBS drive's endpoint and attachment token (a stopped
//! instance gets a new attachment), a tap's name, and where the console
//! goes. Everything the guest can see (vCPUs, memory size, disk identity,
//! read-only flag, queue count, MAC, MTU) must match, or restore fails
//! with a message that names the field.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::SnapshotError;
use crate::config::{DriveConfig, NetConfig, VmConfig};

/// A drive's new backend location (`PUT /snapshot/load`'s
/// `drive_overrides`, or a `--drive` flag at `--restore`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveOverride {
    pub drive_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// An interface's new tap (Firecracker's `network_overrides`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// Everything a restore may change, plus what the caller asserts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreOverrides {
    pub drives: Vec<DriveOverride>,
    pub net: Vec<NetOverride>,
    pub serial_output: Option<PathBuf>,
    /// Asserted machine shape (`--vcpus`/`--mem-mib` given at restore).
    pub vcpu_count: Option<u8>,
    pub mem_size_mib: Option<u32>,
}

fn mismatch(
    field: String,
    saved: impl std::fmt::Debug,
    given: impl std::fmt::Debug,
) -> SnapshotError {
    SnapshotError::Mismatch(format!(
        "{field}: {saved:?} in the snapshot, {given:?} given (only backend locations may change at restore)"
    ))
}

impl RestoreOverrides {
    /// From full device flags, as the CLI takes them: the set of drives and
    /// interfaces must be the snapshot's; fields the guest sees must match.
    pub fn from_devices(
        saved: &VmConfig,
        drives: &[DriveConfig],
        nets: &[NetConfig],
    ) -> Result<Self, SnapshotError> {
        let mut o = Self::default();
        if !drives.is_empty() {
            let mut want: Vec<&str> = saved.drives.iter().map(|d| d.drive_id.as_str()).collect();
            let mut got: Vec<&str> = drives.iter().map(|d| d.drive_id.as_str()).collect();
            want.sort_unstable();
            got.sort_unstable();
            if want != got {
                return Err(mismatch("drives".into(), want, got));
            }
        }
        for d in drives {
            let Some(s) = saved.drives.iter().find(|s| s.drive_id == d.drive_id) else {
                continue;
            };
            let f = |name: &str| format!("drives.{}.{name}", d.drive_id);
            if s.volume_id != d.volume_id {
                return Err(mismatch(f("volume_id"), &s.volume_id, &d.volume_id));
            }
            if s.is_read_only != d.is_read_only {
                return Err(mismatch(f("is_read_only"), s.is_read_only, d.is_read_only));
            }
            if s.num_queues != d.num_queues {
                return Err(mismatch(f("num_queues"), s.num_queues, d.num_queues));
            }
            if d.serial.is_some() && s.guest_serial() != d.guest_serial() {
                return Err(mismatch(f("serial"), s.guest_serial(), d.guest_serial()));
            }
            o.drives.push(DriveOverride {
                drive_id: d.drive_id.clone(),
                path_on_host: d.path_on_host.clone(),
                endpoint: d.endpoint.clone(),
                token: d.token.clone(),
            });
        }
        if !nets.is_empty() {
            let want: Vec<&str> = saved.net.iter().map(|n| n.iface_id.as_str()).collect();
            let got: Vec<&str> = nets.iter().map(|n| n.iface_id.as_str()).collect();
            if want != got {
                return Err(mismatch("network-interfaces".into(), want, got));
            }
        }
        for (i, n) in nets.iter().enumerate() {
            let Some(s) = saved.net.get(i) else { continue };
            let f = |name: &str| format!("network-interfaces.{}.{name}", n.iface_id);
            if n.guest_mac.is_some() && s.mac(i) != n.mac(i) {
                return Err(mismatch(f("guest_mac"), s.mac(i), n.mac(i)));
            }
            if n.mtu.is_some() && s.mtu != n.mtu {
                return Err(mismatch(f("mtu"), s.mtu, n.mtu));
            }
            o.net.push(NetOverride {
                iface_id: n.iface_id.clone(),
                host_dev_name: n.host_dev_name.clone(),
            });
        }
        Ok(o)
    }

    /// The configuration to build the restored VM from.
    pub fn apply(&self, saved: &VmConfig) -> Result<VmConfig, SnapshotError> {
        let mut cfg = saved.clone();
        if !cfg.vfs.is_empty() {
            return Err(SnapshotError::Vfio);
        }
        let m = &cfg.machine_config;
        if let Some(n) = self.vcpu_count.filter(|&n| n != m.vcpu_count) {
            return Err(mismatch(
                "machine-config.vcpu_count".into(),
                m.vcpu_count,
                n,
            ));
        }
        if let Some(n) = self.mem_size_mib.filter(|&n| n != m.mem_size_mib) {
            return Err(mismatch(
                "machine-config.mem_size_mib".into(),
                m.mem_size_mib,
                n,
            ));
        }
        for o in &self.drives {
            let d = cfg
                .drives
                .iter_mut()
                .find(|d| d.drive_id == o.drive_id)
                .ok_or_else(|| {
                    SnapshotError::Mismatch(format!(
                        "drive_overrides: the snapshot has no drive {:?}",
                        o.drive_id
                    ))
                })?;
            if let Some(p) = &o.path_on_host {
                if d.path_on_host.is_none() {
                    return Err(SnapshotError::Mismatch(format!(
                        "drive {:?} is an EBS volume in the snapshot, not a file",
                        o.drive_id
                    )));
                }
                d.path_on_host = Some(p.clone());
            }
            if o.endpoint.is_some() || o.token.is_some() {
                if d.volume_id.is_none() {
                    return Err(SnapshotError::Mismatch(format!(
                        "drive {:?} is a file in the snapshot: endpoint and token do not apply",
                        o.drive_id
                    )));
                }
                if o.endpoint.is_some() {
                    d.endpoint.clone_from(&o.endpoint);
                }
                if o.token.is_some() {
                    d.token.clone_from(&o.token);
                }
            }
        }
        for o in &self.net {
            let n = cfg
                .net
                .iter_mut()
                .find(|n| n.iface_id == o.iface_id)
                .ok_or_else(|| {
                    SnapshotError::Mismatch(format!(
                        "network_overrides: the snapshot has no interface {:?}",
                        o.iface_id
                    ))
                })?;
            n.host_dev_name.clone_from(&o.host_dev_name);
        }
        if let Some(p) = &self.serial_output {
            cfg.serial.output_path = Some(p.clone());
        }
        validate_for_restore(&cfg)?;
        Ok(cfg)
    }
}

/// `VmConfig::validate` without the boot source: a restored VM loads no
/// kernel, so its image need not exist any more.
fn validate_for_restore(cfg: &VmConfig) -> Result<(), SnapshotError> {
    let mut probe = cfg.clone();
    probe.boot_source.kernel_image_path = std::env::current_exe().unwrap_or_default();
    probe.boot_source.initrd_path = None;
    probe
        .validate()
        .map_err(|e| SnapshotError::Config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk image that exists (validation checks drive paths).
    fn image(name: &str) -> String {
        let dir = std::env::temp_dir().join(format!("vmm-matching-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, [0u8; 4096]).unwrap();
        p.to_string_lossy().into_owned()
    }

    fn file_a() -> String {
        image("a.img")
    }

    fn file_b() -> String {
        image("b.img")
    }

    fn saved() -> VmConfig {
        let mut c = VmConfig::from_json(
            r#"{"boot-source": {"kernel_image_path": "/gone/vmlinux"},
                "machine-config": {"vcpu_count": 2, "mem_size_mib": 256}}"#,
        )
        .unwrap();
        c.drives
            .push(DriveConfig::from_cli(&format!("id=root,path={}", file_a())).unwrap());
        c.drives.push(
            DriveConfig::from_cli("id=data,vol=vol-0123456789abcdef0,endpoint=unix:/a,token=old")
                .unwrap(),
        );
        c.net
            .push(NetConfig::from_cli("tap=tap0,mac=02:00:00:00:00:01", 0).unwrap());
        c
    }

    #[test]
    fn backends_may_move_but_the_guest_view_may_not() {
        let s = saved();
        let o = RestoreOverrides {
            drives: vec![DriveOverride {
                drive_id: "data".into(),
                endpoint: Some("unix:/b".into()),
                token: Some("new".into()),
                ..Default::default()
            }],
            net: vec![NetOverride {
                iface_id: "eth0".into(),
                host_dev_name: "tap9".into(),
            }],
            ..Default::default()
        };
        let cfg = o.apply(&s).unwrap();
        assert_eq!(cfg.drives[1].token.as_deref(), Some("new"));
        assert_eq!(cfg.drives[1].endpoint.as_deref(), Some("unix:/b"));
        assert_eq!(cfg.net[0].host_dev_name, "tap9");

        let e = RestoreOverrides {
            mem_size_mib: Some(512),
            ..Default::default()
        }
        .apply(&s)
        .unwrap_err();
        assert!(e.to_string().contains("mem_size_mib"), "{e}");
        let e = RestoreOverrides {
            drives: vec![DriveOverride {
                drive_id: "root".into(),
                token: Some("x".into()),
                ..Default::default()
            }],
            ..Default::default()
        }
        .apply(&s)
        .unwrap_err();
        assert!(e.to_string().contains("file in the snapshot"), "{e}");
    }

    #[test]
    fn cli_device_flags_must_list_the_same_devices() {
        let s = saved();
        let root = DriveConfig::from_cli(&format!("id=root,path={}", file_b())).unwrap();
        let e = RestoreOverrides::from_devices(&s, std::slice::from_ref(&root), &[]).unwrap_err();
        assert!(e.to_string().contains("drives"), "{e}");
        let data = DriveConfig::from_cli(
            "id=data,vol=vol-0123456789abcdef0,endpoint=unix:/c,token=t2,ro=on",
        )
        .unwrap();
        let e = RestoreOverrides::from_devices(&s, &[root.clone(), data], &[]).unwrap_err();
        assert!(e.to_string().contains("is_read_only"), "{e}");
        let data =
            DriveConfig::from_cli("id=data,vol=vol-0123456789abcdef0,endpoint=unix:/c,token=t2")
                .unwrap();
        let net = NetConfig::from_cli("tap=tap5,mac=02:00:00:00:00:01", 0).unwrap();
        let o = RestoreOverrides::from_devices(&s, &[root, data], &[net]).unwrap();
        let cfg = o.apply(&s).unwrap();
        assert_eq!(
            cfg.drives[0].path_on_host.as_deref(),
            Some(file_b().as_ref())
        );
        assert_eq!(cfg.drives[1].token.as_deref(), Some("t2"));
        assert_eq!(cfg.net[0].host_dev_name, "tap5");
        let bad_mac = NetConfig::from_cli("tap=tap5,mac=02:00:00:00:00:02", 0).unwrap();
        assert!(RestoreOverrides::from_devices(&s, &[], &[bad_mac]).is_err());
    }
}
