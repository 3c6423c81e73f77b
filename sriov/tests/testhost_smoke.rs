//! sriovctl against real SR-IOV hardware: the test host's emulated igb
//! (82576) PF behind intel-iommu. Runs sriov/scripts/testhost-smoke.sh,
//! which enables VFs (refused while the PF is down), binds to vfio-pci,
//! leases and releases through the pool, and checks IOMMU groups.

use std::time::Duration;

use integration_tests::{sh_quote, testhost_run};

#[test]
fn sriovctl_drives_real_igb_vfs_in_the_test_host() {
    let script = format!(
        "sh sriov/scripts/testhost-smoke.sh {}",
        sh_quote(env!("CARGO_BIN_EXE_sriovctl"))
    );
    let out = testhost_run(&script, Duration::from_secs(600));
    let all = format!("{}\n--- stderr ---\n{}", out.stdout, out.stderr);
    assert_eq!(out.status, 0, "{all}");
    assert!(!out.stdout.contains("FAILED"), "{all}");
    let summary = out
        .stdout
        .lines()
        .find(|l| l.starts_with("sriov-smoke:"))
        .unwrap_or_else(|| panic!("no summary line:\n{all}"));
    assert!(summary.contains(" 0 failed"), "{all}");
}
