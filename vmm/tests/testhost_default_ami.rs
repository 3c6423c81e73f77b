//! The default AMI (`scripts/default-ami.sh`, docs/default-ami.md) end to
//! end in the test host: `vmm` boots the AMI's kernel and ramdisk with a copy
//! of its root image as the first virtio-blk drive, a tap with DHCP and the
//! in-VMM metadata service carrying user data.
//!
//! - User data runs once per instance: it runs (and writes a file to the root
//!   volume) on the first boot of an instance, does not run again when the
//!   same instance boots again (the file is still there), and runs again for
//!   a new instance id on the same disk (an instance launched from an image of
//!   it), whose larger volume the root file system grows to. Every boot ends
//!   with a clean shutdown (root remounted read-only, no journal to replay)
//!   through the guest's `reboot` or `poweroff`.
//! - The serial console (the VMM's stdin and stdout) has a root shell
//!   without login; Ctrl-Alt-Del from the VMM's API reboots the guest
//!   cleanly, which ends the VMM; `root=LABEL=rootfs` finds the root volume; an instance without
//!   user data says so; user data that is not a `#!` script is saved, not
//!   run.
//! - A root volume that never appears gives the ramdisk's error and the VM
//!   powers off.

use std::path::{Path, PathBuf};
use std::time::Duration;

use integration_tests::{base64, field, repo_root, sh_quote, testhost_run};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// The artifacts `scripts/default-ami.sh` builds in `$CACHE/ami/`.
struct Ami {
    kernel: PathBuf,
    ramdisk: PathBuf,
    root: PathBuf,
    /// The manifest's kernel command line plus its quiet arguments.
    cmdline: String,
}

/// The value of `"key": "..."` in the manifest (flat strings only; the
/// manifest's strings carry no escapes).
fn manifest_string(manifest: &str, key: &str) -> Option<String> {
    let start = manifest.find(&format!("\"{key}\": \""))? + key.len() + 5;
    let len = manifest[start..].find('"')?;
    Some(manifest[start..start + len].to_string())
}

fn ami() -> Ami {
    let cache = std::env::var_os("NITRO_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache"));
    let dir = cache.join("ami");
    let ami = Ami {
        kernel: dir.join("kernel"),
        ramdisk: dir.join("ramdisk.cpio.gz"),
        root: dir.join("root.img"),
        cmdline: String::new(),
    };
    let manifest_path = dir.join("manifest.json");
    for p in [&ami.kernel, &ami.ramdisk, &ami.root, &manifest_path] {
        assert!(
            p.is_file(),
            "default AMI artifact {} is missing: run scripts/default-ami.sh (or scripts/setup/vmm.sh)",
            p.display()
        );
    }
    let manifest = std::fs::read_to_string(&manifest_path).expect("read manifest.json");
    let cmdline = manifest_string(&manifest, "cmdline").expect("manifest has cmdline");
    let quiet = manifest_string(&manifest, "cmdline_quiet_args").unwrap_or_default();
    assert!(
        cmdline.contains("root=/dev/vda"),
        "manifest cmdline: {cmdline}"
    );
    assert_eq!(
        manifest_string(&manifest, "root_device_name").as_deref(),
        Some("/dev/vda")
    );
    Ami {
        cmdline: format!("{cmdline} {quiet}"),
        ..ami
    }
}

const MAC: &str = "02:00:ac:1f:10:0a";

/// An instance record for the in-VMM metadata service (imds crate format).
fn record(instance_id: &str, user_data: Option<&str>) -> String {
    let user_data = user_data
        .map(|u| format!(",\n  \"user_data_base64\": \"{}\"", base64(u.as_bytes())))
        .unwrap_or_default();
    format!(
        r#"{{
  "instance_id": "{instance_id}",
  "image_id": "ami-0abcdef1234567890",
  "instance_type": "t3.micro",
  "reservation_id": "r-0123456789abcdef0",
  "placement": {{"availability_zone": "eu-west-1b", "availability_zone_id": "euw1-az2"}},
  "network_interfaces": [{{
    "mac": "{MAC}", "interface_id": "eni-0123", "device_number": 0,
    "private_ipv4s": ["172.31.16.10"], "public_ipv4s": [],
    "subnet_id": "subnet-01", "subnet_ipv4_cidr_block": "172.31.16.0/20",
    "vpc_id": "vpc-01", "vpc_ipv4_cidr_blocks": ["172.31.0.0/16"],
    "security_groups": [{{"id": "sg-01", "name": "default"}}]
  }}],
  "metadata_options": {{"http_tokens": "required", "http_endpoint": "enabled",
                       "http_put_response_hop_limit": 1}}{user_data}
}}"#
    )
}

