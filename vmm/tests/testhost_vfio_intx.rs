//! Legacy INTx of a passed-through function, end to end in the test host
//! (QEMU's igb 82576 behind an emulated intel-iommu, nested KVM). VFs have
//! no INTx pin, so the igb **PF** itself goes to the guest: unbound from
//! igb in the test host (nothing there uses it: the test host's own root
//! comes over virtio 9p, it has no network of its own), bound to vfio-pci
//! and given to vmm with `--vf`. The Debian guest boots with `pci=nomsi`,
//! so its igb driver cannot use MSI-X and must take the legacy line: the
//! test checks that /proc/interrupts shows the device on an IO-APIC
//! level-triggered (fasteoi) line whose count grows with traffic, and that
//! the link comes up and QEMU's gateway answers pings. Interrupts go
//! device -> VFIO (masks the host line) -> trigger eventfd -> KVM
//! resampling irqfd -> guest; the guest's EOI -> resample eventfd -> VFIO
//! unmasks.
//!
//! The shared guest initramfs has no igb module (only igbvf): this test
//! appends a small cpio with igb and its dependencies, decompressed from
//! the same kernel package, to a copy of it (the kernel unpacks
//! concatenated archives in order).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use integration_tests::{base64, field, guest_assets, repo_root, sh_quote, testhost_run};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// igb and what it needs that the guest initramfs lacks, in load order.
const MODULES: [(&str, &str); 3] = [
    ("dca", "drivers/dca/dca.ko.xz"),
    ("i2c-algo-bit", "drivers/i2c/algos/i2c-algo-bit.ko.xz"),
    ("igb", "drivers/net/ethernet/intel/igb/igb.ko.xz"),
];

/// The `kernel/` module tree of the guest kernel's package (the one
/// scripts/guest-assets.sh extracted; the guest's kernel-release names it).
fn kernel_module_tree() -> PathBuf {
    let cache = std::env::var_os("NITRO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache"));
    let release = std::fs::read_to_string(cache.join("guest/kernel-release"))
        .expect("guest/kernel-release: run scripts/guest-assets.sh");
    let release = release.trim();
    let pkgs = std::fs::read_dir(cache.join("kernel")).expect("kernel package cache");
    pkgs.filter_map(Result::ok)
        .map(|e| e.path().join("lib/modules").join(release).join("kernel"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("no extracted modules of {release} under {cache:?}/kernel"))
}

/// One newc (SVR4, no CRC) cpio entry.
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        data.len() as u32,
        0,
        0,
        0,
        0,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    out.extend_from_slice(data);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// A copy of the guest initramfs with /lib/intx/<module>.ko appended.
fn initramfs_with_igb(base: &Path, out: &Path) {
    let tree = kernel_module_tree();
    let mut image = std::fs::read(base).expect("guest initramfs");
    // The kernel looks for the next archive at a 4-byte boundary, skipping
    // zeros.
    while !image.len().is_multiple_of(4) {
        image.push(0);
    }
    let mut cpio = Vec::new();
    cpio_entry(&mut cpio, 1, "lib", 0o040755, &[]);
    cpio_entry(&mut cpio, 2, "lib/intx", 0o040755, &[]);
    for (i, (name, rel)) in MODULES.iter().enumerate() {
        let xz = tree.join(rel);
        let ko = Command::new("xz").arg("-dc").arg(&xz).output().expect("xz");
        assert!(ko.status.success(), "xz -dc {}", xz.display());
        let path = format!("lib/intx/{name}.ko");
        cpio_entry(&mut cpio, 3 + i as u32, &path, 0o100644, &ko.stdout);
    }
    cpio_entry(&mut cpio, 0, "TRAILER!!!", 0, &[]);
    image.extend_from_slice(&cpio);
    std::fs::write(out, image).expect("write initramfs");
}

/// The count column and the rest of the /proc/interrupts line the guest
/// printed as `key <irq>: <count> <chip> <hwirq-type> <name>`.
fn irq_line<'a>(stdout: &'a str, key: &str) -> Option<(u64, &'a str)> {
    let line = field(stdout, key)?;
    let mut words = line.split_whitespace();
    let _irq = words.next()?;
    let count = words.next()?.parse().ok()?;
    Some((count, line))
}

/// The part of `text` between the lines `begin` and `end`.
fn section<'a>(text: &'a str, begin: &str, end: &str) -> &'a str {
    let from = text.find(begin).map_or(text.len(), |i| i + begin.len());
    let to = text[from..].find(end).map_or(text.len(), |i| from + i);
    &text[from..to]
}

/// The guest's checks; `P` prefixes its lines.
const GUEST: &str = r#"
for m in dca i2c-algo-bit igb; do insmod /lib/intx/$m.ko || echo "$P-INSMOD-FAILED $m"; done
echo "$P-MSI-IRQS $(ls /sys/class/net/eth0/device/msi_irqs 2>/dev/null | wc -l)"
echo "$P-DRIVER $(basename $(readlink /sys/class/net/eth0/device/driver))"
ip link set eth0 up
for i in $(seq 60); do [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = 1 ] && break; sleep 0.5; done
echo "$P-CARRIER $(cat /sys/class/net/eth0/carrier)"
echo "$P-IRQ-BEFORE $(grep -m1 eth0 /proc/interrupts)"
ip addr add 10.0.2.15/24 dev eth0
echo "$P-PING $(ping -c 3 -W 3 10.0.2.2 | grep -c 'bytes from')"
echo "$P-IRQ-AFTER $(grep -m1 eth0 /proc/interrupts)"
"#;

