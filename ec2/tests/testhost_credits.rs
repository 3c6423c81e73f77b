//! CPU credits and the type's limits in the test host (pure cgroup v2): a t3.nano
//! launched in unlimited mode boots unthrottled; switched to standard mode with its
//! balance spent (T3 has no launch credits), a busy loop in the guest is held to the
//! baseline: `cpu.max` is 5% of each of its 2 vCPUs, the cgroup's `nr_throttled` grows
//! and its usage rate drops to about 0.1 CPU. The VMM got the type's EBS and network
//! limits on its command line.

use std::time::Duration;

use integration_tests::field;

mod common;
use common::run_scenario;

const SCRIPT: &str = r#"
# A systemd host has cgroup2 at /sys/fs/cgroup; mount it if the test host has not.
grep -q " /sys/fs/cgroup cgroup2 " /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup
AMI=$(default_ami)
ID=$("$E" run-instances --image-id "$AMI" --instance-type t3.nano --no-attach | json 'd["Instances"][0]["InstanceId"]')
[ -n "$ID" ] || exit 1
waitcon "$ID" "ec2-init:" || exit 1
CG=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)/nitro/$ID
PID=$(python3 -c "import json; print(json.load(open('$NITRO_STATE_DIR/instances/$ID.json'))['Launcher']['VmmPid'])")
echo "ARGS $(tr '\0' ' ' < /proc/$PID/cmdline | grep -o 'bw=[0-9]*,iops=[0-9]*' | head -1) $(tr '\0' ' ' < /proc/$PID/cmdline | grep -o 'rx_bw=[0-9]*' | head -1)"
echo "IN-CGROUP $(grep -c "^$PID$" $CG/cgroup.procs)"
echo "UNLIMITED $(cat $CG/cpu.max)"
sleep 3
printf '%s\n' 'while :; do :; done &' > "$NITRO_STATE_DIR/run/$ID/console.in"
"$E" modify-instance-credit-specification --instance-credit-specifications "InstanceId=$ID,CpuCredits=standard" >/dev/null
sleep 12
echo "CPU-MAX $(cat $CG/cpu.max)"
u0=$(awk '$1 == "usage_usec" { print $2 }' $CG/cpu.stat); t0=$(awk '$1 == "nr_throttled" { print $2 }' $CG/cpu.stat)
sleep 10
u1=$(awk '$1 == "usage_usec" { print $2 }' $CG/cpu.stat); t1=$(awk '$1 == "nr_throttled" { print $2 }' $CG/cpu.stat)
echo "RATE $(python3 -c "print(round(($u1 - $u0) / 10e6, 3))")"
echo "THROTTLED $((t1 - t0))"
"$E" describe-instance-credit-specifications --instance-ids "$ID" | json '"MODE " + d["InstanceCreditSpecifications"][0]["CpuCredits"]'
cat "$NITRO_STATE_DIR/run/$ID/cpu-credits.json"; echo
"$E" terminate-instances --instance-ids "$ID" --force --wait >/dev/null
echo "CGROUP-GONE $([ -d $CG ] && echo no || echo yes)"
echo "SCENARIO-DONE"
"#;

#[test]
fn cpu_credits_hold_a_standard_instance_to_its_baseline() {
    let (out, all) = run_scenario("credits-e2e", SCRIPT, &[], Duration::from_secs(1500));
    assert!(out.stdout.contains("SCENARIO-DONE"), "{all}");
    // t3.nano: EBS maximum 260.57 MB/s and 11,800 IOPS, one drive; 5 Gbps peak.
    assert_eq!(
        field(&out.stdout, "ARGS"),
        Some("bw=260570000,iops=11800 rx_bw=625000000"),
        "{all}"
    );
    assert_eq!(field(&out.stdout, "IN-CGROUP"), Some("1"), "{all}");
    assert_eq!(field(&out.stdout, "UNLIMITED"), Some("max 100000"), "{all}");
    assert_eq!(field(&out.stdout, "CPU-MAX"), Some("10000 100000"), "{all}");
    let rate: f64 = field(&out.stdout, "RATE")
        .and_then(|r| r.parse().ok())
        .expect("rate");
    assert!(
        rate < 0.15,
        "usage held near the 0.1 CPU baseline: {rate}\n{all}"
    );
    let throttled: u64 = field(&out.stdout, "THROTTLED")
        .and_then(|t| t.parse().ok())
        .expect("throttled");
    assert!(throttled > 10, "{all}");
    assert_eq!(field(&out.stdout, "MODE"), Some("standard"), "{all}");
    assert_eq!(field(&out.stdout, "CGROUP-GONE"), Some("yes"), "{all}");
}
