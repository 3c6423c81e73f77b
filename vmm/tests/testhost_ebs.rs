//! An EBS volume as the guest's disk, end to end: `ebsd` runs on this
//! machine (outside the test host) and exports a gp3 volume over NBD; the
//! volume is attached (per-attachment token); `vmm` inside the test host
//! reaches it over QEMU's user network (10.0.2.2) and gives it to the
//! Debian guest as /dev/vda with the volume id as its serial. The guest
//! writes a pattern with dd and syncs; after it rebooted, qemu-io reads
//! the pattern back through the block service.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::{base64, field, guest_assets, sh_quote, testhost_run, Ebsd};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

#[test]
fn guest_writes_its_ebs_volume_and_qemu_io_reads_it_back() {
    let assets = guest_assets();
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ebs-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ebsd = Ebsd::start(&dir, 0);
    let port = ebsd.port;
    let (volume_id, export) = ebsd.attached_volume(1);
    let token = export.split_once('/').unwrap().1.to_string();

    let guest = r#"
echo "SERIAL $(cat /sys/block/vda/serial)"
echo "SIZE $(cat /sys/block/vda/size)"
dd if=/dev/zero bs=64k count=16 2>/dev/null | tr '\000' '\253' | dd of=/dev/vda bs=64k seek=5 conv=fsync 2>/dev/null
sync
echo "DD-STATUS $?"
"#;
    let cmdline = format!(
        "console=ttyS0 quiet panic=-1 vmm.run={}",
        base64(guest.as_bytes())
    );
    let drive = format!("id=root,vol={volume_id},endpoint=tcp:10.0.2.2:{port},token={token}");
    // The test host's igb NIC on QEMU's user network: host = 10.0.2.2.
    let script = format!(
        "ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && \
         for i in $(seq 50); do [ \"$(cat /sys/class/net/eth0/operstate)\" = up ] && break; sleep 0.2; done; \
         {vmm} --kernel {k} --initrd {i} --mem-mib 256 --drive {d} --cmdline {c}; echo VMM-EXIT $?",
        vmm = sh_quote(VMM),
        k = sh_quote(&assets.vmlinux.to_string_lossy()),
        i = sh_quote(&assets.initramfs.to_string_lossy()),
        d = sh_quote(&drive),
        c = sh_quote(&cmdline),
    );
    let out = testhost_run(&script, Duration::from_secs(600));
    let all = format!("{}\n--- stderr ---\n{}", out.stdout, out.stderr);
    assert_eq!(out.status, 0, "{all}");
    assert_eq!(field(&out.stdout, "VMM-EXIT"), Some("0"), "{all}");
    let serial = volume_id.replacen('-', "", 1);
    assert_eq!(field(&out.stdout, "SERIAL"), Some(serial.as_str()), "{all}");
    assert_eq!(
        field(&out.stdout, "SIZE"),
        Some("2097152"),
        "1 GiB in sectors:\n{all}"
    );
    assert_eq!(field(&out.stdout, "DD-STATUS"), Some("0"), "{all}");

    // Back on this machine: the block service has the guest's bytes.
    let uri = format!("nbd://127.0.0.1:{port}/{export}");
    let check = |args: &str| {
        let o = Command::new("qemu-io")
            .args(["-f", "raw", "-c", args, &uri])
            .output()
            .expect("qemu-io (scripts/setup/ebs.sh installs it)");
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let inside = check(&format!("read -P 0xab {} {}", 5 * 65536, 16 * 65536));
    assert!(
        inside.contains("read 1048576/1048576") && !inside.contains("verification failed"),
        "pattern through the block service: {inside}"
    );
    let before = check(&format!("read -P 0 0 {}", 5 * 65536));
    assert!(
        !before.contains("verification failed"),
        "bytes before the pattern untouched: {before}"
    );
}
