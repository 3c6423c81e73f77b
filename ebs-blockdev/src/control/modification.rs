//! Volume modifications as EC2 runs them: ModifyVolume starts a modification that goes
//! `modifying` -> `optimizing` -> `completed` (or `failed`), reported by
//! DescribeVolumesModifications with a Progress percentage, and a volume may be modified
//! again only when its last modification is over and at least six hours after that one
//! started (EC2's cooldown).
//!
//! Phases are a function of wall-clock time since the start, so they continue across
//! restarts of ebsd; the service applies each phase's effect (new size at `optimizing`,
//! new performance at `completed`) when it sees the phase change.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::filters::Filter;
use super::ids::format_rfc3339;
use super::volume_type::VolumeType;
use super::ControlError;

/// How long a modification stays `modifying` (EC2: size changes take "a few seconds").
pub const MODIFYING_SECONDS: f64 = 10.0;
/// `optimizing` moves at this many GiB of target size per second, within the bounds
/// below (EC2: "a few minutes to a few hours").
const OPTIMIZING_GIB_PER_SECOND: f64 = 1.0;
const OPTIMIZING_SECONDS_MIN: f64 = 60.0;
const OPTIMIZING_SECONDS_MAX: f64 = 6.0 * 3600.0;
/// EC2's cooldown between the starts of two modifications of one volume.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModificationState {
    Modifying,
    Optimizing,
    Completed,
    Failed,
}

impl ModificationState {
    pub fn as_str(self) -> &'static str {
        match self {
            ModificationState::Modifying => "modifying",
            ModificationState::Optimizing => "optimizing",
            ModificationState::Completed => "completed",
            ModificationState::Failed => "failed",
        }
    }

    pub fn is_over(self) -> bool {
        matches!(
            self,
            ModificationState::Completed | ModificationState::Failed
        )
    }
}

/// EC2's VolumeModification, as ModifyVolume and DescribeVolumesModifications show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VolumeModification {
    pub volume_id: String,
    pub modification_state: ModificationState,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status_message: Option<String>,
    pub target_size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target_iops: Option<u32>,
    pub target_volume_type: VolumeType,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target_throughput: Option<u32>,
    pub target_multi_attach_enabled: bool,
    pub original_size: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub original_iops: Option<u32>,
    pub original_volume_type: VolumeType,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub original_throughput: Option<u32>,
    pub original_multi_attach_enabled: bool,
    pub progress: u64,
    pub start_time: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub end_time: Option<String>,
}

/// A volume's latest modification with its timing, kept in the volume's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ModificationRecord {
    pub modification: VolumeModification,
    /// Wall-clock start, seconds since the Unix epoch.
    pub started_at: f64,
    pub optimizing_seconds: f64,
    /// The last phase whose effect the service applied (phases never go back, even if
    /// the clock does).
    pub applied: ModificationState,
}

fn format_time(seconds: f64) -> String {
    let seconds = seconds.max(0.0);
    format_rfc3339(seconds as u64, ((seconds.fract()) * 1000.0) as u32)
}

impl ModificationRecord {
    pub fn new(modification: VolumeModification, started_at: Duration) -> Self {
        let optimizing_seconds = (modification.target_size as f64 / OPTIMIZING_GIB_PER_SECOND)
            .clamp(OPTIMIZING_SECONDS_MIN, OPTIMIZING_SECONDS_MAX);
        let mut modification = modification;
        modification.start_time = format_time(started_at.as_secs_f64());
        modification.modification_state = ModificationState::Modifying;
        ModificationRecord {
            modification,
            started_at: started_at.as_secs_f64(),
            optimizing_seconds,
            applied: ModificationState::Modifying,
        }
    }

    /// The phase and progress (0-100) at `now`.
    pub fn phase(&self, now: Duration) -> (ModificationState, u64) {
        if self.applied.is_over() {
            return (self.applied, 100);
        }
        let elapsed = now.as_secs_f64() - self.started_at;
        let (phase, progress) = if elapsed < MODIFYING_SECONDS {
            (ModificationState::Modifying, 0)
        } else if elapsed < MODIFYING_SECONDS + self.optimizing_seconds {
            let done = (elapsed - MODIFYING_SECONDS) / self.optimizing_seconds;
            (ModificationState::Optimizing, (done * 100.0) as u64)
        } else {
            (ModificationState::Completed, 100)
        };
        if phase < self.applied {
            return (self.applied, progress);
        }
        (phase, progress.min(100))
    }

    /// What DescribeVolumesModifications shows at `now`.
    pub fn view(&self, now: Duration) -> VolumeModification {
        let (state, progress) = self.phase(now);
        let mut view = self.modification.clone();
        view.modification_state = state;
        view.progress = progress;
        if state == ModificationState::Completed {
            view.end_time = Some(format_time(
                self.started_at + MODIFYING_SECONDS + self.optimizing_seconds,
            ));
        }
        view
    }

