use super::*;
use crate::control::volume_type::{resolve_performance, RequestedPerformance};

const KIB: u64 = 1024;
const MIB_U: u64 = 1024 * 1024;

fn volume(
    kind: VolumeType,
    size_gib: u64,
    iops: Option<u32>,
    throughput: Option<u32>,
) -> (Arc<FakeClock>, VolumeQos) {
    let performance = resolve_performance(
        kind,
        size_gib,
        RequestedPerformance {
            iops,
            throughput_mibps: throughput,
        },
    )
    .unwrap();
    let clock = Arc::new(FakeClock::default());
    let qos = VolumeQos::new(
        QosPolicy::for_volume(kind, size_gib, &performance),
        clock.clone(),
    );
    (clock, qos)
}

/// Random (non-sequential) offsets: every request is its own I/O.
fn random_offset(index: u64) -> u64 {
    (index * 7919 % 100_000) * 2 * MIB_U
}

fn seconds(clock: &FakeClock) -> f64 {
    clock.now().as_secs_f64()
}

#[test]
fn gp3_random_4k_runs_at_provisioned_iops() {
    let (clock, qos) = volume(VolumeType::Gp3, 100, None, None);
    for index in 0..30_000 {
        qos.admit_request(IoDirection::Write, random_offset(index), 4 * KIB);
    }
    let elapsed = seconds(&clock);
    assert!(
        (elapsed - 10.0).abs() < 0.05,
        "30,000 I/Os at 3,000 IOPS took {elapsed} s"
    );
    assert_eq!(qos.snapshot().counted_ios, 30_000);
}

#[test]
fn gp3_sequential_small_ios_merge_and_hit_throughput_instead() {
    let (clock, qos) = volume(VolumeType::Gp3, 100, Some(3000), Some(125));
    // 64 KiB sequential reads: 4 merge into one I/O, so IOPS allow 750 MiB/s and the
    // 125 MiB/s throughput limit is what binds: 1,250 MiB take 10 s.
    for index in 0..(1250 * 16) {
        qos.admit_request(IoDirection::Read, index * 64 * KIB, 64 * KIB);
    }
    let elapsed = seconds(&clock);
    assert!((elapsed - 10.0).abs() < 0.05, "took {elapsed} s");
    assert_eq!(qos.snapshot().counted_ios, 1250 * 4);
}

#[test]
fn io2_provisioned_iops_split_large_requests() {
    let (clock, qos) = volume(VolumeType::Io2, 100, Some(1000), None);
    // 1 MiB random writes count 4 I/Os each: 1,000 IOPS allow 250 per second.
    for index in 0..2500 {
        qos.admit_request(IoDirection::Write, random_offset(index), MIB_U);
    }
    let elapsed = seconds(&clock);
    assert!((elapsed - 10.0).abs() < 0.05, "took {elapsed} s");
}

#[test]
fn gp2_bursts_to_3000_until_credits_run_out_then_runs_at_baseline() {
    let performance =
        resolve_performance(VolumeType::Gp2, 100, RequestedPerformance::default()).unwrap();
    let mut policy = QosPolicy::for_volume(VolumeType::Gp2, 100, &performance);
    assert_eq!(
        policy.iops_credits,
        Some(CreditSpec {
            capacity: 5_400_000.0,
            baseline_per_second: 300.0
        })
    );
    assert_eq!(policy.max_iops, 3000.0);
    // A smaller bucket, same rates, so the test runs quickly: 27,000 credits drain at
    // 3,000 - 300 = 2,700 per second, i.e. 10 s of burst.
    policy.iops_credits = Some(CreditSpec {
        capacity: 27_000.0,
        baseline_per_second: 300.0,
    });
    let clock = Arc::new(FakeClock::default());
    let qos = VolumeQos::new(policy, clock.clone());
    for index in 0..30_000 {
        qos.admit_request(IoDirection::Read, random_offset(index), 4 * KIB);
    }
    let burst_phase = seconds(&clock);
    assert!(
        (burst_phase - 10.0).abs() < 0.1,
        "burst phase took {burst_phase} s"
    );
    assert!(qos.snapshot().burst_balance_percent < 1.0);
    for index in 0..3_000 {
        qos.admit_request(IoDirection::Read, random_offset(index + 30_000), 4 * KIB);
    }
    let baseline_phase = seconds(&clock) - burst_phase;
    assert!(
        (baseline_phase - 10.0).abs() < 0.1,
        "3,000 I/Os at 300 IOPS took {baseline_phase} s"
    );
    let throttled = qos.snapshot().throttled_seconds;
    assert!(
        (throttled - seconds(&clock)).abs() < 0.1,
        "throttled {throttled} s of {} s",
        seconds(&clock)
    );
    // Idle time refills the credits at the baseline rate.
    clock.advance(Duration::from_secs(45));
    let balance = qos.snapshot().io_credit_balance.unwrap();
    assert!((balance - 13_500.0).abs() < 400.0, "balance {balance}");
}

