//! The front door end to end in the test host (Linux on nested KVM): import the
//! default AMI (scripts/default-ami.sh), run an instance whose user data writes a file
//! to its root volume; stop and start it (the file is there, user data did not run
//! again); create an image of it and launch a second instance from that image with an
//! extra data volume kept on termination (the file is there); kill -9 a VMM (the
//! system status check fails, auto-recovery boots the guest again, data intact);
//! launch permissions; EC2's errors for bad input; terminate: root volumes gone, the
//! data volume kept. The guest's console input is driven through `console.in`.

use std::time::Duration;

use integration_tests::field;

mod common;
use common::run_scenario;

const SCRIPT: &str = r#"
AMI=$(default_ami)
echo "AMI $AMI"
cat > /tmp/ud.sh <<'EOF'
#!/bin/sh
echo "ran $(cat /proc/uptime)" >> /root/ud-runs
echo hello-from-user-data > /root/hello.txt
echo USERDATA-MARKER
EOF
ID=$("$E" run-instances --image-id "$AMI" --instance-type t3.nano --user-data file:///tmp/ud.sh | json 'd["Instances"][0]["InstanceId"]')
echo "ID $ID"
waitcon "$ID" USERDATA-MARKER || exit 1
echo "FIRST-BOOT $(console "$ID" | grep -c 'user-data ran')"
"$E" stop-instances --instance-ids "$ID" --wait >/dev/null
echo "STOPPED $("$E" describe-instances --instance-ids "$ID" | json 'd["Reservations"][0]["Instances"][0]["State"]["Name"]')"
"$E" start-instances --instance-ids "$ID" --wait >/dev/null
waitcon "$ID" "user-data already ran" || exit 1
sleep 1
# The marker is assembled by the guest's shell so the echoed command line never matches.
send "$ID" 'M=AFTER-RESTART; echo "$M file=$(cat /root/hello.txt) runs=$(wc -l < /root/ud-runs)"'
waitcon "$ID" "^AFTER-RESTART file=" 30 || exit 1
console "$ID" | grep "^AFTER-RESTART" | tail -1

IMG2=$("$E" create-image --instance-id "$ID" --name "image-of-first" | json 'd["ImageId"]')
echo "IMG2 $IMG2"
ID2=$("$E" run-instances --image-id "$IMG2" --instance-type t3.nano \
      --block-device-mappings '[{"DeviceName":"/dev/vdb","Ebs":{"VolumeSize":1,"DeleteOnTermination":false}}]' \
      | json 'd["Instances"][0]["InstanceId"]')
echo "ID2 $ID2"
waitcon "$ID2" "ec2-init:" || exit 1
sleep 2
send "$ID2" 'M=SECOND; echo "$M file=$(cat /root/hello.txt) disks=$(ls /sys/block | grep -c vd)"'
waitcon "$ID2" "^SECOND file=" 30 || exit 1
console "$ID2" | grep "^SECOND" | tail -1
# The instance check is ARP reachability: ok while the guest's network is up,
# impaired when it goes down, ok again when it comes back.
istatus() { "$E" describe-instance-status --instance-ids "$1" | json 'd["InstanceStatuses"][0]["InstanceStatus"]["Status"] + " " + d["InstanceStatuses"][0]["SystemStatus"]["Status"]'; }
echo "REACH-UP $(istatus "$ID2")"
send "$ID2" 'ip link set eth0 down'
sleep 2
echo "REACH-DOWN $(istatus "$ID2")"
send "$ID2" 'ip link set eth0 up'
for i in $(seq 20); do [ "$(istatus "$ID2")" = "ok ok" ] && break; sleep 1; done
echo "REACH-AGAIN $(istatus "$ID2")"

# Crash: kill -9 the VMM; the system check fails, then recovery boots the guest again.
VMMPID=$(python3 -c "import json; print(json.load(open('$NITRO_STATE_DIR/instances/$ID2.json'))['Launcher']['VmmPid'])")
BOOTS=$(console "$ID2" | grep -c "ec2-init:")
kill -9 "$VMMPID"
sleep 1
echo "AFTER-KILL $("$E" describe-instance-status --instance-ids "$ID2" | json 'd["InstanceStatuses"][0]["SystemStatus"]["Status"]')"
waitcon "$ID2" "ec2-init:" 180 $((BOOTS + 1)) || exit 1
sleep 2
echo "RECOVERED $("$E" describe-instance-status --instance-ids "$ID2" | json 'str(d["InstanceStatuses"][0]["Recoveries"]) + " " + d["InstanceStatuses"][0]["SystemStatus"]["Status"]')"
send "$ID2" 'M=POST-CRASH; echo "$M file=$(cat /root/hello.txt)"'
waitcon "$ID2" "^POST-CRASH file=" 30 || exit 1
console "$ID2" | grep "^POST-CRASH" | tail -1

# Launch permissions: another account cannot launch the private image, then can.
echo "OTHER-DENIED $(err --account-id 111122223333 run-instances --image-id "$IMG2" --no-attach)"
"$E" modify-image-attribute --image-id "$IMG2" --launch-permission 'Add=[{UserId=111122223333}]'
OTHER=$("$E" --account-id 111122223333 run-instances --image-id "$IMG2" --instance-type t3.nano --no-attach | json 'd["Instances"][0]["InstanceId"]')
echo "OTHER-LAUNCHED ${OTHER:0:2}"
"$E" --account-id 111122223333 terminate-instances --instance-ids "$OTHER" --force --wait >/dev/null

# Bad input.
echo "BAD-IMAGE $(err run-instances --image-id ami-0123456789abcdef0 --no-attach)"
echo "BAD-ZONE $(err run-instances --image-id "$AMI" --placement AvailabilityZone=us-east-1z --no-attach)"
echo "BAD-TYPE $(err run-instances --image-id "$AMI" --instance-type t3.gigantic --no-attach)"
echo "BAD-SIZE $(err run-instances --image-id "$AMI" --block-device-mappings '[{"DeviceName":"/dev/vda","Ebs":{"VolumeSize":1,"VolumeType":"st1"}}]' --no-attach)"
head -c 17000 /dev/zero | tr '\0' a > /tmp/big-ud
echo "BAD-USERDATA $(err run-instances --image-id "$AMI" --user-data file:///tmp/big-ud --no-attach)"

"$E" terminate-instances --instance-ids "$ID" "$ID2" --wait >/dev/null
echo "TERMINATED $("$E" describe-instances --instance-ids "$ID" "$ID2" | json '" ".join(i["State"]["Name"] for r in d["Reservations"] for i in r["Instances"])')"
EBS_API_SOCK=$NITRO_STATE_DIR/ebsd/api.sock "$EBS" describe-volumes > /tmp/vols.json
echo "INSTANCES $("$E" describe-instances | json '" ".join(i["State"]["Name"] for r in d["Reservations"] for i in r["Instances"])')"
echo "VOLUMES-LEFT $(json '" ".join(v["State"] + ":" + str(v["Size"]) for v in d["Volumes"])' < /tmp/vols.json)"
echo "SCENARIO-DONE"
"#;

#[test]
fn instances_from_amis_end_to_end() {
    let (out, all) = run_scenario("instances-e2e", SCRIPT, &[], Duration::from_secs(1500));
    assert!(out.stdout.contains("SCENARIO-DONE"), "{all}");
    assert_eq!(field(&out.stdout, "FIRST-BOOT"), Some("1"), "{all}");
    assert_eq!(field(&out.stdout, "STOPPED"), Some("stopped"), "{all}");
    assert_eq!(
        field(&out.stdout, "AFTER-RESTART"),
        Some("file=hello-from-user-data runs=1"),
        "the file survived stop/start and user data ran once:\n{all}"
    );
    assert_eq!(
        field(&out.stdout, "SECOND"),
        Some("file=hello-from-user-data disks=2"),
        "the new image carries the file; the data volume is attached:\n{all}"
    );
    assert_eq!(field(&out.stdout, "REACH-UP"), Some("ok ok"), "{all}");
    assert_eq!(
        field(&out.stdout, "REACH-DOWN"),
        Some("impaired ok"),
        "{all}"
    );
    assert_eq!(field(&out.stdout, "REACH-AGAIN"), Some("ok ok"), "{all}");
    assert_eq!(field(&out.stdout, "AFTER-KILL"), Some("impaired"), "{all}");
    assert_eq!(field(&out.stdout, "RECOVERED"), Some("1 ok"), "{all}");
    assert_eq!(
        field(&out.stdout, "POST-CRASH"),
        Some("file=hello-from-user-data"),
        "{all}"
    );
    let denied = field(&out.stdout, "OTHER-DENIED").unwrap_or("");
    assert!(
        denied == "AuthFailure" || denied == "InvalidAMIID.NotFound",
        "another account cannot launch a private image: {denied}\n{all}"
    );
    assert_eq!(field(&out.stdout, "OTHER-LAUNCHED"), Some("i-"), "{all}");
    assert_eq!(
        field(&out.stdout, "BAD-IMAGE"),
        Some("InvalidAMIID.NotFound"),
        "{all}"
    );
    assert_eq!(
        field(&out.stdout, "BAD-ZONE"),
        Some("InvalidParameterValue"),
        "{all}"
    );
    assert_eq!(
        field(&out.stdout, "BAD-TYPE"),
        Some("InvalidParameterValue"),
        "{all}"
    );
    assert!(
        field(&out.stdout, "BAD-SIZE").is_some_and(|c| !c.is_empty()),
        "{all}"
    );
    assert_eq!(
        field(&out.stdout, "BAD-USERDATA"),
        Some("InvalidParameterValue"),
        "{all}"
    );
    assert_eq!(
        field(&out.stdout, "TERMINATED"),
        Some("terminated terminated"),
        "{all}"
    );
    assert!(
        field(&out.stdout, "INSTANCES")
            .unwrap_or("")
            .split(' ')
            .all(|s| s == "terminated"),
        "no bad request launched anything:\n{all}"
    );
    assert_eq!(
        field(&out.stdout, "VOLUMES-LEFT"),
        Some("available:1"),
        "root volumes deleted, the data volume kept:\n{all}"
    );
}
