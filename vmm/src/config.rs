//! One source of truth for a VM's configuration: the CLI flags, the JSON
//! config file and the REST API all build a [`VmConfig`] and validate it
//! here. Field names follow Firecracker's API where one exists.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::arch::smbios::SmbiosConfig;
pub use devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};

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

/// A virtio-blk drive: a raw file (instance store, image) or an EBS
/// volume served by `ebsd` over NBD.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    pub drive_id: String,
    /// A raw file or block device on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// An EBS volume id (`vol-` + 17 hex digits) on `endpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    /// The block service's NBD endpoint: `unix:/path` or `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The attachment's token (from AttachVolume's export name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default)]
    pub is_read_only: bool,
    /// Serial number the guest sees (/dev/disk/by-id/virtio-<serial>);
    /// defaults to the drive id. At most 20 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default = "one_queue")]
    pub num_queues: u16,
    /// Firecracker-style limiter: bandwidth (bytes) and ops buckets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

fn one_queue() -> u16 {
    1
}

impl DriveConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id_ok = !self.drive_id.is_empty()
            && self.drive_id.len() <= 64
            && self
                .drive_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(ConfigError::new(
                "drive_id",
                format!(
                    "{:?} must be 1-64 characters of [A-Za-z0-9_-]",
                    self.drive_id
                ),
            ));
        }
        match (&self.path_on_host, &self.volume_id) {
            (Some(path), None) => check_drive_file(path)?,
            (None, Some(vol)) => {
                let ok = vol.len() == 21
                    && vol.starts_with("vol-")
                    && vol[4..]
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
                if !ok {
                    return Err(ConfigError::new(
                        "volume_id",
                        format!("{vol:?} is not a volume id (vol- and 17 lowercase hex digits)"),
                    ));
                }
                if self.endpoint.is_none() {
                    return Err(ConfigError::new(
                        "endpoint",
                        "an EBS volume needs the block service's NBD endpoint",
                    ));
                }
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "volume_id",
                    "give either path_on_host or volume_id, not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "path_on_host",
                    "give path_on_host (a file) or volume_id (EBS)",
                ))
            }
        }
        if self.path_on_host.is_some() && (self.endpoint.is_some() || self.token.is_some()) {
            return Err(ConfigError::new(
                "endpoint",
                "endpoint and token apply to EBS volumes only",
            ));
        }
        if let Some(s) = &self.serial {
            if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::new(
                    "serial",
                    "must be 1-20 printable ASCII characters",
                ));
            }
        }
        if !(1..=16).contains(&self.num_queues) {
            return Err(ConfigError::new(
                "num_queues",
                format!("must be between 1 and 16, got {}", self.num_queues),
            ));
        }
        Ok(())
    }

    /// Parse the CLI form `id=ID,path=FILE[,ro=on][,serial=S][,queues=N]`.
    pub fn from_cli(spec: &str) -> Result<Self, ConfigError> {
        let mut id = None;
        let mut path = None;
        let mut vol = None;
        let mut endpoint = None;
        let mut token = None;
        let mut read_only = false;
        let mut limiter = RateLimiterConfig::default();
        // `bw=` bytes/s and `iops=` ops/s: a one-second bucket refilled in a second.
        let per_second = |v: &str, what: &str| -> Result<Option<TokenBucketConfig>, ConfigError> {
            let rate: u64 = v
                .parse()
                .map_err(|_| ConfigError::new("--drive", format!("{what}={v} is not a number")))?;
            Ok((rate > 0).then_some(TokenBucketConfig {
                size: rate,
                one_time_burst: 0,
                refill_time: 1000,
            }))
        };
        let mut serial = None;
        let mut queues = 1u16;
        for part in spec.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| ConfigError::new("--drive", format!("{part:?} is not key=value")))?;
            match k {
                "id" => id = Some(v.to_string()),
                "path" => path = Some(PathBuf::from(v)),
                "vol" => vol = Some(v.to_string()),
                "endpoint" => endpoint = Some(v.to_string()),
                "token" => token = Some(v.to_string()),
                "ro" | "readonly" => {
                    read_only = match v {
                        "on" | "true" | "yes" | "1" => true,
                        "off" | "false" | "no" | "0" => false,
                        _ => {
                            return Err(ConfigError::new(
                                "--drive",
                                format!("ro={v}: use on or off"),
                            ))
                        }
                    }
                }
                "serial" => serial = Some(v.to_string()),
                "bw" => limiter.bandwidth = per_second(v, "bw")?,
                "iops" => limiter.ops = per_second(v, "iops")?,
                "queues" => {
                    queues = v.parse().map_err(|_| {
                        ConfigError::new("--drive", format!("queues={v} is not a number"))
                    })?
                }
                other => {
                    return Err(ConfigError::new(
                        "--drive",
                        format!("unknown key {other:?} (known: id, path, vol, endpoint, token, ro, serial, queues, bw, iops)"),
                    ))
                }
            }
        }
        Ok(Self {
            drive_id: id.ok_or_else(|| ConfigError::new("--drive", "id= is required"))?,
            path_on_host: path,
            volume_id: vol,
            endpoint,
            token,
            is_read_only: read_only,
            serial,
            num_queues: queues,
            rate_limiter: (limiter != RateLimiterConfig::default()).then_some(limiter),
        })
    }
}

