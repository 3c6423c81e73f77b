//! Device sections of the VM configuration: drives, network interfaces,
//! passed-through VFs. Each validates itself and names the failing field.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, RateLimiterConfig, TokenBucketConfig};

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

/// A PCI function passed through with VFIO: a VF given by address (bound
/// to vfio-pci already), or leased from an SR-IOV VF pool for the lifetime
/// of the VM with the ENI's MAC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfConfig {
    /// Names the VF in the API (`/vfio-devices/{vf_id}`); `vf<N>` by
    /// default, N its position.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vf_id: String,
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
                vf_id: String::new(),
                bdf: Some(spec.to_string()),
                pool: None,
                mac: None,
                instance_id: None,
            });
        }
        let mut vf = Self {
            vf_id: String::new(),
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
                "id" => vf.vf_id = v.to_string(),
                "bdf" => vf.bdf = Some(v.to_string()),
                other => {
                    return Err(ConfigError::new(
                        "--vf",
                        format!("unknown key {other:?} (known: pool, mac, instance, bdf, id)"),
                    ))
                }
            }
        }
        Ok(vf)
    }
}

impl VfConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.vf_id.is_empty()
            && (self.vf_id.len() > 64
                || !self
                    .vf_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(ConfigError::new(
                "vf_id",
                "must be 1-64 characters of [A-Za-z0-9_-]",
            ));
        }
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