fn write_record(name: &str, json: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, json).expect("write instance record");
    path
}

/// Shell: the tap the VMM's DHCP and metadata service answer on, and a
/// fresh copy of the root image (the AMI's snapshot turned into a volume).
fn prologue(ami: &Ami) -> String {
    format!(
        "ip tuntap add tap0 mode tap vnet_hdr && ip addr add 172.31.16.1/20 dev tap0 && \
         ip link set tap0 up && cp {root} /tmp/root.img || exit 99\n\
         fs() {{ echo \"$1-FSSTATE $(dumpe2fs -h /tmp/root.img 2>/dev/null | sed -n 's/^Filesystem state: *//p')\"; \
                 echo \"$1-RECOVERY $(dumpe2fs -h /tmp/root.img 2>/dev/null | grep -c needs_recovery)\"; }}\n",
        root = sh_quote(&ami.root.to_string_lossy()),
    )
}

/// Shell: one boot of the instance, with /tmp/root.img as its root volume
/// when `drive`.
fn vmm_line(ami: &Ami, record: Option<&Path>, cmdline: &str, drive: bool, extra: &str) -> String {
    let drive = if drive {
        "--drive id=root,path=/tmp/root.img"
    } else {
        ""
    };
    let net = match record {
        Some(r) => format!(
            "--net tap=tap0,mac={MAC},ip=172.31.16.10/20 --imds {}",
            sh_quote(&r.to_string_lossy())
        ),
        None => String::new(),
    };
    format!(
        "{vmm} --kernel {k} --initrd {i} --mem-mib 256 {drive} {net} {extra} --cmdline {c}",
        vmm = sh_quote(VMM),
        k = sh_quote(&ami.kernel.to_string_lossy()),
        i = sh_quote(&ami.ramdisk.to_string_lossy()),
        c = sh_quote(cmdline),
    )
}

/// The output between `AMI-BOOT <n>` and the next `AMI-BOOT` line.
fn boot_section(out: &str, n: u32) -> &str {
    let marker = format!("AMI-BOOT {n}\n");
    let start = out
        .find(&marker)
        .map(|i| i + marker.len())
        .unwrap_or(out.len());
    let end = out[start..]
        .find("AMI-BOOT ")
        .map(|i| start + i)
        .unwrap_or(out.len());
    &out[start..end]
}

fn assert_clean_shutdown(out: &str, boot: &str, all: &str) {
    assert_eq!(
        field(out, &format!("{boot}-VMM-EXIT")),
        Some("0"),
        "{boot}: the VMM exits when the guest shuts down:\n{all}"
    );
    assert!(
        out.contains("rcK: root remounted read-only, clean shutdown"),
        "{boot}: inittab's shutdown action left the root clean:\n{all}"
    );
    assert_eq!(
        field(out, &format!("{boot}-FSSTATE")),
        Some("clean"),
        "{boot}: file system state after the VMM exited:\n{all}"
    );
    assert_eq!(
        field(out, &format!("{boot}-RECOVERY")),
        Some("0"),
        "{boot}: no journal left to replay:\n{all}"
    );
}