/// A virtio-net interface on a tap device ("emulated" networking).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    pub iface_id: String,
    /// The tap to open (created when missing and the VMM may).
    pub host_dev_name: String,
    /// The guest's MAC (the ENI's); a locally administered one by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// `ADDR/PREFIX`: the ENI's private IP, handed out by the VMM's DHCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_ip: Option<String>,
    /// Default gateway; the subnet's first address when absent (as in a VPC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Limits frames to the guest (Firecracker's shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits frames from the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// Parse `a.b.c.d/n`.
pub fn parse_cidr(text: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let (ip, prefix) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not ADDR/PREFIX"))?;
    let ip: std::net::Ipv4Addr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IPv4 address"))?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (8..=30).contains(p))
        .ok_or_else(|| format!("prefix /{prefix} must be between 8 and 30"))?;
    Ok((ip, prefix))
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(&parts) {
        if p.len() != 2 {
            return Err(format!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| format!("{text:?} is not a MAC address"))?;
    }
    if mac[0] & 1 == 1 {
        return Err(format!("{text:?} is a multicast address"));
    }
    Ok(mac)
}

impl NetConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id_ok = !self.iface_id.is_empty()
            && self.iface_id.len() <= 64
            && self
                .iface_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(ConfigError::new(
                "iface_id",
                "must be 1-64 characters of [A-Za-z0-9_-]",
            ));
        }
        if self.host_dev_name.is_empty()
            || self.host_dev_name.len() > 15
            || !self
                .host_dev_name
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'/')
        {
            return Err(ConfigError::new(
                "host_dev_name",
                format!(
                    "{:?} is not a valid interface name (1-15 characters)",
                    self.host_dev_name
                ),
            ));
        }
        if let Some(mac) = &self.guest_mac {
            parse_mac(mac).map_err(|e| ConfigError::new("guest_mac", e))?;
        }
        if let Some(ip) = &self.guest_ip {
            parse_cidr(ip).map_err(|e| ConfigError::new("guest_ip", e))?;
        }
        if let Some(gw) = &self.gateway {
            if self.guest_ip.is_none() {
                return Err(ConfigError::new("gateway", "needs guest_ip"));
            }
            gw.parse::<std::net::Ipv4Addr>().map_err(|_| {
                ConfigError::new("gateway", format!("{gw:?} is not an IPv4 address"))
            })?;
        }
        if let Some(mtu) = self.mtu {
            if !(576..=9001).contains(&mtu) {
                return Err(ConfigError::new(
                    "mtu",
                    format!("must be between 576 and 9001, got {mtu}"),
                ));
            }
        }
        Ok(())
    }

    /// The DHCP lease this interface hands out, when it has an IP.
    pub fn dhcp_lease(&self, mac: [u8; 6]) -> Option<crate::dhcp::DhcpLease> {
        let (ip, prefix_len) = parse_cidr(self.guest_ip.as_deref()?).ok()?;
        let mask = u32::MAX << (32 - u32::from(prefix_len));
        let gateway = self
            .gateway
            .as_deref()
            .and_then(|g| g.parse().ok())
            .unwrap_or_else(|| std::net::Ipv4Addr::from((u32::from(ip) & mask) + 1));
        let o = ip.octets();
        Some(crate::dhcp::DhcpLease {
            guest_mac: mac,
            ip,
            prefix_len,
            gateway,
            dns: None,
            mtu: self.mtu.unwrap_or(1500),
            lease_secs: 3600,
            hostname: Some(format!("ip-{}-{}-{}-{}", o[0], o[1], o[2], o[3])),
        })
    }

    pub fn mac(&self, index: usize) -> [u8; 6] {
        self.guest_mac
            .as_deref()
            .and_then(|m| parse_mac(m).ok())
            // Locally administered, unicast, unique per interface.
            .unwrap_or([0x06, 0x00, 0xac, 0x10, 0x00, index as u8 + 2])
    }

    /// Parse the CLI form `tap=NAME[,mac=MAC][,id=ID]`.
    pub fn from_cli(spec: &str, index: usize) -> Result<Self, ConfigError> {
        let mut tap = None;
        let mut mac = None;
        let mut ip = None;
        let mut gw = None;
        let mut mtu = None;
        let mut rx = None;
        let mut tx = None;
        // `rx_bw=`/`tx_bw=` bytes per second: a one-second bucket.
        let bw = |v: &str, what: &str| -> Result<Option<RateLimiterConfig>, ConfigError> {
            let rate: u64 = v
                .parse()
                .map_err(|_| ConfigError::new("--net", format!("{what}={v} is not a number")))?;
            Ok((rate > 0).then_some(RateLimiterConfig {
                bandwidth: Some(TokenBucketConfig {
                    size: rate,
                    one_time_burst: 0,
                    refill_time: 1000,
                }),
                ops: None,
            }))
        };
        let mut id = format!("eth{index}");
        for part in spec.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| ConfigError::new("--net", format!("{part:?} is not key=value")))?;
            match k {
                "tap" => tap = Some(v.to_string()),
                "mac" => mac = Some(v.to_string()),
                "ip" => ip = Some(v.to_string()),
                "rx_bw" => rx = bw(v, "rx_bw")?,
                "tx_bw" => tx = bw(v, "tx_bw")?,
                "gw" => gw = Some(v.to_string()),
                "mtu" => {
                    mtu = Some(v.parse().map_err(|_| {
                        ConfigError::new("--net", format!("mtu={v} is not a number"))
                    })?)
                }
                "id" => id = v.to_string(),
                other => {
                    return Err(ConfigError::new(
                        "--net",
                        format!(
                        "unknown key {other:?} (known: tap, mac, id, ip, gw, mtu, rx_bw, tx_bw)"
                    ),
                    ))
                }
            }
        }
        Ok(Self {
            iface_id: id,
            host_dev_name: tap.ok_or_else(|| ConfigError::new("--net", "tap= is required"))?,
            guest_mac: mac,
            guest_ip: ip,
            gateway: gw,
            mtu,
            rx_rate_limiter: rx,
            tx_rate_limiter: tx,
        })
    }
}

