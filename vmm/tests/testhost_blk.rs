//! virtio-blk end to end in the test host: the Debian guest finds its
//! drives on PCI (virtio_blk from the initramfs), writes a pattern with
//! dd, syncs, reads it back uncached; after the VMM exits, the test host
//! reads the same bytes from the backing file. A read-only drive refuses
//! writes. A second boot with MSI disabled checks the INTx fallback.

use std::time::Duration;

use integration_tests::{base64, field, guest_assets, sh_quote, testhost_run};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

#[test]
fn guest_writes_a_pattern_to_its_virtio_drive_and_the_host_reads_it() {
    let assets = guest_assets();
    let guest = r#"
cat /sys/block/vda/serial; echo
echo "SIZE $(cat /sys/block/vda/size)"
dd if=/dev/urandom of=/tmp/p bs=64k count=16 2>/dev/null
echo "WROTE $(md5sum < /tmp/p | cut -d' ' -f1)"
dd if=/tmp/p of=/dev/vda bs=64k seek=3 conv=fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
echo "READ $(dd if=/dev/vda bs=64k skip=3 count=16 2>/dev/null | md5sum | cut -d' ' -f1)"
dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null
echo "RO-WRITE-STATUS $?"
"#;
    let cmdline = format!(
        "console=ttyS0 quiet panic=-1 vmm.run={}",
        base64(guest.as_bytes())
    );
    let script = format!(
        "truncate -s 64M /tmp/disk.img && truncate -s 1M /tmp/ro.img && \
         {vmm} --kernel {k} --initrd {i} --mem-mib 256 \
         --drive id=data,path=/tmp/disk.img,serial=vol0123456789abcdef0 \
         --drive id=ro,path=/tmp/ro.img,ro=on --cmdline {c}; \
         echo VMM-EXIT $?; \
         echo HOST $(dd if=/tmp/disk.img bs=64k skip=3 count=16 2>/dev/null | md5sum | cut -d' ' -f1); \
         echo RO-BYTES $(od -An -tx1 -N1 /tmp/ro.img)",
        vmm = sh_quote(VMM),
        k = sh_quote(&assets.vmlinux.to_string_lossy()),
        i = sh_quote(&assets.initramfs.to_string_lossy()),
        c = sh_quote(&cmdline),
    );
    // The same drive with MSI disabled in the guest: virtio-pci falls back to
    // the legacy INTx line (IOAPIC pin from the DSDT's _PRT) and the ISR.
    let intx_guest = r#"
echo "INTX-IRQ $(grep virtio0 /proc/interrupts | grep -c IO-APIC)"
echo "INTX-READ $(dd if=/dev/vda bs=64k skip=3 count=16 2>/dev/null | md5sum | cut -d' ' -f1)"
"#;
    let intx_cmdline = format!(
        "console=ttyS0 quiet panic=-1 pci=nomsi vmm.run={}",
        base64(intx_guest.as_bytes())
    );
    let script = format!(
        "{script}; {vmm} --kernel {k} --initrd {i} --mem-mib 256 \
         --drive id=data,path=/tmp/disk.img --cmdline {c}; echo INTX-EXIT $?",
        vmm = sh_quote(VMM),
        k = sh_quote(&assets.vmlinux.to_string_lossy()),
        i = sh_quote(&assets.initramfs.to_string_lossy()),
        c = sh_quote(&intx_cmdline),
    );
    let out = testhost_run(&script, Duration::from_secs(600));
    let all = format!("{}\n--- stderr ---\n{}", out.stdout, out.stderr);
    assert_eq!(out.status, 0, "{all}");
    assert_eq!(field(&out.stdout, "VMM-EXIT"), Some("0"), "{all}");
    assert!(
        out.stdout.contains("vol0123456789abcdef0"),
        "serial = volume id:\n{all}"
    );
    assert_eq!(
        field(&out.stdout, "SIZE"),
        Some("131072"),
        "64 MiB in sectors:\n{all}"
    );
    let wrote = field(&out.stdout, "WROTE").expect("guest wrote");
    assert_eq!(wrote.len(), 32, "{all}");
    assert_eq!(
        field(&out.stdout, "READ"),
        Some(wrote),
        "uncached read-back:\n{all}"
    );
    assert_eq!(
        field(&out.stdout, "HOST"),
        Some(wrote),
        "host sees the guest's bytes:\n{all}"
    );
    assert_ne!(
        field(&out.stdout, "RO-WRITE-STATUS"),
        Some("0"),
        "read-only drive refused the write:\n{all}"
    );
    assert_eq!(field(&out.stdout, "RO-BYTES"), Some("00"), "{all}");
    assert_eq!(field(&out.stdout, "INTX-EXIT"), Some("0"), "{all}");
    assert_eq!(
        field(&out.stdout, "INTX-IRQ"),
        Some("1"),
        "virtio on an IO-APIC line:\n{all}"
    );
    assert_eq!(
        field(&out.stdout, "INTX-READ"),
        Some(wrote),
        "reads work on INTx:\n{all}"
    );
}