/// Cloud-init-style user data: writes a file on the root volume (one line
/// per run, with the instance id the script itself reads from IMDSv2 with
/// curl), prints a marker and reboots the instance, which ends the VMM.
const USER_DATA: &str = r#"#!/bin/sh
T=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)
IID=$(curl -s -H "X-aws-ec2-metadata-token: $T" http://169.254.169.254/latest/meta-data/instance-id)
echo "$IID" >> /root/ud-runs
echo "AMI-UD-RAN $IID uid=$(id -u) pwd=$(pwd)"
sync
reboot
"#;

const FIRST: &str = "i-0aaaaaaaaaaaaaaa1";
const SECOND: &str = "i-0bbbbbbbbbbbbbbb2";

#[test]
fn user_data_runs_once_per_instance() {
    let ami = ami();
    let first = write_record("ami-first.json", &record(FIRST, Some(USER_DATA)));
    let second = write_record("ami-second.json", &record(SECOND, Some(USER_DATA)));
    // Boot 2 cannot be interactive: the agent's test hook runs this after
    // the user-data step and then powers the VM off.
    let look = format!(
        r#"echo "AMI-RUNS $(wc -l < /root/ud-runs)"
echo "AMI-FILE $(tr '\n' ' ' < /root/ud-runs)"
echo "AMI-SEM $(head -n 1 /var/lib/cloud/instances/{FIRST}/sem/user-data)"
echo "AMI-OUTLOG $(grep -c AMI-UD-RAN /var/log/cloud-init-output.log)"
echo "AMI-HOSTNAME $(hostname)"
echo "AMI-INSTANCE $(cat /var/lib/cloud/data/instance-id)"
"#
    );
    let look_cmdline = format!(
        "{} ec2init.test_cmd={}",
        ami.cmdline,
        base64(look.as_bytes())
    );
    let script = format!(
        "{prologue}\
         echo AMI-BOOT 1\n{boot1}; echo BOOT1-VMM-EXIT $?; fs BOOT1\n\
         echo AMI-BOOT 2\n{boot2}; echo BOOT2-VMM-EXIT $?; fs BOOT2\n\
         truncate -s 2G /tmp/root.img\n\
         echo AMI-BOOT 3\n{boot3}; echo BOOT3-VMM-EXIT $?; fs BOOT3\n\
         echo \"HOST-RUNS $(debugfs -R 'cat /root/ud-runs' /tmp/root.img 2>/dev/null | tr '\\n' ' ')\"\n\
         echo \"HOST-BLOCKS $(dumpe2fs -h /tmp/root.img 2>/dev/null | sed -n 's/^Block count: *//p')\"\n",
        prologue = prologue(&ami),
        boot1 = vmm_line(&ami, Some(&first), &ami.cmdline, true, ""),
        boot2 = vmm_line(&ami, Some(&first), &look_cmdline, true, ""),
        boot3 = vmm_line(&ami, Some(&second), &ami.cmdline, true, ""),
    );
    let out = testhost_run(&script, Duration::from_secs(300));
    eprintln!("test-host run: {:?}", out.elapsed);
    let all = format!(
        "{}\n--- stderr ---\n{}\n--- {:?} ---",
        out.stdout, out.stderr, out.elapsed
    );
    assert_eq!(out.status, 0, "{all}");

    // First boot of the first instance: the user data runs, as root, once.
    let boot1 = boot_section(&out.stdout, 1);
    assert!(
        boot1.contains("ramdisk: root /dev/vda (/dev/vda, ext4, rw)"),
        "boot 1: the ramdisk mounted the root volume:\n{all}"
    );
    assert_eq!(
        field(boot1, "ec2-init: hostname"),
        Some("ip-172-31-16-10"),
        "boot 1: hostname from IMDS local-hostname:\n{all}"
    );
    assert_eq!(
        field(boot1, "AMI-UD-RAN"),
        Some(format!("{FIRST} uid=0 pwd=/").as_str()),
        "boot 1: the user data ran as root:\n{all}"
    );
    assert!(
        boot1.contains(&format!(
            "ec2-init: instance {FIRST} user-data ran (exit 0)"
        )),
        "boot 1: the agent's marker:\n{all}"
    );
    assert_clean_shutdown(boot1, "BOOT1", &all);

    // Same instance again (a reboot or a stop/start): not run again, and the
    // file it wrote is on the volume.
    let boot2 = boot_section(&out.stdout, 2);
    assert!(
        boot2.contains(&format!("ec2-init: user-data already ran for {FIRST}")),
        "boot 2: the agent knows this instance:\n{all}"
    );
    assert_eq!(
        field(boot2, "AMI-UD-RAN"),
        None,
        "boot 2: user data ran twice:\n{all}"
    );
    assert_eq!(field(boot2, "AMI-RUNS"), Some("1"), "{all}");
    assert_eq!(field(boot2, "AMI-FILE"), Some(FIRST), "{all}");
    let sem = field(boot2, "AMI-SEM").unwrap_or_default();
    assert!(sem.starts_with("started "), "semaphore: {sem}\n{all}");
    assert_eq!(
        field(boot2, "AMI-OUTLOG"),
        Some("1"),
        "user data output in /var/log/cloud-init-output.log:\n{all}"
    );
    assert_eq!(field(boot2, "AMI-HOSTNAME"), Some("ip-172-31-16-10"));
    assert_eq!(field(boot2, "AMI-INSTANCE"), Some(FIRST), "{all}");
    assert_eq!(field(boot2, "ec2-init: test_cmd exit"), Some("0"), "{all}");
    assert_clean_shutdown(boot2, "BOOT2", &all);

    // A new instance id on the same disk (launched from an image of it, with
    // a 2 GiB root volume): the user data runs again, and the root file
    // system grows to the volume.
    let boot3 = boot_section(&out.stdout, 3);
    assert!(
        !boot1.contains("root file system grown") && !boot2.contains("root file system grown"),
        "nothing to grow on the image's own size:\n{all}"
    );
    assert!(
        boot3.contains("ec2-init: root file system grown to"),
        "boot 3: resize2fs grew the root to its 2 GiB volume:\n{all}"
    );
    assert_eq!(
        field(&out.stdout, "HOST-BLOCKS"),
        Some("524288"),
        "2 GiB of 4 KiB blocks:\n{all}"
    );
    assert_eq!(
        field(boot3, "AMI-UD-RAN"),
        Some(format!("{SECOND} uid=0 pwd=/").as_str()),
        "boot 3: the user data ran for the new instance:\n{all}"
    );
    assert!(
        boot3.contains(&format!(
            "ec2-init: instance {SECOND} user-data ran (exit 0)"
        )),
        "{all}"
    );
    assert_clean_shutdown(boot3, "BOOT3", &all);
    assert_eq!(
        field(&out.stdout, "HOST-RUNS"),
        Some(format!("{FIRST} {SECOND}").as_str()),
        "the host reads both runs from the image:\n{all}"
    );
}

#[test]
fn ctrl_alt_del_root_label_plain_user_data_and_missing_root() {
    let ami = ami();
    let rec = write_record("ami-third.json", &record("i-0ccccccccccccccc3", None));
    // By label this time (the ramdisk looks the label up with findfs).
    let label_cmdline = ami.cmdline.replace("root=/dev/vda", "root=LABEL=rootfs");
    assert_ne!(label_cmdline, ami.cmdline);
    let sock = "/tmp/vmm-ami.sock";
    let boot1 = vmm_line(
        &ami,
        Some(&rec),
        &label_cmdline,
        true,
        &format!("--api-sock {sock}"),
    );
    // User data that is not a script is kept but not run; the test hook
    // shows what was saved.
    let plain = write_record(
        "ami-fourth.json",
        &record(
            "i-0ddddddddddddddd4",
            Some("#cloud-config\nruncmd: [touch /root/nope]\n"),
        ),
    );
    let look = "echo \"AMI-SAVED $(head -n 1 /var/lib/cloud/instance/user-data.txt)\"\n\
                echo \"AMI-NOPE $(ls /root/nope 2>&1 | grep -c 'No such file')\"\n";
    let boot2 = vmm_line(
        &ami,
        Some(&plain),
        &format!(
            "{} ec2init.test_cmd={}",
            ami.cmdline,
            base64(look.as_bytes())
        ),
        true,
        "",
    );
    // No drive at all: the ramdisk waits rd.timeout seconds, says why and
    // powers off.
    let boot3 = vmm_line(
        &ami,
        None,
        &format!("{} rd.timeout=3", ami.cmdline),
        false,
        "",
    );
    let script = format!(
        "{prologue}\
         echo AMI-BOOT 1\n\
         mkfifo /tmp/console-in\n\
         {boot1} < /tmp/console-in > /tmp/boot1.log 2>&1 &\n\
         pid=$!\n\
         exec 3> /tmp/console-in\n\
         for i in $(seq 1 150); do grep -q 'ec2-init: no user-data' /tmp/boot1.log && break; sleep 1; done\n\
         sleep 2\n\
         printf 'echo CONSOLE-$((6*7)) $(tty) $(id -u)\\n' >&3\n\
         for i in $(seq 1 30); do grep -q '^CONSOLE-42' /tmp/boot1.log && break; sleep 1; done\n\
         curl -s -o /dev/null -w 'CAD-HTTP %{{http_code}}\\n' --unix-socket {sock} -X PUT \
              -d '{{\"action_type\": \"SendCtrlAltDel\"}}' http://localhost/actions\n\
         for i in $(seq 1 60); do kill -0 $pid 2>/dev/null || break; sleep 1; done\n\
         kill $pid 2>/dev/null\n\
         wait $pid; echo BOOT1-VMM-EXIT $?\n\
         cat /tmp/boot1.log; fs BOOT1\n\
         echo AMI-BOOT 2\n{boot2}; echo BOOT2-VMM-EXIT $?; fs BOOT2\n\
         echo AMI-BOOT 3\n{boot3}; echo BOOT3-VMM-EXIT $?\n",
        prologue = prologue(&ami),
    );
    let out = testhost_run(&script, Duration::from_secs(300));
    eprintln!("test-host run: {:?}", out.elapsed);
    let all = format!(
        "{}\n--- stderr ---\n{}\n--- {:?} ---",
        out.stdout, out.stderr, out.elapsed
    );
    assert_eq!(out.status, 0, "{all}");

    let boot1 = boot_section(&out.stdout, 1);
    assert!(
        boot1.contains("ramdisk: root /dev/vda (LABEL=rootfs, ext4, rw)"),
        "root=LABEL=rootfs:\n{all}"
    );
    assert!(
        boot1.contains("ec2-init: no user-data"),
        "no user data in the record:\n{all}"
    );
    assert_eq!(
        field(boot1, "CONSOLE-42"),
        Some("/dev/ttyS0 0"),
        "a root shell without login on the serial console (VMM stdin):\n{all}"
    );
    assert_eq!(field(boot1, "CAD-HTTP"), Some("204"), "{all}");
    assert!(
        boot1.contains("VM stopped: GuestReset"),
        "Ctrl-Alt-Del became a reboot:\n{all}"
    );
    assert_clean_shutdown(boot1, "BOOT1", &all);

    let boot2 = boot_section(&out.stdout, 2);
    assert!(
        boot2.contains(
            "ec2-init: instance i-0ddddddddddddddd4 user-data is not a script (no #!): \
             saved to /var/lib/cloud/instances/i-0ddddddddddddddd4/user-data.txt, not run"
        ),
        "user data without #!:\n{all}"
    );
    assert_eq!(field(boot2, "AMI-SAVED"), Some("#cloud-config"), "{all}");
    assert_eq!(field(boot2, "AMI-NOPE"), Some("1"), "not run:\n{all}");
    assert_clean_shutdown(boot2, "BOOT2", &all);

    let boot3 = boot_section(&out.stdout, 3);
    assert!(
        boot3.contains("ramdisk: error: root device /dev/vda did not appear within 3 s"),
        "the ramdisk names the missing root device:\n{all}"
    );
    assert!(boot3.contains("ramdisk: powering off"), "{all}");
    assert!(
        boot3.contains("VM stopped: GuestShutdown"),
        "the VM powered off:\n{all}"
    );
    assert_eq!(field(boot3, "BOOT3-VMM-EXIT"), Some("0"), "{all}");
}
