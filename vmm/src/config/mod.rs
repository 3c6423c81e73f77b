//! One source of truth for a VM's configuration: the CLI flags, the JSON
//! config file and the REST API all build a [`VmConfig`] and validate it
//! here. Field names follow Firecracker's API where one exists.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::arch::smbios::SmbiosConfig;
pub use devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

mod devices_config;
pub use devices_config::{parse_cidr, parse_mac, DriveConfig, NetConfig, VfConfig};

/// Most vCPUs a guest may have (topology and MADT sized for it).
pub const MAX_VCPUS: u8 = 32;
/// Smallest guest we agree to boot: a kernel with an initramfs needs more.
pub const MIN_MEM_MIB: u32 = 32;
/// Largest guest memory we accept (1 TiB).
pub const MAX_MEM_MIB: u32 = 1 << 20;

pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 panic=1 i8042.noaux i8042.nomux";

/// A validation failure that names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    pub vcpu_count: u8,
    pub mem_size_mib: u32,
    /// Simultaneous multithreading is not offered: vCPUs are cores.
    #[serde(default)]
    pub smt: bool,
    #[serde(default)]
    pub smbios: SmbiosConfig,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            smbios: SmbiosConfig::default(),
        }
    }
}

impl MachineConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(ConfigError::new(
                "vcpu_count",
                format!("must be between 1 and {MAX_VCPUS}, got {}", self.vcpu_count),
            ));
        }
        if self.mem_size_mib < MIN_MEM_MIB {
            return Err(ConfigError::new(
                "mem_size_mib",
                format!(
                    "{} MiB is too small: a Linux guest needs at least {MIN_MEM_MIB} MiB",
                    self.mem_size_mib
                ),
            ));
        }
        if self.mem_size_mib > MAX_MEM_MIB {
            return Err(ConfigError::new(
                "mem_size_mib",
                format!(
                    "must be at most {MAX_MEM_MIB} MiB, got {}",
                    self.mem_size_mib
                ),
            ));
        }
        if self.smt {
            return Err(ConfigError::new(
                "smt",
                "simultaneous multithreading is not supported; vCPUs are presented as cores",
            ));
        }
        self.smbios
            .validate()
            .map_err(|e| ConfigError::new("smbios", e.to_string()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    pub kernel_image_path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

impl BootSource {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_readable_file("kernel_image_path", &self.kernel_image_path)?;
        if let Some(initrd) = &self.initrd_path {
            check_readable_file("initrd_path", initrd)?;
        }
        if let Some(args) = &self.boot_args {
            if args.len() >= crate::arch::layout::CMDLINE_MAX_SIZE {
                return Err(ConfigError::new(
                    "boot_args",
                    format!(
                        "{} bytes is longer than the {}-byte limit",
                        args.len(),
                        crate::arch::layout::CMDLINE_MAX_SIZE - 1
                    ),
                ));
            }
            if !args.is_ascii() || args.contains('\0') {
                return Err(ConfigError::new(
                    "boot_args",
                    "must be printable ASCII without NUL bytes",
                ));
            }
        }
        Ok(())
    }

    pub fn cmdline(&self) -> &str {
        self.boot_args.as_deref().unwrap_or(DEFAULT_BOOT_ARGS)
    }
}

fn check_readable_file(field: &str, path: &std::path::Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(ConfigError::new(
            field,
            format!("{} is not a regular file", path.display()),
        )),
        Err(e) => Err(ConfigError::new(
            field,
            format!("cannot access {}: {e}", path.display()),
        )),
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Where guest console output goes; stdout when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_path: Option<PathBuf>,
}
/// A whole VM, as in a `--config` file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[serde(rename = "boot-source")]
    pub boot_source: BootSource,
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfig,
    #[serde(default)]
    pub serial: SerialConfig,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<DriveConfig>,
    #[serde(
        rename = "network-interfaces",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub net: Vec<NetConfig>,
    /// The instance record the metadata service answers with (imds crate
    /// format), served on the first network interface at 169.254.169.254.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds: Option<serde_json::Value>,
    /// PCI functions passed through with VFIO ("enhanced networking").
    #[serde(
        rename = "vfio-devices",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub vfs: Vec<VfConfig>,
}
/// Check an instance record for the metadata service.
pub fn parse_imds_record(value: &serde_json::Value) -> Result<imds::InstanceRecord, ConfigError> {
    let text = value.to_string();
    from_json_slice(text.as_bytes(), "imds")
}

impl VmConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.machine_config
            .validate()
            .map_err(|e| ConfigError::new(format!("machine-config.{}", e.field), e.reason))?;
        self.boot_source
            .validate()
            .map_err(|e| ConfigError::new(format!("boot-source.{}", e.field), e.reason))?;
        let mut ids = std::collections::HashSet::new();
        for (i, d) in self.drives.iter().enumerate() {
            d.validate()
                .map_err(|e| ConfigError::new(format!("drives[{i}].{}", e.field), e.reason))?;
            if !ids.insert(d.drive_id.as_str()) {
                return Err(ConfigError::new(
                    format!("drives[{i}].drive_id"),
                    format!("{:?} is used by another drive", d.drive_id),
                ));
            }
        }
        if let Some(record) = &self.imds {
            parse_imds_record(record)
                .map_err(|e| ConfigError::new(format!("imds.{}", e.field), e.reason))?;
            if self.net.is_empty() {
                return Err(ConfigError::new(
                    "imds",
                    "the metadata service needs a network interface to answer on (--net)",
                ));
            }
        }
        for (i, vf) in self.vfs.iter().enumerate() {
            vf.validate().map_err(|e| {
                ConfigError::new(format!("vfio-devices[{i}].{}", e.field), e.reason)
            })?;
        }
        let mut ifaces = std::collections::HashSet::new();
        for (i, n) in self.net.iter().enumerate() {
            n.validate().map_err(|e| {
                ConfigError::new(format!("network-interfaces[{i}].{}", e.field), e.reason)
            })?;
            if !ifaces.insert(n.iface_id.as_str()) {
                return Err(ConfigError::new(
                    format!("network-interfaces[{i}].iface_id"),
                    format!("{:?} is used by another interface", n.iface_id),
                ));
            }
        }
        Ok(())
    }

    /// Parse a config file's JSON, turning serde's messages into field errors.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        from_json_slice(text.as_bytes(), "config")
    }
}

