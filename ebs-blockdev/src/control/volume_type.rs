//! EBS volume types and the size / IOPS / throughput rules EC2 enforces for each.
//!
//! Numbers follow the current EC2 API model (see docs/ebs.md). Every rejection names
//! the field, the value and the limit, the way EC2's `InvalidParameterValue` does.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ControlError;

/// One GiB in bytes; EC2 sizes are whole GiB.
pub const GIB: u64 = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeType {
    Gp2,
    Gp3,
    Io1,
    Io2,
    St1,
    Sc1,
    Standard,
}

impl VolumeType {
    pub const ALL: [VolumeType; 7] = [
        VolumeType::Gp2,
        VolumeType::Gp3,
        VolumeType::Io1,
        VolumeType::Io2,
        VolumeType::St1,
        VolumeType::Sc1,
        VolumeType::Standard,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VolumeType::Gp2 => "gp2",
            VolumeType::Gp3 => "gp3",
            VolumeType::Io1 => "io1",
            VolumeType::Io2 => "io2",
            VolumeType::St1 => "st1",
            VolumeType::Sc1 => "sc1",
            VolumeType::Standard => "standard",
        }
    }

    /// Size range in GiB accepted by CreateVolume / ModifyVolume.
    pub fn size_range_gib(self) -> (u64, u64) {
        match self {
            VolumeType::Gp2 => (1, 16_384),
            VolumeType::Gp3 => (1, 65_536),
            VolumeType::Io1 => (4, 16_384),
            VolumeType::Io2 => (4, 65_536),
            VolumeType::St1 | VolumeType::Sc1 => (125, 16_384),
            VolumeType::Standard => (1, 1_024),
        }
    }

    /// SSD types count one I/O per 256 KiB; HDD types (st1, sc1) per 1 MiB.
    pub fn is_hdd(self) -> bool {
        matches!(self, VolumeType::St1 | VolumeType::Sc1)
    }

    /// Only Provisioned IOPS volumes can be attached to several instances at once.
    pub fn supports_multi_attach(self) -> bool {
        matches!(self, VolumeType::Io1 | VolumeType::Io2)
    }

    /// Whether the caller may (or, for io1/io2, must) provision IOPS.
    fn accepts_iops(self) -> bool {
        matches!(self, VolumeType::Gp3 | VolumeType::Io1 | VolumeType::Io2)
    }
}

impl fmt::Display for VolumeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VolumeType {
    type Err = ControlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        VolumeType::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| {
                ControlError::InvalidParameterValue(format!(
                    "Value ({text}) for parameter volumeType is invalid. \
                     Valid types: gp2, gp3, io1, io2, st1, sc1, standard."
                ))
            })
    }
}

/// What a caller asked for; `None` means "use the type's default".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestedPerformance {
    pub iops: Option<u32>,
    pub throughput_mibps: Option<u32>,
}

/// The performance a volume gets, after defaults and derivations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumePerformance {
    /// Baseline IOPS (for gp2: 3/GiB within 100..=16,000; HDD: max 1 MiB IOPS).
    pub baseline_iops: u32,
    /// IOPS the burst bucket allows (gp2 below 1,000 GiB: 3,000); equals baseline otherwise.
    pub burst_iops: u32,
    /// Baseline throughput in MiB/s.
    pub baseline_throughput_mibps: u32,
    /// Burst throughput in MiB/s (st1/sc1 burst per TiB); equals baseline otherwise.
    pub burst_throughput_mibps: u32,
    /// The IOPS value EC2 reports in DescribeVolumes (None for st1/sc1/standard).
    pub reported_iops: Option<u32>,
    /// The throughput EC2 reports (gp3 only).
    pub reported_throughput_mibps: Option<u32>,
}

fn out_of_range(field: &str, value: u64, min: u64, max: u64, kind: VolumeType) -> ControlError {
    ControlError::InvalidParameterValue(format!(
        "{field} {value} is out of range for {kind} volumes: it must be between {min} and {max}"
    ))
}