#[test]
fn st1_throughput_bursts_per_tib_then_falls_to_baseline() {
    let performance =
        resolve_performance(VolumeType::St1, 2048, RequestedPerformance::default()).unwrap();
    let policy = QosPolicy::for_volume(VolumeType::St1, 2048, &performance);
    assert_eq!(policy.max_throughput_mibps, 500.0);
    assert_eq!(
        policy.throughput_credits,
        Some(CreditSpec {
            capacity: 2048.0 * 1024.0,
            baseline_per_second: 80.0
        })
    );
    assert_eq!(policy.max_iops, 500.0);
    let clock = Arc::new(FakeClock::default());
    let qos = VolumeQos::new(policy, clock.clone());
    // Sequential 1 MiB reads at the 500 MiB/s burst rate for 10 s.
    for index in 0..5000 {
        qos.admit_request(IoDirection::Read, index * MIB_U, MIB_U);
    }
    let elapsed = seconds(&clock);
    assert!((elapsed - 10.0).abs() < 0.05, "took {elapsed} s");
    let left = qos.snapshot().throughput_credit_balance_mib.unwrap();
    assert!(
        (left - (2048.0 * 1024.0 - 5000.0 + 800.0)).abs() < 10.0,
        "credits left {left}"
    );
}

#[test]
fn hdd_small_random_ios_each_cost_a_full_mebibyte() {
    let (clock, qos) = volume(VolumeType::Sc1, 1024, None, None);
    // sc1 1 TiB: burst 80 MiB/s; 4 KiB random reads each charge 1 MiB: 80 per second.
    for index in 0..800 {
        qos.admit_request(IoDirection::Read, random_offset(index), 4 * KIB);
    }
    let elapsed = seconds(&clock);
    assert!((elapsed - 10.0).abs() < 0.05, "took {elapsed} s");
}

#[test]
fn modify_raises_the_limit_and_keeps_credits() {
    let (clock, qos) = volume(VolumeType::Gp3, 100, None, None);
    let faster = resolve_performance(
        VolumeType::Gp3,
        100,
        RequestedPerformance {
            iops: Some(6000),
            throughput_mibps: None,
        },
    )
    .unwrap();
    qos.set_policy(QosPolicy::for_volume(VolumeType::Gp3, 100, &faster));
    for index in 0..60_000 {
        qos.admit_request(IoDirection::Write, random_offset(index), 4 * KIB);
    }
    let elapsed = seconds(&clock);
    assert!((elapsed - 10.0).abs() < 0.05, "took {elapsed} s");
    assert_eq!(qos.snapshot().burst_balance_percent, 100.0);
}

#[test]
fn credit_balances_round_trip_and_clamp() {
    let (clock, qos) = volume(VolumeType::Gp2, 100, None, None);
    for index in 0..3_000 {
        qos.admit_request(IoDirection::Read, random_offset(index), 4 * KIB);
    }
    let saved = qos.credit_balances();
    let left = saved.io_credits.unwrap();
    assert!(left < GP2_CREDIT_CAPACITY - 2_000.0, "credits left {left}");
    assert_eq!(saved.throughput_credits_mib, None);
    let (_, restarted) = volume(VolumeType::Gp2, 100, None, None);
    assert_eq!(
        restarted.credit_balances().io_credits,
        Some(GP2_CREDIT_CAPACITY)
    );
    restarted.restore_credit_balances(saved, Duration::ZERO);
    assert!((restarted.credit_balances().io_credits.unwrap() - left).abs() < 1.0);
    // Five seconds down: a 100 GiB gp2 volume earns its 300 IOPS baseline meanwhile.
    restarted.restore_credit_balances(saved, Duration::from_secs(5));
    let earned = restarted.credit_balances().io_credits.unwrap() - left;
    assert!((earned - 1_500.0).abs() < 1.0, "earned {earned}");
    // A long downtime fills the bucket, never beyond its capacity.
    restarted.restore_credit_balances(saved, Duration::from_secs(86_400));
    assert_eq!(
        restarted.credit_balances().io_credits,
        Some(GP2_CREDIT_CAPACITY)
    );
    restarted.restore_credit_balances(
        CreditBalances {
            io_credits: Some(1e12),
            throughput_credits_mib: Some(5.0),
        },
        Duration::ZERO,
    );
    assert_eq!(
        restarted.credit_balances().io_credits,
        Some(GP2_CREDIT_CAPACITY)
    );
    drop(clock);
}
