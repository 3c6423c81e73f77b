//! The instance-type catalogue: t3/t3a (nano..2xlarge) and m5/m6i, c5/c6i, r5/r6i
//! (large..4xlarge) with AWS's published numbers, used as the VMM's size and QoS limits.
//!
//! Sources (Amazon EC2 User Guide, the copy in the awsdocs/amazon-ec2-user-guide repository):
//! - CPU credits (earned per hour, maximum accrued, vCPUs, baseline per vCPU) and the rule
//!   that T3/T3a get no launch credits: `burstable-credits-baseline-concepts.md`
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/burstable-credits-baseline-concepts.html>).
//! - EBS-optimized baseline and maximum bandwidth (Mbps), throughput (MB/s at 128 KiB I/O)
//!   and IOPS (16 KiB I/O) of t3, t3a, m5, c5, r5 and m6i: `ebs-optimized.md`
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ebs-optimized.html>).
//! - vCPUs and memory: `general-purpose-instances.md` and the Instance Types Guide
//!   (<https://docs.aws.amazon.com/ec2/latest/instancetypes/gp.html>, `co.html`, `mo.html`).
//! - Network baseline/burst bandwidth, and c6i/r6i EBS numbers (the same as m6i's), from
//!   the Instance Types Guide's network and EBS specification tables (the stored copy of
//!   the user guide predates those families; not re-checked against it).

use serde::Serialize;

use crate::error::Ec2Error;

/// The type `run-instances` uses when none is given.
pub const DEFAULT_INSTANCE_TYPE: &str = "t3.micro";

/// EBS-optimized limits: what the instance's EBS traffic as a whole may use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct EbsLimits {
    pub baseline_bandwidth_in_mbps: u32,
    pub baseline_throughput_in_m_bps: f64,
    pub baseline_iops: u32,
    pub maximum_bandwidth_in_mbps: u32,
    pub maximum_throughput_in_m_bps: f64,
    pub maximum_iops: u32,
}

/// Network bandwidth: sustained baseline and the burst ("up to") rate, in Gbps.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkLimits {
    pub baseline_bandwidth_in_gbps: f64,
    pub peak_bandwidth_in_gbps: f64,
}

/// The burstable-CPU parameters of a T type.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct BurstableCpu {
    /// Baseline utilisation per vCPU, in percent (t3.micro: 10).
    pub baseline_percent_per_vcpu: f64,
    pub credits_earned_per_hour: f64,
    /// The accrual limit: 24 hours of earned credits.
    pub max_earned_credits: f64,
    /// Credits granted at launch (T2 Standard: 30 per vCPU; T3/T3a: none).
    pub launch_credits: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceTypeInfo {
    pub instance_type: &'static str,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub ebs: EbsLimits,
    pub network: NetworkLimits,
    pub burstable: Option<BurstableCpu>,
}

impl InstanceTypeInfo {
    /// The family part of the name (`t3` of `t3.micro`).
    pub fn family(&self) -> &'static str {
        self.instance_type
            .split_once('.')
            .map_or(self.instance_type, |(family, _)| family)
    }

    /// Whether the type has enhanced networking: every type in the catalogue is a Nitro
    /// type with ENA `required` (DescribeInstanceTypes' `EnaSupport`).
    pub fn supports_enhanced_networking(&self) -> bool {
        true
    }

    /// The `InstanceTypes[]` element of DescribeInstanceTypes, with EC2's field names.
    pub fn describe_json(&self) -> serde_json::Value {
        let peak = self.network.peak_bandwidth_in_gbps;
        serde_json::json!({
            "InstanceType": self.instance_type,
            "CurrentGeneration": true,
            "SupportedUsageClasses": ["on-demand"],
            "SupportedRootDeviceTypes": ["ebs"],
            "SupportedVirtualizationTypes": ["hvm"],
            "Hypervisor": "nitro",
            "ProcessorInfo": {"SupportedArchitectures": ["x86_64"]},
            "VCpuInfo": {"DefaultVCpus": self.vcpus},
            "MemoryInfo": {"SizeInMiB": self.memory_mib},
            "InstanceStorageSupported": false,
            "EbsInfo": {
                "EbsOptimizedSupport": "default",
                "EncryptionSupport": "supported",
                "NvmeSupport": "required",
                "EbsOptimizedInfo": self.ebs,
            },
            "NetworkInfo": {
                "NetworkPerformance": format!("Up to {peak} Gigabit"),
                "EnaSupport": "required",
                "NetworkCards": [{
                    "NetworkCardIndex": 0,
                    "BaselineBandwidthInGbps": self.network.baseline_bandwidth_in_gbps,
                    "PeakBandwidthInGbps": peak,
                }],
            },
            "HibernationSupported": true,
            "BurstablePerformanceSupported": self.burstable.is_some(),
        })
    }
}

