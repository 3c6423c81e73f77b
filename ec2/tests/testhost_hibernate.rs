//! Hibernation end to end in the test host: an instance launched with
//! `--hibernation-options Configured=true` on an encrypted root runs a counter;
//! `stop-instances --hibernate` snapshots the VM to an encrypted volume and stops it;
//! `start-instances` restores it: the same counter goes on (no reboot, no second boot
//! of the init agent) and the guest's uptime keeps counting. Also EC2's refusals:
//! hibernating an instance launched without it, and hibernation with an unencrypted
//! root.

use std::time::Duration;

use integration_tests::field;

mod common;
use common::run_scenario;

const SCRIPT: &str = r#"
last_tick() { console "$1" | grep -a '^TICK [0-9]' | tail -1; }

AMI=$(default_ami)
echo "UNENCRYPTED $(err run-instances --image-id "$AMI" --instance-type t3.nano --hibernation-options Configured=true --no-attach)"
PLAIN=$("$E" run-instances --image-id "$AMI" --instance-type t3.nano --no-attach | json 'd["Instances"][0]["InstanceId"]')
waitcon "$PLAIN" "ec2-init:" || exit 1
echo "NOT-CONFIGURED $(err stop-instances --instance-ids "$PLAIN" --hibernate)"
"$E" terminate-instances --instance-ids "$PLAIN" --wait >/dev/null

ID=$("$E" run-instances --image-id "$AMI" --instance-type t3.nano --hibernation-options Configured=true \
     --block-device-mappings '[{"DeviceName":"/dev/vda","Ebs":{"Encrypted":true}}]' --no-attach \
     | json 'd["Instances"][0]["InstanceId"]')
echo "CONFIGURED $("$E" describe-instances --instance-ids "$ID" | json 'd["Reservations"][0]["Instances"][0]["HibernationOptions"]["Configured"]')"
waitcon "$ID" "ec2-init:" || exit 1
sleep 2
send "$ID" 'i=0; while :; do i=$((i+1)); echo "TICK $i $(cut -d" " -f1 /proc/uptime)"; sleep 1; done &'
waitcon "$ID" "^TICK 5 " 60 || exit 1
"$E" stop-instances --instance-ids "$ID" --hibernate --wait >/dev/null
BEFORE=$(last_tick "$ID")
echo "BEFORE $BEFORE"
echo "STATE $("$E" describe-instances --instance-ids "$ID" | json 'd["Reservations"][0]["Instances"][0]["State"]["Name"] + " " + d["Reservations"][0]["Instances"][0]["StateReason"]["Code"]')"
EBS_API_SOCK=$NITRO_STATE_DIR/ebsd/api.sock "$EBS" describe-volumes > /tmp/vols.json
echo "HIBVOL $(json '" ".join(str(v["Encrypted"]) for v in d["Volumes"] if any(a["Device"] == "/dev/sdz" for a in v.get("Attachments", [])))' < /tmp/vols.json)"
sleep 3
"$E" start-instances --instance-ids "$ID" --wait >/dev/null
N=$(echo "$BEFORE" | cut -d" " -f2)
waitcon "$ID" "^TICK $((N + 3)) " 120 || exit 1
echo "AFTER $(console "$ID" | grep -a "^TICK $((N + 1)) " | tail -1)"
echo "RESETS $(console "$ID" | grep -ac "Linux version")"
EBS_API_SOCK=$NITRO_STATE_DIR/ebsd/api.sock "$EBS" describe-volumes > /tmp/vols.json
echo "VOLUMES-RUNNING $(json 'len(d["Volumes"])' < /tmp/vols.json)"
"$E" terminate-instances --instance-ids "$ID" --wait >/dev/null
echo "SCENARIO-DONE"
"#;

#[test]
fn hibernated_instance_resumes_where_it_was() {
    let (out, all) = run_scenario("hibernate-e2e", SCRIPT, &[], Duration::from_secs(1200));
    assert!(out.stdout.contains("SCENARIO-DONE"), "{all}");
    assert_eq!(
        field(&out.stdout, "UNENCRYPTED"),
        Some("UnsupportedHibernationConfiguration"),
        "{all}"
    );
    assert!(
        field(&out.stdout, "NOT-CONFIGURED").is_some_and(|c| !c.is_empty()),
        "hibernating an instance launched without it is refused:\n{all}"
    );
    assert_eq!(field(&out.stdout, "CONFIGURED"), Some("True"), "{all}");
    assert_eq!(
        field(&out.stdout, "STATE"),
        Some("stopped Client.UserInitiatedHibernate"),
        "{all}"
    );
    assert_eq!(
        field(&out.stdout, "HIBVOL"),
        Some("True"),
        "one encrypted hibernation volume while stopped:\n{all}"
    );
    // The counter goes on from where it was, and uptime did not restart.
    let before: Vec<f64> = field(&out.stdout, "BEFORE")
        .unwrap_or("")
        .split(' ')
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let after: Vec<f64> = field(&out.stdout, "AFTER")
        .unwrap_or("")
        .split(' ')
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    assert!(
        before.len() == 2 && after.len() == 2,
        "ticks before and after:\n{all}"
    );
    assert_eq!(
        after[0],
        before[0] + 1.0,
        "the same counter continued:\n{all}"
    );
    assert!(after[1] > before[1], "uptime kept counting:\n{all}");
    assert_eq!(
        field(&out.stdout, "RESETS"),
        Some("1"),
        "the kernel booted once:\n{all}"
    );
    assert_eq!(
        field(&out.stdout, "VOLUMES-RUNNING"),
        Some("1"),
        "the hibernation volume is gone after the resume:\n{all}"
    );
}