    /// Refuses a new modification while this one runs or within the cooldown after its
    /// start, with EC2's error codes.
    pub fn check_new_modification(
        &self,
        now: Duration,
        cooldown: Duration,
    ) -> Result<(), ControlError> {
        let (state, _) = self.phase(now);
        if !state.is_over() {
            return Err(ControlError::IncorrectModificationState(format!(
                "Volume {} cannot be modified in modification state {}",
                self.modification.volume_id,
                state.as_str().to_uppercase()
            )));
        }
        if state == ModificationState::Completed
            && now.as_secs_f64() < self.started_at + cooldown.as_secs_f64()
        {
            return Err(ControlError::VolumeModificationRateExceeded(format!(
                "You've reached the maximum modification rate per volume limit. Wait at \
                 least {} hours between modifications per EBS volume ({} was last modified \
                 at {}).",
                cooldown.as_secs() / 3600,
                self.modification.volume_id,
                self.modification.start_time
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeVolumesModificationsRequest {
    #[serde(default)]
    pub volume_ids: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
}

/// Values of a modification for DescribeVolumesModifications filters.
pub fn modification_values(modification: &VolumeModification, name: &str) -> Option<Vec<String>> {
    let optional = |value: Option<u32>| Some(value.map(|v| v.to_string()).into_iter().collect());
    let one = |value: String| Some(vec![value]);
    match name {
        "volume-id" => one(modification.volume_id.clone()),
        "modification-state" => one(modification.modification_state.as_str().to_string()),
        "target-size" => one(modification.target_size.to_string()),
        "target-iops" => optional(modification.target_iops),
        "target-volume-type" => one(modification.target_volume_type.to_string()),
        "target-throughput" => optional(modification.target_throughput),
        "target-multi-attach-enabled" => one(modification.target_multi_attach_enabled.to_string()),
        "original-size" => one(modification.original_size.to_string()),
        "original-iops" => optional(modification.original_iops),
        "original-volume-type" => one(modification.original_volume_type.to_string()),
        "original-throughput" => optional(modification.original_throughput),
        "original-multi-attach-enabled" => {
            one(modification.original_multi_attach_enabled.to_string())
        }
        "start-time" => one(modification.start_time.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(target_size: u64) -> ModificationRecord {
        ModificationRecord::new(
            VolumeModification {
                volume_id: "vol-0123456789abcdef0".into(),
                modification_state: ModificationState::Modifying,
                status_message: None,
                target_size,
                target_iops: Some(5000),
                target_volume_type: VolumeType::Gp3,
                target_throughput: Some(250),
                target_multi_attach_enabled: false,
                original_size: 8,
                original_iops: Some(3000),
                original_volume_type: VolumeType::Gp3,
                original_throughput: Some(125),
                original_multi_attach_enabled: false,
                progress: 0,
                start_time: String::new(),
                end_time: None,
            },
            Duration::from_secs(1_000_000),
        )
    }

    fn at(seconds: f64) -> Duration {
        Duration::from_secs_f64(1_000_000.0 + seconds)
    }

    #[test]
    fn phases_follow_the_clock_with_progress() {
        let running = record(120);
        assert_eq!(running.optimizing_seconds, 120.0);
        assert_eq!(running.phase(at(0.0)), (ModificationState::Modifying, 0));
        assert_eq!(running.phase(at(9.9)), (ModificationState::Modifying, 0));
        assert_eq!(running.phase(at(10.0)), (ModificationState::Optimizing, 0));
        assert_eq!(running.phase(at(70.0)), (ModificationState::Optimizing, 50));
        assert_eq!(
            running.phase(at(130.0)),
            (ModificationState::Completed, 100)
        );
        let view = running.view(at(200.0));
        assert_eq!(view.modification_state, ModificationState::Completed);
        assert!(view.end_time.is_some());
        assert_eq!(running.view(at(5.0)).end_time, None);
        // Small volumes still optimize for a minute; huge ones at most six hours.
        assert_eq!(record(8).optimizing_seconds, 60.0);
        assert_eq!(record(65_536).optimizing_seconds, 6.0 * 3600.0);
    }

    #[test]
    fn phases_never_go_back_when_the_clock_does() {
        let mut record = record(120);
        record.applied = ModificationState::Completed;
        assert_eq!(record.phase(at(1.0)), (ModificationState::Completed, 100));
        record.applied = ModificationState::Optimizing;
        assert_eq!(record.phase(at(1.0)).0, ModificationState::Optimizing);
    }

    #[test]
    fn new_modifications_wait_for_the_end_and_the_cooldown() {
        let record = record(120);
        let cooldown = DEFAULT_COOLDOWN;
        let running = record
            .check_new_modification(at(20.0), cooldown)
            .unwrap_err();
        assert_eq!(running.code(), "IncorrectModificationState");
        assert!(running.to_string().contains("OPTIMIZING"), "{running}");
        let early = record
            .check_new_modification(at(3.0 * 3600.0), cooldown)
            .unwrap_err();
        assert_eq!(early.code(), "VolumeModificationRateExceeded");
        assert!(early.to_string().contains("6 hours"), "{early}");
        record
            .check_new_modification(at(6.0 * 3600.0), cooldown)
            .unwrap();
        record
            .check_new_modification(at(200.0), Duration::from_secs(100))
            .unwrap();
    }
}