fn check_drive_file(path: &std::path::Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && !m.len().is_multiple_of(512) => Err(ConfigError::new(
            "path_on_host",
            format!(
                "{}: size {} is not a multiple of 512 bytes",
                path.display(),
                m.len()
            ),
        )),
        Ok(m) if m.is_file() || m.file_type().is_block_device() => Ok(()),
        Ok(_) => Err(ConfigError::new(
            "path_on_host",
            format!("{} is not a regular file or block device", path.display()),
        )),
        Err(e) => Err(ConfigError::new(
            "path_on_host",
            format!("cannot access {}: {e}", path.display()),
        )),
    }
}

impl DriveConfig {
    /// What the guest sees as the disk's serial: the given one, or for an
    /// EBS volume its id without the dash (20 bytes, as EC2's NVMe serials:
    /// `vol0123456789abcdef0`), else the drive id.
    pub fn guest_serial(&self) -> String {
        if let Some(s) = &self.serial {
            return s.clone();
        }
        match &self.volume_id {
            Some(v) => v.replacen('-', "", 1),
            None => self.drive_id.chars().take(20).collect(),
        }
    }
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

/// A PCI function passed through with VFIO: a VF given by address (bound
/// to vfio-pci already), or leased from an SR-IOV VF pool for the lifetime
/// of the VM with the ENI's MAC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfConfig {
    /// `dddd:bb:ss.f`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bdf: Option<String>,
    /// A VF pool's state directory (see docs/sriov.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PathBuf>,
    /// The ENI's MAC, set on the VF by the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Who holds the lease (defaults to the SMBIOS serial or "vmm-<pid>").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

impl VfConfig {
    /// `--vf BDF` or `--vf pool=DIR,mac=MAC[,instance=ID]`.
    pub fn from_cli(spec: &str) -> Result<Self, ConfigError> {
        if !spec.contains('=') {
            return Ok(Self {
                bdf: Some(spec.to_string()),
                pool: None,
                mac: None,
                instance_id: None,
            });
        }
        let mut vf = Self {
            bdf: None,
            pool: None,
            mac: None,
            instance_id: None,
        };
        for part in spec.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| ConfigError::new("--vf", format!("{part:?} is not key=value")))?;
            match k {
                "pool" => vf.pool = Some(PathBuf::from(v)),
                "mac" => vf.mac = Some(v.to_string()),
                "instance" => vf.instance_id = Some(v.to_string()),
                "bdf" => vf.bdf = Some(v.to_string()),
                other => {
                    return Err(ConfigError::new(
                        "--vf",
                        format!("unknown key {other:?} (known: pool, mac, instance, bdf)"),
                    ))
                }
            }
        }
        Ok(vf)
    }
}

impl VfConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.bdf, &self.pool) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new("pool", "give bdf or pool, not both"))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "bdf",
                    "give bdf (a VF on vfio-pci) or pool",
                ))
            }
            (None, Some(_)) => {
                let mac = self
                    .mac
                    .as_deref()
                    .ok_or_else(|| ConfigError::new("mac", "a pool lease needs the ENI's MAC"))?;
                parse_mac(mac).map_err(|e| ConfigError::new("mac", e))?;
                return Ok(());
            }
            (Some(_), None) => {}
        }
        let bdf = self.bdf.as_deref().unwrap_or_default();
        let b = bdf.as_bytes();
        let ok = b.len() == 12
            && b[4] == b':'
            && b[7] == b':'
            && b[10] == b'.'
            && b.iter()
                .enumerate()
                .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit());
        if ok {
            Ok(())
        } else {
            Err(ConfigError::new(
                "bdf",
                format!("{bdf:?} is not a PCI address (dddd:bb:ss.f)"),
            ))
        }
    }
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