/// Validates a size/type/IOPS/throughput combination and works out what it provides.
pub fn resolve_performance(
    kind: VolumeType,
    size_gib: u64,
    requested: RequestedPerformance,
) -> Result<VolumePerformance, ControlError> {
    let (min_size, max_size) = kind.size_range_gib();
    if !(min_size..=max_size).contains(&size_gib) {
        return Err(out_of_range(
            "Size (GiB)",
            size_gib,
            min_size,
            max_size,
            kind,
        ));
    }
    if requested.iops.is_some() && !kind.accepts_iops() {
        return Err(ControlError::InvalidParameterCombination(format!(
            "Iops is not supported for {kind} volumes (only gp3, io1 and io2)"
        )));
    }
    if requested.throughput_mibps.is_some() && kind != VolumeType::Gp3 {
        return Err(ControlError::InvalidParameterCombination(format!(
            "Throughput is not supported for {kind} volumes (only gp3)"
        )));
    }
    let per_tib = |mibps_per_tib: u64, max: u32| -> u32 {
        ((mibps_per_tib * size_gib) / 1024).clamp(1, u64::from(max)) as u32
    };
    let performance = match kind {
        VolumeType::Gp2 => {
            let baseline = (3 * size_gib).clamp(100, 16_000) as u32;
            VolumePerformance {
                baseline_iops: baseline,
                burst_iops: baseline.max(3_000),
                baseline_throughput_mibps: 250,
                burst_throughput_mibps: 250,
                reported_iops: Some(baseline),
                reported_throughput_mibps: None,
            }
        }
        VolumeType::Gp3 => {
            let iops = requested.iops.unwrap_or(3_000);
            if !(3_000..=80_000).contains(&iops) {
                return Err(out_of_range("Iops", iops.into(), 3_000, 80_000, kind));
            }
            if iops > 3_000 && u64::from(iops) > 500 * size_gib {
                return Err(ControlError::InvalidParameterValue(format!(
                    "Iops {iops} exceeds the gp3 maximum of 500 IOPS per GiB \
                     ({} for a {size_gib} GiB volume)",
                    (500 * size_gib).max(3_000)
                )));
            }
            let throughput = requested.throughput_mibps.unwrap_or(125);
            if !(125..=2_000).contains(&throughput) {
                return Err(out_of_range(
                    "Throughput (MiB/s)",
                    throughput.into(),
                    125,
                    2_000,
                    kind,
                ));
            }
            if throughput > 125 && throughput > iops / 4 {
                return Err(ControlError::InvalidParameterValue(format!(
                    "Throughput {throughput} MiB/s exceeds the gp3 maximum of 0.25 MiB/s per \
                     provisioned IOPS ({} MiB/s for {iops} IOPS)",
                    iops / 4
                )));
            }
            VolumePerformance {
                baseline_iops: iops,
                burst_iops: iops,
                baseline_throughput_mibps: throughput,
                burst_throughput_mibps: throughput,
                reported_iops: Some(iops),
                reported_throughput_mibps: Some(throughput),
            }
        }
        VolumeType::Io1 | VolumeType::Io2 => {
            let (max_iops, max_per_gib, max_throughput) = if kind == VolumeType::Io1 {
                (64_000u32, 50u64, 1_000u32)
            } else {
                (256_000u32, 1_000u64, 4_000u32)
            };
            let iops = requested.iops.ok_or_else(|| {
                ControlError::MissingParameter(format!(
                    "The request must contain the parameter Iops for {kind} volumes"
                ))
            })?;
            if !(100..=max_iops).contains(&iops) {
                return Err(out_of_range(
                    "Iops",
                    iops.into(),
                    100,
                    max_iops.into(),
                    kind,
                ));
            }
            if u64::from(iops) > max_per_gib * size_gib {
                return Err(ControlError::InvalidParameterValue(format!(
                    "Iops {iops} exceeds the {kind} maximum of {max_per_gib} IOPS per GiB \
                     ({} for a {size_gib} GiB volume)",
                    max_per_gib * size_gib
                )));
            }
            // Provisioned IOPS volumes deliver 256 KiB per I/O, up to the type's cap.
            let throughput = (iops / 4).clamp(1, max_throughput);
            VolumePerformance {
                baseline_iops: iops,
                burst_iops: iops,
                baseline_throughput_mibps: throughput,
                burst_throughput_mibps: throughput,
                reported_iops: Some(iops),
                reported_throughput_mibps: None,
            }
        }
        VolumeType::St1 => VolumePerformance {
            baseline_iops: 500,
            burst_iops: 500,
            baseline_throughput_mibps: per_tib(40, 500),
            burst_throughput_mibps: per_tib(250, 500),
            reported_iops: None,
            reported_throughput_mibps: None,
        },
        VolumeType::Sc1 => VolumePerformance {
            baseline_iops: 250,
            burst_iops: 250,
            baseline_throughput_mibps: per_tib(12, 250),
            burst_throughput_mibps: per_tib(80, 250),
            reported_iops: None,
            reported_throughput_mibps: None,
        },
        // Magnetic: EC2 documents "about 100 IOPS on average, bursts to hundreds"; modelled
        // as a 100 IOPS baseline bursting to 300 and 90 MiB/s (docs/ebs.md).
        VolumeType::Standard => VolumePerformance {
            baseline_iops: 100,
            burst_iops: 300,
            baseline_throughput_mibps: 90,
            burst_throughput_mibps: 90,
            reported_iops: None,
            reported_throughput_mibps: None,
        },
    };
    Ok(performance)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(
        kind: &str,
        size: u64,
        iops: Option<u32>,
        throughput: Option<u32>,
    ) -> Result<VolumePerformance, ControlError> {
        resolve_performance(
            kind.parse().unwrap(),
            size,
            RequestedPerformance {
                iops,
                throughput_mibps: throughput,
            },
        )
    }

    #[test]
    fn gp2_baseline_is_three_per_gib_within_100_and_16000() {
        assert_eq!(resolve("gp2", 8, None, None).unwrap().baseline_iops, 100);
        assert_eq!(resolve("gp2", 100, None, None).unwrap().baseline_iops, 300);
        assert_eq!(
            resolve("gp2", 1000, None, None).unwrap().baseline_iops,
            3000
        );
        assert_eq!(
            resolve("gp2", 16_384, None, None).unwrap().baseline_iops,
            16_000
        );
        assert_eq!(resolve("gp2", 100, None, None).unwrap().burst_iops, 3000);
        assert_eq!(resolve("gp2", 2000, None, None).unwrap().burst_iops, 6000);
    }

    #[test]
    fn sizes_outside_the_type_range_name_the_limit() {
        let error = resolve("gp2", 16_385, None, None).unwrap_err().to_string();
        assert!(error.contains("between 1 and 16384"), "{error}");
        let error = resolve("st1", 100, None, None).unwrap_err().to_string();
        assert!(error.contains("between 125 and 16384"), "{error}");
        assert!(resolve("standard", 1025, None, None).is_err());
        assert!(resolve("io2", 3, Some(100), None).is_err());
        assert!(resolve("gp3", 0, None, None).is_err());
        assert!(resolve("gp3", 65_536, None, None).is_ok());
    }

    #[test]
    fn gp3_defaults_and_ratios() {
        let default = resolve("gp3", 1, None, None).unwrap();
        assert_eq!(
            (default.baseline_iops, default.baseline_throughput_mibps),
            (3000, 125)
        );
        assert!(resolve("gp3", 10, Some(5_001), None)
            .unwrap_err()
            .to_string()
            .contains("500 IOPS per GiB"));
        assert!(resolve("gp3", 10, Some(5_000), None).is_ok());
        assert!(resolve("gp3", 200, Some(80_001), None).is_err());
        assert!(resolve("gp3", 200, Some(4_000), Some(1_001))
            .unwrap_err()
            .to_string()
            .contains("0.25 MiB/s"));
        assert_eq!(
            resolve("gp3", 200, Some(8_000), Some(2_000))
                .unwrap()
                .baseline_throughput_mibps,
            2_000
        );
        assert!(resolve("gp3", 200, Some(2_999), None).is_err());
    }

    #[test]
    fn provisioned_iops_types_require_iops_within_ratio() {
        assert!(matches!(
            resolve("io1", 100, None, None),
            Err(ControlError::MissingParameter(_))
        ));
        assert!(resolve("io1", 100, Some(5_000), None).is_ok());
        assert!(resolve("io1", 100, Some(5_001), None)
            .unwrap_err()
            .to_string()
            .contains("50 IOPS per GiB"));
        assert!(resolve("io1", 2000, Some(64_001), None).is_err());
        assert!(resolve("io2", 256, Some(256_000), None).is_ok());
        assert!(resolve("io2", 4, Some(99), None).is_err());
    }

    #[test]
    fn parameters_the_type_does_not_take_are_refused() {
        assert!(matches!(
            resolve("gp2", 10, Some(300), None),
            Err(ControlError::InvalidParameterCombination(_))
        ));
        assert!(matches!(
            resolve("io1", 10, Some(300), Some(200)),
            Err(ControlError::InvalidParameterCombination(_))
        ));
        assert!(resolve("st1", 500, Some(300), None).is_err());
    }

    #[test]
    fn hdd_throughput_scales_per_tib() {
        let st1 = resolve("st1", 2048, None, None).unwrap();
        assert_eq!(
            (st1.baseline_throughput_mibps, st1.burst_throughput_mibps),
            (80, 500)
        );
        let sc1 = resolve("sc1", 1024, None, None).unwrap();
        assert_eq!(
            (sc1.baseline_throughput_mibps, sc1.burst_throughput_mibps),
            (12, 80)
        );
        let st1_max = resolve("st1", 16_384, None, None).unwrap();
        assert_eq!(st1_max.baseline_throughput_mibps, 500);
    }

    #[test]
    fn unknown_type_names_are_rejected() {
        assert!("gp4".parse::<VolumeType>().is_err());
        assert_eq!("io2".parse::<VolumeType>().unwrap(), VolumeType::Io2);
    }
}
