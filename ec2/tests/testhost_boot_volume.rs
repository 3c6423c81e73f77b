//! An image without a kernel boots from its root volume's /boot, in the test host:
//! the default AMI's root file system gets the kernel and initrd under
//! /boot/{vmlinuz,initrd.img}-VERSION and a command line in /etc/kernel/cmdline (with a
//! marker), is imported without --kernel-file, and an instance of it boots that
//! kernel with that command line and runs its user data.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use integration_tests::field;

mod common;
use common::{ami_file, run_scenario};

const SCRIPT: &str = r#"
AMI=$("$E" import-image --disk-containers "Format=raw,Url=file://$ROOTIMG" --name boot-volume 2>/dev/null | json 'd["ImageId"]')
echo "KERNELID $("$E" describe-images --image-ids "$AMI" | json 'd["Images"][0].get("KernelId", "none")')"
ID=$("$E" run-instances --image-id "$AMI" --instance-type t3.nano --no-attach \
     --user-data '#!/bin/sh
echo "BOOTVOL-OK $(uname -r) $(grep -o "bootvol.marker=[a-z]*" /proc/cmdline)"' \
     | json 'd["Instances"][0]["InstanceId"]')
waitcon "$ID" "^BOOTVOL-OK" 300 || exit 1
console "$ID" | grep -a "^BOOTVOL-OK" | tail -1
"$E" terminate-instances --instance-ids "$ID" --force --wait >/dev/null
echo "SCENARIO-DONE"
"#;

/// The default AMI's root with its kernel, initrd and a command line inside.
fn root_with_boot(dir: &Path, version: &str, cmdline: &str) -> String {
    let image = dir.join("root-with-boot.img");
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(ami_file("root.img"))
        .arg(&image)
        .status()
        .expect("cp");
    assert!(st.success());
    let cmdline_file = dir.join("cmdline");
    std::fs::write(&cmdline_file, format!("{cmdline}\n")).unwrap();
    let commands = format!(
        "mkdir /boot\ncd /boot\nwrite {} vmlinuz-{version}\nwrite {} initrd.img-{version}\n\
         mkdir /etc/kernel\ncd /etc/kernel\nwrite {} cmdline\n",
        ami_file("kernel"),
        ami_file("ramdisk.cpio.gz"),
        cmdline_file.display()
    );
    let request = dir.join("debugfs.cmd");
    std::fs::write(&request, commands).unwrap();
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&request)
        .arg(&image)
        .output()
        .expect("debugfs (e2fsprogs)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    image.to_string_lossy().into_owned()
}

#[test]
fn an_image_without_a_kernel_boots_from_its_root_volume() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ami_file("manifest.json")).expect("manifest"))
            .expect("manifest JSON");
    let version = manifest["kernel"]["release"].as_str().expect("release");
    let cmdline = format!(
        "{} bootvol.marker=fromvolume",
        manifest["cmdline"].as_str().expect("cmdline")
    );
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("boot-volume");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let root = root_with_boot(&dir, version, &cmdline);
    let env = [("ROOTIMG", root)];
    let (out, all) = run_scenario("boot-volume", SCRIPT, &env, Duration::from_secs(1200));
    assert!(out.stdout.contains("SCENARIO-DONE"), "{all}");
    assert_eq!(field(&out.stdout, "KERNELID"), Some("none"), "{all}");
    assert_eq!(
        field(&out.stdout, "BOOTVOL-OK"),
        Some(format!("{version} bootvol.marker=fromvolume").as_str()),
        "{all}"
    );
}
