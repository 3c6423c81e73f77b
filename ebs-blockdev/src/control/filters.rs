//! EC2 `Filters` for Describe* calls: `[{"Name": "status", "Values": ["available"]}]`.
//! A resource matches when every filter has a value matching one of the resource's
//! values for that name; `*` and `?` are wildcards, as in EC2.

use serde::{Deserialize, Serialize};

use super::snapshot::Snapshot;
use super::{ControlError, Volume};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Filter {
    pub name: String,
    #[serde(default)]
    pub values: Vec<String>,
}

/// Glob match with `*` (any run) and `?` (any one character).
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let (mut star, mut star_text) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some(p);
            star_text = t;
            p += 1;
        } else if let Some(star_at) = star {
            p = star_at + 1;
            star_text += 1;
            t = star_text;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

fn volume_values(volume: &Volume, name: &str) -> Option<Vec<String>> {
    let one = |value: String| Some(vec![value]);
    match name {
        "volume-id" => one(volume.volume_id.clone()),
        "status" => one(serde_json::to_value(volume.state)
            .ok()?
            .as_str()?
            .to_string()),
        "availability-zone" => one(volume.availability_zone.clone()),
        "volume-type" => one(volume.volume_type.to_string()),
        "size" => one(volume.size.to_string()),
        "snapshot-id" => one(volume.snapshot_id.clone()),
        "encrypted" => one(volume.encrypted.to_string()),
        "multi-attach-enabled" => one(volume.multi_attach_enabled.to_string()),
        "create-time" => one(volume.create_time.clone()),
        "attachment.instance-id" => Some(
            volume
                .attachments
                .iter()
                .map(|a| a.instance_id.clone())
                .collect(),
        ),
        "attachment.device" => Some(
            volume
                .attachments
                .iter()
                .map(|a| a.device.clone())
                .collect(),
        ),
        "attachment.status" => Some(volume.attachments.iter().map(|a| a.state.clone()).collect()),
        _ => super::tags::tag_filter_values(&volume.tags, name),
    }
}

fn snapshot_values(snapshot: &Snapshot, name: &str) -> Option<Vec<String>> {
    let one = |value: String| Some(vec![value]);
    match name {
        "snapshot-id" => one(snapshot.snapshot_id.clone()),
        "volume-id" => one(snapshot.volume_id.clone()),
        "status" => one(serde_json::to_value(snapshot.state)
            .ok()?
            .as_str()?
            .to_string()),
        "encrypted" => one(snapshot.encrypted.to_string()),
        "description" => one(snapshot.description.clone()),
        "volume-size" => one(snapshot.volume_size.to_string()),
        "owner-id" => one(snapshot.owner_id.clone()),
        "start-time" => one(snapshot.start_time.clone()),
        _ => super::tags::tag_filter_values(&snapshot.tags, name),
    }
}

fn matches_all<T>(
    resource: &T,
    filters: &[Filter],
    values_of: fn(&T, &str) -> Option<Vec<String>>,
) -> Result<bool, ControlError> {
    for filter in filters {
        let values = values_of(resource, &filter.name).ok_or_else(|| {
            ControlError::InvalidParameterValue(format!("The filter '{}' is invalid", filter.name))
        })?;
        let hit = filter
            .values
            .iter()
            .any(|pattern| values.iter().any(|value| wildcard_match(pattern, value)));
        if !hit {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Keeps the resources that match every filter; `values_of` gives a resource's values
/// for a filter name (None: the name is unknown, an InvalidParameterValue).
pub fn filter_resources<T>(
    resources: Vec<T>,
    filters: &[Filter],
    values_of: fn(&T, &str) -> Option<Vec<String>>,
) -> Result<Vec<T>, ControlError> {
    let mut kept = Vec::new();
    for resource in resources {
        if matches_all(&resource, filters, values_of)? {
            kept.push(resource);
        }
    }
    Ok(kept)
}

pub fn filter_volumes(
    volumes: Vec<Volume>,
    filters: &[Filter],
) -> Result<Vec<Volume>, ControlError> {
    let mut kept = Vec::new();
    for volume in volumes {
        if matches_all(&volume, filters, volume_values)? {
            kept.push(volume);
        }
    }
    Ok(kept)
}

pub fn filter_snapshots(
    snapshots: Vec<Snapshot>,
    filters: &[Filter],
) -> Result<Vec<Snapshot>, ControlError> {
    let mut kept = Vec::new();
    for snapshot in snapshots {
        if matches_all(&snapshot, filters, snapshot_values)? {
            kept.push(snapshot);
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_follow_ec2() {
        assert!(wildcard_match("vol-*", "vol-0123"));
        assert!(wildcard_match("gp?", "gp3"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("gp?", "gp"));
        assert!(!wildcard_match("io1", "io2"));
        assert!(wildcard_match("a*b*c", "axxbyyc"));
        assert!(!wildcard_match("a*b*c", "axxbyy"));
    }
}
