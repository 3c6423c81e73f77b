//! Enhanced networking end to end in the test host (QEMU's igb 82576 with
//! SR-IOV behind an emulated intel-iommu, nested KVM): enable 2 VFs; vmm
//! leases one from the VF pool (bound to vfio-pci, ENI MAC set on the PF)
//! and boots the Debian guest with the VF passed through. The guest's igbvf driver binds,
//! reads the MAC, gets link and pings QEMU's user-network gateway; MSI-X
//! interrupts go VFIO -> eventfd -> KVM irqfd. The VF's traffic bypasses the
//! VMM, so the metadata service comes from `imdsd` on the PF, at
//! 169.254.169.254, keyed by the guest's address. After vmm exits, the VF goes
//! back to the pool. Also the failure paths: a VF not on vfio-pci, an
//! unknown address.

use std::path::Path;
use std::time::Duration;

use integration_tests::{base64, field, guest_assets, sh_quote, testhost_run, workspace_bin};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// The instance record imdsd serves for the guest's VF address.
const IMDSD_CONFIG: &str = r#"{"instances": [{
  "instance_id": "i-0fedcba9876543210",
  "image_id": "ami-0abcdef1234567890",
  "instance_type": "c5n.large",
  "reservation_id": "r-0123456789abcdef0",
  "placement": {"availability_zone": "eu-west-1b", "availability_zone_id": "euw1-az2"},
  "network_interfaces": [{
    "mac": "02:00:ac:1f:10:0b", "interface_id": "eni-0456", "device_number": 0,
    "private_ipv4s": ["10.0.2.16"], "public_ipv4s": [],
    "subnet_id": "subnet-01", "subnet_ipv4_cidr_block": "10.0.2.0/24",
    "vpc_id": "vpc-01", "vpc_ipv4_cidr_blocks": ["10.0.0.0/16"],
    "security_groups": [{"id": "sg-01", "name": "default"}]
  }],
  "source_addresses": ["10.0.2.16"]
}]}"#;

#[test]
fn guest_drives_a_passed_through_vf() {
    let assets = guest_assets();
    let ctl = workspace_bin("sriov", "sriovctl");
    let imdsd = workspace_bin("imds", "imdsd");
    let imdsd_config = Path::new(env!("CARGO_TARGET_TMPDIR")).join("imdsd-vf.json");
    std::fs::write(&imdsd_config, IMDSD_CONFIG).unwrap();
    let guest = r#"
echo "MAC $(cat /sys/class/net/eth0/address)"
echo "DRIVER $(basename $(readlink /sys/class/net/eth0/device/driver))"
ip link set eth0 up
for i in $(seq 40); do [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = 1 ] && break; sleep 0.5; done
echo "CARRIER $(cat /sys/class/net/eth0/carrier)"
ip addr add 10.0.2.16/24 dev eth0
echo "PING $(ping -c 3 -W 3 10.0.2.2 | grep -c 'bytes from')"
ip route add 169.254.169.254 dev eth0
echo "IID $(wget -q -O - http://169.254.169.254/latest/meta-data/instance-id)"
"#;
    let cmdline = format!(
        "console=ttyS0 quiet panic=-1 vmm.run={}",
        base64(guest.as_bytes())
    );
    let script = format!(
        r#"set -e
ip link set eth0 up; sleep 1
# IMDS for VF guests lives on the host side: imdsd on the PF.
ip addr add 10.0.2.15/24 dev eth0
ip addr add 169.254.169.254/32 dev eth0
{imdsd} --config {imdsd_config} --listen 169.254.169.254:80 >/dev/null 2>&1 &
{ctl} enable eth0 2 >/dev/null
VF2=$(basename $(readlink /sys/class/net/eth0/device/virtfn1))
set +e
msg=$({vmm} --kernel {k} --initrd {i} --vf $VF2 2>&1 >/dev/null); echo "NOT-VFIO rc=$? $msg"
msg=$({vmm} --kernel {k} --initrd {i} --vf 0000:7f:1f.7 2>&1 >/dev/null); echo "NO-DEVICE rc=$? $msg"
set -e
VF=$(basename $(readlink /sys/class/net/eth0/device/virtfn0))
set +e
{vmm} --kernel {k} --initrd {i} --mem-mib 256 --cmdline {c} \
    --vf pool=/run/vf-pool,mac=02:00:ac:1f:10:0b,instance=i-0123456789abcdef0
echo "VMM-EXIT $?"
echo "RELEASED driver=$(basename $(readlink /sys/bus/pci/devices/$VF/driver)) leases=$({ctl} pool --state-dir /run/vf-pool status | grep -c i-0123456789abcdef0)"
"#,
        ctl = sh_quote(&ctl.to_string_lossy()),
        imdsd = sh_quote(&imdsd.to_string_lossy()),
        imdsd_config = sh_quote(&imdsd_config.to_string_lossy()),
        vmm = sh_quote(VMM),
        k = sh_quote(&assets.vmlinux.to_string_lossy()),
        i = sh_quote(&assets.initramfs.to_string_lossy()),
        c = sh_quote(&cmdline),
    );
    let out = testhost_run(&script, Duration::from_secs(600));
    let all = format!("{}\n--- stderr ---\n{}", out.stdout, out.stderr);
    assert_eq!(out.status, 0, "{all}");
    let not_vfio = field(&out.stdout, "NOT-VFIO").unwrap_or("");
    assert!(
        not_vfio.starts_with("rc=1") && not_vfio.contains("is not bound to vfio-pci"),
        "{all}"
    );
    let no_dev = field(&out.stdout, "NO-DEVICE").unwrap_or("");
    assert!(
        no_dev.starts_with("rc=1") && no_dev.contains("no such PCI device"),
        "{all}"
    );
    assert!(
        out.stdout.contains("leased VF"),
        "vmm leased a VF from the pool:\n{all}"
    );
    assert_eq!(field(&out.stdout, "VMM-EXIT"), Some("0"), "{all}");
    assert!(
        out.stdout.contains("BAR 0 (0x4000 bytes) mapped directly"),
        "the register BAR is a KVM memory slot, not trapped:\n{all}"
    );
    assert!(
        out.stdout.contains("BAR 3 (0x4000 bytes)")
            && out.stdout.contains(
                "0x1000+0x1000, 0x3000+0x1000 mapped directly, the MSI-X table/PBA pages trapped"
            ),
        "the MSI-X BAR's other pages are mapped, its table and PBA pages trapped:\n{all}"
    );
    assert_eq!(field(&out.stdout, "DRIVER"), Some("igbvf"), "{all}");
    assert_eq!(
        field(&out.stdout, "MAC"),
        Some("02:00:ac:1f:10:0b"),
        "the ENI's MAC from the lease:\n{all}"
    );
    assert_eq!(field(&out.stdout, "CARRIER"), Some("1"), "{all}");
    assert_eq!(field(&out.stdout, "PING"), Some("3"), "{all}");
    assert_eq!(
        field(&out.stdout, "IID"),
        Some("i-0fedcba9876543210"),
        "IMDS from imdsd on the PF side:\n{all}"
    );
    assert_eq!(
        field(&out.stdout, "RELEASED"),
        Some("driver=igbvf leases=0"),
        "on exit the VF went back to the pool and its driver:\n{all}"
    );
}