#[test]
fn guest_with_pci_nomsi_drives_a_passed_through_pf_over_intx() {
    let assets = guest_assets();
    let initramfs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("initramfs-intx.cpio.gz");
    initramfs_with_igb(&assets.initramfs, &initramfs);
    let cmdline = |prefix: &str, extra: &str| {
        let snippet = format!("P={prefix}\n{GUEST}");
        format!(
            "console=ttyS0 quiet panic=-1 initcall_blacklist=cmos_init {extra} vmm.run={}",
            base64(snippet.as_bytes())
        )
    };
    // First pci=nomsi (INTx only), then the same PF with MSI-X, which the
    // guest's igb prefers: INTx must be off in VFIO before MSI-X goes on.
    let script = format!(
        r#"set -e
PF=$(basename $(readlink /sys/class/net/eth0/device))
echo vfio-pci > /sys/bus/pci/devices/$PF/driver_override
echo $PF > /sys/bus/pci/devices/$PF/driver/unbind
echo $PF > /sys/bus/pci/drivers_probe
echo "PF-DRIVER $(basename $(readlink /sys/bus/pci/devices/$PF/driver))"
set +e
echo "=== INTX"
RUST_LOG=info {vmm} --kernel {k} --initrd {i} --mem-mib 256 --cmdline {intx} --vf $PF
echo "INTX-VMM-EXIT $?"
echo "=== MSIX"
RUST_LOG=info {vmm} --kernel {k} --initrd {i} --mem-mib 256 --cmdline {msix} --vf $PF
echo "MSIX-VMM-EXIT $?"
echo "=== END"
# Released: the PF goes back to igb in the test host.
echo > /sys/bus/pci/devices/$PF/driver_override
echo $PF > /sys/bus/pci/drivers/vfio-pci/unbind
echo $PF > /sys/bus/pci/drivers_probe
echo "PF-BACK $(basename $(readlink /sys/bus/pci/devices/$PF/driver))"
"#,
        vmm = sh_quote(VMM),
        k = sh_quote(&assets.vmlinux.to_string_lossy()),
        i = sh_quote(&initramfs.to_string_lossy()),
        intx = sh_quote(&cmdline("INTX", "pci=nomsi")),
        msix = sh_quote(&cmdline("MSIX", "")),
    );
    let out = testhost_run(&script, Duration::from_secs(600));
    let all = format!(
        "{}\n--- stderr ---\n{}\n--- {:?} ---",
        out.stdout, out.stderr, out.elapsed
    );
    // Shown with --nocapture (the interrupt lines are worth seeing).
    println!("{all}");
    assert_eq!(out.status, 0, "{all}");
    assert_eq!(field(&out.stdout, "PF-DRIVER"), Some("vfio-pci"), "{all}");
    assert!(!out.stdout.contains("INSMOD-FAILED"), "{all}");

    // pci=nomsi: the guest's igb runs on INTx.
    let intx_run = section(&out.stdout, "=== INTX", "=== MSIX");
    assert_eq!(field(intx_run, "INTX-VMM-EXIT"), Some("0"), "{all}");
    assert!(
        intx_run.contains("INTx on GSI") && intx_run.contains("INTx GSI"),
        "vmm wired the PF's INTx to its slot's GSI:\n{all}"
    );
    assert!(!intx_run.contains("MSI-X enabled"), "{all}");
    assert_eq!(field(intx_run, "INTX-DRIVER"), Some("igb"), "{all}");
    assert_eq!(
        field(intx_run, "INTX-MSI-IRQS"),
        Some("0"),
        "pci=nomsi: no MSI/MSI-X vectors:\n{all}"
    );
    assert_eq!(field(intx_run, "INTX-CARRIER"), Some("1"), "{all}");
    assert_eq!(field(intx_run, "INTX-PING"), Some("3"), "{all}");
    let (before, _) = irq_line(intx_run, "INTX-IRQ-BEFORE").unwrap_or_else(|| panic!("{all}"));
    let (after, line) = irq_line(intx_run, "INTX-IRQ-AFTER").unwrap_or_else(|| panic!("{all}"));
    assert!(
        line.contains("IO-APIC") && line.contains("fasteoi") && !line.contains("MSI"),
        "igb's interrupt is a level IO-APIC line, not MSI: {line}\n{all}"
    );
    assert!(
        after > before && before > 0,
        "INTx counted ({before} after link-up, {after} after the pings):\n{all}"
    );

    // MSI-X allowed: VFIO took MSI-X after INTx was turned off.
    let msix_run = section(&out.stdout, "=== MSIX", "=== END");
    assert_eq!(field(msix_run, "MSIX-VMM-EXIT"), Some("0"), "{all}");
    assert!(
        msix_run.contains("MSI-X enabled") && !msix_run.contains("cannot enable MSI-X"),
        "{all}"
    );
    let vectors: u32 = field(msix_run, "MSIX-MSI-IRQS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(vectors > 0, "igb took MSI-X vectors:\n{all}");
    assert_eq!(field(msix_run, "MSIX-PING"), Some("3"), "{all}");
    let (_, line) = irq_line(msix_run, "MSIX-IRQ-AFTER").unwrap_or_else(|| panic!("{all}"));
    assert!(line.contains("MSI"), "{line}\n{all}");

    assert_eq!(
        field(&out.stdout, "PF-BACK"),
        Some("igb"),
        "the PF is released after vmm exits:\n{all}"
    );
}