/// Looks a type up by name; an unknown name is EC2's `InvalidParameterValue`.
pub fn lookup(name: &str) -> Result<&'static InstanceTypeInfo, Ec2Error> {
    CATALOGUE
        .iter()
        .find(|info| info.instance_type == name)
        .ok_or_else(|| Ec2Error::invalid_value(format!("Invalid value '{name}' for InstanceType.")))
}

/// Every type in the catalogue.
pub fn all() -> &'static [InstanceTypeInfo] {
    CATALOGUE
}

/// DescribeInstanceTypes: every type when `names` is empty, else those (an unknown
/// name is EC2's error), as `{"InstanceTypes": [...]}`.
pub fn describe(names: &[String]) -> Result<serde_json::Value, Ec2Error> {
    let types: Vec<serde_json::Value> = if names.is_empty() {
        all().iter().map(|t| t.describe_json()).collect()
    } else {
        names
            .iter()
            .map(|name| lookup(name).map(|t| t.describe_json()))
            .collect::<Result<_, _>>()?
    };
    Ok(serde_json::json!({ "InstanceTypes": types }))
}

const fn ebs(baseline: (u32, f64, u32), maximum: (u32, f64, u32)) -> EbsLimits {
    EbsLimits {
        baseline_bandwidth_in_mbps: baseline.0,
        baseline_throughput_in_m_bps: baseline.1,
        baseline_iops: baseline.2,
        maximum_bandwidth_in_mbps: maximum.0,
        maximum_throughput_in_m_bps: maximum.1,
        maximum_iops: maximum.2,
    }
}

const fn net(baseline: f64, peak: f64) -> NetworkLimits {
    NetworkLimits {
        baseline_bandwidth_in_gbps: baseline,
        peak_bandwidth_in_gbps: peak,
    }
}

const fn burst(percent: f64, per_hour: f64) -> Option<BurstableCpu> {
    Some(BurstableCpu {
        baseline_percent_per_vcpu: percent,
        credits_earned_per_hour: per_hour,
        max_earned_credits: per_hour * 24.0,
        launch_credits: 0.0,
    })
}

const fn t(
    name: &'static str,
    vcpus: u32,
    memory_mib: u64,
    credits: Option<BurstableCpu>,
    ebs: EbsLimits,
    network: NetworkLimits,
) -> InstanceTypeInfo {
    InstanceTypeInfo {
        instance_type: name,
        vcpus,
        memory_mib,
        ebs,
        network,
        burstable: credits,
    }
}

const GIB: u64 = 1024;
const T3_SMALL_MAX: (u32, f64, u32) = (2_085, 260.57, 11_800);
const T3_LARGE_MAX: (u32, f64, u32) = (2_780, 347.5, 15_700);
const T3_BASE_LARGE: (u32, f64, u32) = (695, 86.86, 4_000);
const M5_MAX: (u32, f64, u32) = (4_750, 593.75, 18_750);
const C5_MAX: (u32, f64, u32) = (4_750, 593.75, 20_000);
const M6I_MAX: (u32, f64, u32) = (10_000, 1_250.0, 40_000);
// Baselines of the 6th-generation Intel sizes (m6i, c6i and r6i share them).
const G6_LARGE: (u32, f64, u32) = (650, 81.25, 3_600);
const G6_XLARGE: (u32, f64, u32) = (1_250, 156.25, 6_000);
const G6_2XLARGE: (u32, f64, u32) = (2_500, 312.5, 12_000);
const G6_4XLARGE: (u32, f64, u32) = (5_000, 625.0, 20_000);