/// Deserialize JSON, naming the path of the offending field on error
/// (`machine-config.vcpu_count: invalid type ...`).
pub fn from_json_slice<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let msg = e.into_inner().to_string();
        // The path already ends in an unknown field's name, but a missing
        // field is reported at its parent: name the field itself.
        let named = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.starts_with("missing field"))
            .map(str::to_string);
        let field = match (path.as_str(), named) {
            (".", Some(n)) => n,
            ("." | "", None) => what.to_string(),
            (p, Some(n)) => format!("{p}.{n}"),
            (p, None) => p.to_string(),
        };
        ConfigError::new(field, msg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_limits_name_the_field() {
        let mut m = MachineConfig::default();
        assert!(m.validate().is_ok());
        m.vcpu_count = 33;
        assert_eq!(m.validate().unwrap_err().field, "vcpu_count");
        m.vcpu_count = 0;
        assert_eq!(m.validate().unwrap_err().field, "vcpu_count");
        m.vcpu_count = 2;
        m.mem_size_mib = 8;
        let e = m.validate().unwrap_err();
        assert_eq!(e.field, "mem_size_mib");
        assert!(e.reason.contains("too small"), "{e}");
        m.mem_size_mib = 256;
        m.smt = true;
        assert_eq!(m.validate().unwrap_err().field, "smt");
    }

    #[test]
    fn config_file_errors_are_specific() {
        let e = VmConfig::from_json(r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64}}"#)
            .unwrap_err();
        assert_eq!(e.field, "boot-source");
        let e = VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": "/x"}, "machine-config": {"vcpu_count": "two", "mem_size_mib": 64}}"#)
            .unwrap_err();
        assert_eq!(e.field, "machine-config.vcpu_count");
        let e = VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": "/x", "bogus": 1}}"#)
            .unwrap_err();
        assert_eq!(e.field, "boot-source.bogus");
        let cfg = VmConfig::from_json(
            r#"{"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"},
                "machine-config": {"vcpu_count": 2, "mem_size_mib": 256}}"#,
        )
        .unwrap();
        let e = cfg.validate().unwrap_err();
        assert_eq!(e.field, "boot-source.kernel_image_path");
        assert!(e.reason.contains("/nonexistent/vmlinux"));
    }

    #[test]
    fn macs_and_net_cli() {
        assert_eq!(
            parse_mac("02:00:ac:10:00:05").unwrap(),
            [2, 0, 0xac, 0x10, 0, 5]
        );
        assert!(parse_mac("01:00:00:00:00:00").is_err(), "multicast");
        assert!(parse_mac("02:00:ac:10:00").is_err());
        assert!(parse_mac("zz:00:ac:10:00:05").is_err());
        let n = NetConfig::from_cli("tap=tap0,mac=02:00:00:00:00:01", 0).unwrap();
        assert_eq!(
            (n.iface_id.as_str(), n.host_dev_name.as_str()),
            ("eth0", "tap0")
        );
        assert!(n.validate().is_ok());
        assert_eq!(
            NetConfig::from_cli("mac=02:00:00:00:00:01", 0)
                .unwrap_err()
                .field,
            "--net"
        );
        let bad = NetConfig {
            iface_id: "eth0".into(),
            host_dev_name: "a-name-that-is-far-too-long".into(),
            guest_mac: None,
            guest_ip: None,
            gateway: None,
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        assert_eq!(bad.validate().unwrap_err().field, "host_dev_name");
        let n = NetConfig::from_cli("tap=tap0,ip=172.31.16.10/20,mtu=9001", 0).unwrap();
        assert!(n.validate().is_ok());
        let lease = n.dhcp_lease([2, 0, 0, 0, 0, 1]).unwrap();
        assert_eq!(lease.gateway, std::net::Ipv4Addr::new(172, 31, 16, 1));
        assert_eq!(lease.netmask(), std::net::Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(lease.hostname.as_deref(), Some("ip-172-31-16-10"));
        let bad = NetConfig::from_cli("tap=tap0,ip=172.31.16.10/33", 0).unwrap();
        assert_eq!(bad.validate().unwrap_err().field, "guest_ip");
        let bad = NetConfig::from_cli("tap=tap0,ip=10.0.0.2/24,mtu=100", 0).unwrap();
        assert_eq!(bad.validate().unwrap_err().field, "mtu");
    }

    #[test]
    fn boot_args_must_be_sane() {
        let b = BootSource {
            kernel_image_path: "/proc/self/exe".into(),
            initrd_path: None,
            boot_args: Some("console=ttyS0\0".into()),
        };
        assert_eq!(b.validate().unwrap_err().field, "boot_args");
    }
}
