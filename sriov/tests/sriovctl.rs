//! The CLI against a static fabricated sysfs tree (no kernel behind it: only reads and the
//! refusals that happen before any write).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Command, Output};

fn write(path: &Path, content: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// /sys with an igb PF (eth0, up or down) at 0000:01:00.0 and its VF 0 at 0000:01:10.0.
fn fabricate(sys: &Path, pf_up: bool) {
    let devices = sys.join("bus/pci/devices");
    let pf = devices.join("0000:01:00.0");
    let vf = devices.join("0000:01:10.0");
    for driver in ["igb", "igbvf", "vfio-pci"] {
        write(&sys.join("bus/pci/drivers").join(driver).join("unbind"), "");
    }
    for (dir, device, group) in [(&pf, "0x10c9", 1), (&vf, "0x10ca", 2)] {
        write(&dir.join("vendor"), "0x8086\n");
        write(&dir.join("device"), &format!("{device}\n"));
        write(&dir.join("class"), "0x020000\n");
        let group_dir = sys.join(format!("kernel/iommu_groups/{group}/devices"));
        fs::create_dir_all(&group_dir).unwrap();
        symlink(
            format!("../../../kernel/iommu_groups/{group}"),
            dir.join("iommu_group"),
        )
        .unwrap();
    }
    write(&pf.join("sriov_totalvfs"), "7\n");
    write(&pf.join("sriov_numvfs"), "1\n");
    symlink("../../../bus/pci/drivers/igb", pf.join("driver")).unwrap();
    symlink("../0000:01:10.0", pf.join("virtfn0")).unwrap();
    let (operstate, flags) = if pf_up {
        ("up", "0x1003")
    } else {
        ("down", "0x1002")
    };
    write(&pf.join("net/eth0/operstate"), &format!("{operstate}\n"));
    write(&pf.join("net/eth0/flags"), &format!("{flags}\n"));
    symlink("../../../bus/pci/drivers/igbvf", vf.join("driver")).unwrap();
    symlink("../0000:01:00.0", vf.join("physfn")).unwrap();
}

fn sriovctl(sys: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sriovctl"))
        .arg("--sysfs")
        .arg(sys)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn list_json_describes_the_pf_and_its_vf() {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    fabricate(&sys, true);
    let output = sriovctl(&sys, &["list", "--json"]);
    assert!(output.status.success(), "{output:?}");
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let expected = serde_json::json!([{
        "address": "0000:01:00.0",
        "driver": "igb",
        "ifname": "eth0",
        "total_vfs": 7,
        "num_vfs": 1,
        "vfs": [{
            "address": "0000:01:10.0",
            "pf": "0000:01:00.0",
            "index": 0,
            "vendor_id": 0x8086,
            "device_id": 0x10ca,
            "driver": "igbvf",
            "iommu_group": 2,
            "ifname": null
        }]
    }]);
    assert_eq!(listed, expected);
}

#[test]
fn enable_on_a_pf_that_is_down_fails_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    fabricate(&sys, false);
    let output = sriovctl(&sys, &["enable", "eth0", "2"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("ip link set eth0 up"), "{stderr}");
    let numvfs = fs::read_to_string(sys.join("bus/pci/devices/0000:01:00.0/sriov_numvfs"));
    assert_eq!(numvfs.unwrap(), "1\n");
}