#[rustfmt::skip]
static CATALOGUE: &[InstanceTypeInfo] = &[
    t("t3.nano", 2, GIB / 2, burst(5.0, 6.0), ebs((43, 5.43, 250), T3_SMALL_MAX), net(0.032, 5.0)),
    t("t3.micro", 2, GIB, burst(10.0, 12.0), ebs((87, 10.86, 500), T3_SMALL_MAX), net(0.064, 5.0)),
    t("t3.small", 2, 2 * GIB, burst(20.0, 24.0), ebs((174, 21.71, 1_000), T3_SMALL_MAX), net(0.128, 5.0)),
    t("t3.medium", 2, 4 * GIB, burst(20.0, 24.0), ebs((347, 43.43, 2_000), T3_SMALL_MAX), net(0.256, 5.0)),
    t("t3.large", 2, 8 * GIB, burst(30.0, 36.0), ebs(T3_BASE_LARGE, T3_LARGE_MAX), net(0.512, 5.0)),
    t("t3.xlarge", 4, 16 * GIB, burst(40.0, 96.0), ebs(T3_BASE_LARGE, T3_LARGE_MAX), net(1.024, 5.0)),
    t("t3.2xlarge", 8, 32 * GIB, burst(40.0, 192.0), ebs(T3_BASE_LARGE, T3_LARGE_MAX), net(2.048, 5.0)),
    t("t3a.nano", 2, GIB / 2, burst(5.0, 6.0), ebs((45, 5.63, 250), T3_SMALL_MAX), net(0.032, 5.0)),
    t("t3a.micro", 2, GIB, burst(10.0, 12.0), ebs((90, 11.25, 500), T3_SMALL_MAX), net(0.064, 5.0)),
    t("t3a.small", 2, 2 * GIB, burst(20.0, 24.0), ebs((175, 21.88, 1_000), T3_SMALL_MAX), net(0.128, 5.0)),
    t("t3a.medium", 2, 4 * GIB, burst(20.0, 24.0), ebs((350, 43.75, 2_000), T3_SMALL_MAX), net(0.256, 5.0)),
    t("t3a.large", 2, 8 * GIB, burst(30.0, 36.0), ebs(T3_BASE_LARGE, T3_LARGE_MAX), net(0.512, 5.0)),
    t("t3a.xlarge", 4, 16 * GIB, burst(40.0, 96.0), ebs(T3_BASE_LARGE, T3_LARGE_MAX), net(1.024, 5.0)),
    t("t3a.2xlarge", 8, 32 * GIB, burst(40.0, 192.0), ebs(T3_BASE_LARGE, T3_LARGE_MAX), net(2.048, 5.0)),
    t("m5.large", 2, 8 * GIB, None, ebs((650, 81.25, 3_600), M5_MAX), net(0.75, 10.0)),
    t("m5.xlarge", 4, 16 * GIB, None, ebs((1_150, 143.75, 6_000), M5_MAX), net(1.25, 10.0)),
    t("m5.2xlarge", 8, 32 * GIB, None, ebs((2_300, 287.5, 12_000), M5_MAX), net(2.5, 10.0)),
    t("m5.4xlarge", 16, 64 * GIB, None, ebs(M5_MAX, M5_MAX), net(5.0, 10.0)),
    t("m6i.large", 2, 8 * GIB, None, ebs(G6_LARGE, M6I_MAX), net(0.781, 12.5)),
    t("m6i.xlarge", 4, 16 * GIB, None, ebs(G6_XLARGE, M6I_MAX), net(1.562, 12.5)),
    t("m6i.2xlarge", 8, 32 * GIB, None, ebs(G6_2XLARGE, M6I_MAX), net(3.125, 12.5)),
    t("m6i.4xlarge", 16, 64 * GIB, None, ebs(G6_4XLARGE, M6I_MAX), net(6.25, 12.5)),
    t("c5.large", 2, 4 * GIB, None, ebs((650, 81.25, 4_000), C5_MAX), net(0.75, 10.0)),
    t("c5.xlarge", 4, 8 * GIB, None, ebs((1_150, 143.75, 6_000), C5_MAX), net(1.25, 10.0)),
    t("c5.2xlarge", 8, 16 * GIB, None, ebs((2_300, 287.5, 10_000), C5_MAX), net(2.5, 10.0)),
    t("c5.4xlarge", 16, 32 * GIB, None, ebs(C5_MAX, C5_MAX), net(5.0, 10.0)),
    t("c6i.large", 2, 4 * GIB, None, ebs(G6_LARGE, M6I_MAX), net(0.781, 12.5)),
    t("c6i.xlarge", 4, 8 * GIB, None, ebs(G6_XLARGE, M6I_MAX), net(1.562, 12.5)),
    t("c6i.2xlarge", 8, 16 * GIB, None, ebs(G6_2XLARGE, M6I_MAX), net(3.125, 12.5)),
    t("c6i.4xlarge", 16, 32 * GIB, None, ebs(G6_4XLARGE, M6I_MAX), net(6.25, 12.5)),
    t("r5.large", 2, 16 * GIB, None, ebs((650, 81.25, 3_600), M5_MAX), net(0.75, 10.0)),
    t("r5.xlarge", 4, 32 * GIB, None, ebs((1_150, 143.75, 6_000), M5_MAX), net(1.25, 10.0)),
    t("r5.2xlarge", 8, 64 * GIB, None, ebs((2_300, 287.5, 12_000), M5_MAX), net(2.5, 10.0)),
    t("r5.4xlarge", 16, 128 * GIB, None, ebs(M5_MAX, M5_MAX), net(5.0, 10.0)),
    t("r6i.large", 2, 16 * GIB, None, ebs(G6_LARGE, M6I_MAX), net(0.781, 12.5)),
    t("r6i.xlarge", 4, 32 * GIB, None, ebs(G6_XLARGE, M6I_MAX), net(1.562, 12.5)),
    t("r6i.2xlarge", 8, 64 * GIB, None, ebs(G6_2XLARGE, M6I_MAX), net(3.125, 12.5)),
    t("r6i.4xlarge", 16, 128 * GIB, None, ebs(G6_4XLARGE, M6I_MAX), net(6.25, 12.5)),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn lookup_known_and_unknown_types() {
        let micro = lookup("t3.micro").unwrap();
        assert_eq!((micro.vcpus, micro.memory_mib), (2, 1024));
        assert_eq!(micro.family(), "t3");
        let credits = micro.burstable.unwrap();
        assert_eq!(credits.credits_earned_per_hour, 12.0);
        assert_eq!(credits.max_earned_credits, 288.0);
        assert_eq!(credits.launch_credits, 0.0);
        assert!(lookup("m5.large").unwrap().burstable.is_none());
        let error = lookup("t3.huge").unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidParameterValue);
        assert_eq!(error.message, "Invalid value 't3.huge' for InstanceType.");
        assert!(lookup(DEFAULT_INSTANCE_TYPE).is_ok());
    }

    #[test]
    fn catalogue_covers_the_families_and_is_consistent() {
        for family in ["t3", "t3a"] {
            for size in [
                "nano", "micro", "small", "medium", "large", "xlarge", "2xlarge",
            ] {
                lookup(&format!("{family}.{size}")).unwrap();
            }
        }
        for family in ["m5", "m6i", "c5", "c6i", "r5", "r6i"] {
            for size in ["large", "xlarge", "2xlarge", "4xlarge"] {
                lookup(&format!("{family}.{size}")).unwrap();
            }
        }
        let mut names = std::collections::HashSet::new();
        for info in all() {
            assert!(
                names.insert(info.instance_type),
                "{} twice",
                info.instance_type
            );
            let ebs = info.ebs;
            assert!(ebs.baseline_bandwidth_in_mbps <= ebs.maximum_bandwidth_in_mbps);
            assert!(ebs.baseline_iops <= ebs.maximum_iops);
            assert!(ebs.baseline_throughput_in_m_bps <= ebs.maximum_throughput_in_m_bps);
            // MB/s is bandwidth / 8, to the documents' rounding.
            let derived = f64::from(ebs.maximum_bandwidth_in_mbps) / 8.0;
            assert!(
                (derived - ebs.maximum_throughput_in_m_bps).abs() < 1.0,
                "{}",
                info.instance_type
            );
            assert!(info.network.baseline_bandwidth_in_gbps < info.network.peak_bandwidth_in_gbps);
            if let Some(credits) = info.burstable {
                // The guide's identity: baseline % = (credits per hour / vCPUs) / 60 minutes.
                let baseline =
                    credits.credits_earned_per_hour / f64::from(info.vcpus) / 60.0 * 100.0;
                assert!(
                    (baseline - credits.baseline_percent_per_vcpu).abs() < 1e-9,
                    "{}",
                    info.instance_type
                );
            }
        }
    }

    #[test]
    fn published_numbers_spot_checks() {
        let large = lookup("t3.2xlarge").unwrap();
        assert_eq!(large.burstable.unwrap().max_earned_credits, 4608.0);
        assert_eq!(large.ebs.maximum_iops, 15_700);
        assert_eq!(
            lookup("t3a.nano").unwrap().ebs.baseline_bandwidth_in_mbps,
            45
        );
        assert_eq!(lookup("c5.2xlarge").unwrap().ebs.baseline_iops, 10_000);
        assert_eq!(lookup("r5.4xlarge").unwrap().memory_mib, 131_072);
        assert_eq!(
            lookup("m6i.xlarge").unwrap().ebs.maximum_bandwidth_in_mbps,
            10_000
        );
    }

    #[test]
    fn describe_json_uses_ec2_field_names() {
        let json = lookup("t3.micro").unwrap().describe_json();
        assert_eq!(json["VCpuInfo"]["DefaultVCpus"], 2);
        assert_eq!(json["MemoryInfo"]["SizeInMiB"], 1024);
        assert_eq!(json["EbsInfo"]["EbsOptimizedInfo"]["BaselineIops"], 500);
        assert_eq!(
            json["EbsInfo"]["EbsOptimizedInfo"]["MaximumThroughputInMBps"],
            260.57
        );
        assert_eq!(json["NetworkInfo"]["NetworkPerformance"], "Up to 5 Gigabit");
        assert_eq!(json["BurstablePerformanceSupported"], true);
    }
}
