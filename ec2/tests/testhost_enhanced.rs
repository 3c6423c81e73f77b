//! Enhanced networking through the front door, in the test host (QEMU's igb with
//! SR-IOV, nested KVM): with a VF pool configured (`NITRO_VF_POOL`), `run-instances
//! --network-interfaces DeviceIndex=0,InterfaceType=enhanced` boots the default AMI
//! with a VF; the guest's igbvf binds, DHCP comes from the supervisor and the metadata
//! service from the imdsd the launcher started on the PF (the user data only runs once
//! ec2-init has read the instance id from it, and prints it again). DescribeInstances
//! shows EnaSupport. A request for more VFs than are free fails with
//! InsufficientInstanceCapacity and launches nothing; after terminate the VF is back
//! in the pool on its own driver.

use std::time::Duration;

use integration_tests::{field, workspace_bin};

mod common;
use common::run_scenario;

const SCRIPT: &str = r#"
export NITRO_VF_POOL=/run/vf-pool
# What waitcon adds on a timeout: the metadata service and the host's network.
diagnose() { tail -n 20 "$NITRO_STATE_DIR/imdsd/imdsd.log"; ip -br addr; ip route; ip neigh; }

ip link set eth0 up; sleep 1
"$CTL" enable eth0 2 >/dev/null || exit 1
AMI=$(default_ami)
cat > /tmp/ud.sh <<'EOF2'
#!/bin/sh
T=$(curl -s -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' http://169.254.169.254/latest/api/token)
echo "VF-GUEST driver=$(basename $(readlink /sys/class/net/eth0/device/driver)) iid=$(curl -s -H "X-aws-ec2-metadata-token: $T" http://169.254.169.254/latest/meta-data/instance-id)"
EOF2
ID=$("$E" run-instances --image-id "$AMI" --instance-type t3.nano --user-data file:///tmp/ud.sh \
     --network-interfaces DeviceIndex=0,InterfaceType=enhanced --no-attach | json 'd["Instances"][0]["InstanceId"]')
echo "ID $ID"
[ -n "$ID" ] || exit 1
waitcon "$ID" "^VF-GUEST" || exit 1
console "$ID" | grep "^VF-GUEST" | sed "s/$ID/SELF/"
echo "DESCRIBE $("$E" describe-instances --instance-ids "$ID" | json 'str(d["Reservations"][0]["Instances"][0]["EnaSupport"])')"
echo "LEASED $("$CTL" pool --state-dir /run/vf-pool status | grep -c "$ID")"
echo "FULL $(err run-instances --image-id "$AMI" --instance-type t3.nano --count 2 --no-attach \
     --network-interfaces DeviceIndex=0,InterfaceType=enhanced)"
"$E" terminate-instances --instance-ids "$ID" --wait >/dev/null
echo "AFTER leases=$("$CTL" pool --state-dir /run/vf-pool status | grep -c "i-") instances=$("$E" describe-instances | json 'len([i for r in d["Reservations"] for i in r["Instances"]])') drivers=$(for v in /sys/class/net/eth0/device/virtfn*; do basename $(readlink $v/driver); done | sort | uniq -c | tr -s ' ' | xargs)"
echo "SCENARIO-DONE"
"#;

#[test]
fn enhanced_networking_through_the_front_door() {
    workspace_bin("imds", "imdsd");
    let ctl = workspace_bin("sriov", "sriovctl");
    let env = [("CTL", ctl.to_string_lossy().into_owned())];
    // The igb's wire leads nowhere: with QEMU's user network on it, its DHCP server
    // (10.0.2.2) answers the VF's request before the supervisor does, as a second
    // DHCP server on a VPC would. On EC2 the VPC's DHCP is the only one. (This
    // binary runs one test, so setting the variable races with nothing.)
    std::env::set_var("TESTHOST_IGB_NETDEV", "hubport,hubid=9");
    let (out, all) = run_scenario("enhanced-e2e", SCRIPT, &env, Duration::from_secs(1500));
    assert!(out.stdout.contains("SCENARIO-DONE"), "{all}");
    assert_eq!(
        field(&out.stdout, "VF-GUEST"),
        Some("driver=igbvf iid=SELF"),
        "the guest drives the VF and reads its own id from imdsd:\n{all}"
    );
    assert_eq!(field(&out.stdout, "DESCRIBE"), Some("True"), "{all}");
    assert_eq!(field(&out.stdout, "LEASED"), Some("1"), "{all}");
    assert_eq!(
        field(&out.stdout, "FULL"),
        Some("InsufficientInstanceCapacity"),
        "{all}"
    );
    assert_eq!(
        field(&out.stdout, "AFTER"),
        Some("leases=0 instances=1 drivers=2 igbvf"),
        "the VF went back to the pool; the refused request launched nothing:\n{all}"
    );
}
