//! EC2 tags on volumes and snapshots: CreateTags / DeleteTags / DescribeTags shapes,
//! TagSpecifications on create calls, and EC2's limits (50 tags per resource, keys of
//! 1-128 characters, values of up to 256, the `aws:` prefix reserved).

use serde::{Deserialize, Serialize};

use super::filters::Filter;
use super::ControlError;

pub const MAX_TAGS_PER_RESOURCE: usize = 50;
pub const MAX_KEY_CHARS: usize = 128;
pub const MAX_VALUE_CHARS: usize = 256;
const RESERVED_PREFIX: &str = "aws:";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Tag {
    pub key: String,
    /// EC2 stores an omitted value as the empty string.
    #[serde(default)]
    pub value: String,
}

/// A tag to delete: without a value, whatever its value; with one, only if it matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TagToDelete {
    pub key: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct TagSpecification {
    pub resource_type: String,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct CreateTagsRequest {
    pub resources: Vec<String>,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DeleteTagsRequest {
    pub resources: Vec<String>,
    /// Omitted: every tag of the resources.
    pub tags: Option<Vec<TagToDelete>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeTagsRequest {
    #[serde(default)]
    pub filters: Vec<Filter>,
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
}

/// One entry of DescribeTags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagDescription {
    pub key: String,
    pub resource_id: String,
    pub resource_type: String,
    pub value: String,
}

fn invalid(message: String) -> ControlError {
    ControlError::InvalidParameterValue(message)
}

fn check_key(key: &str) -> Result<(), ControlError> {
    let length = key.chars().count();
    if length == 0 || length > MAX_KEY_CHARS {
        return Err(invalid(format!(
            "Tag key '{key}' must be 1 to {MAX_KEY_CHARS} characters (it has {length})"
        )));
    }
    if key
        .get(..RESERVED_PREFIX.len())
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case(RESERVED_PREFIX))
    {
        return Err(invalid(format!(
            "Value ( {key} ) for parameter key is invalid. Tag keys starting with 'aws:' \
             are reserved for internal use"
        )));
    }
    Ok(())
}

pub fn validate_tag(tag: &Tag) -> Result<(), ControlError> {
    check_key(&tag.key)?;
    let length = tag.value.chars().count();
    if length > MAX_VALUE_CHARS {
        return Err(invalid(format!(
            "The value of tag '{}' must be at most {MAX_VALUE_CHARS} characters (it has {length})",
            tag.key
        )));
    }
    Ok(())
}

/// `existing` with `new` added (a key already there takes the new value), within the
/// limits.
pub fn with_tags(
    existing: &[Tag],
    new: &[Tag],
    resource_id: &str,
) -> Result<Vec<Tag>, ControlError> {
    let mut merged = existing.to_vec();
    for tag in new {
        validate_tag(tag)?;
        match merged.iter_mut().find(|old| old.key == tag.key) {
            Some(old) => old.value = tag.value.clone(),
            None => merged.push(tag.clone()),
        }
    }
    if merged.len() > MAX_TAGS_PER_RESOURCE {
        return Err(ControlError::TagLimitExceeded(format!(
            "The maximum number of tags ({MAX_TAGS_PER_RESOURCE}) for resource {resource_id} \
             has been reached ({} requested)",
            merged.len()
        )));
    }
    Ok(merged)
}

/// `existing` without the tags DeleteTags names (all when `to_delete` is None).
pub fn without_tags(
    existing: &[Tag],
    to_delete: Option<&[TagToDelete]>,
) -> Result<Vec<Tag>, ControlError> {
    let Some(to_delete) = to_delete else {
        return Ok(Vec::new());
    };
    for tag in to_delete {
        check_key(&tag.key)?;
    }
    Ok(existing
        .iter()
        .filter(|tag| {
            !to_delete.iter().any(|gone| {
                gone.key == tag.key && gone.value.as_ref().is_none_or(|value| *value == tag.value)
            })
        })
        .cloned()
        .collect())
}

/// The tags TagSpecifications give a new resource of `resource_type`.
pub fn tags_from_specifications(
    specifications: &[TagSpecification],
    resource_type: &str,
) -> Result<Vec<Tag>, ControlError> {
    let mut tags = Vec::new();
    for specification in specifications {
        if specification.resource_type != resource_type {
            return Err(invalid(format!(
                "'{}' is not a valid taggable resource type for this operation (expected '{resource_type}')",
                specification.resource_type
            )));
        }
        tags = with_tags(&tags, &specification.tags, "the new resource")?;
    }
    Ok(tags)
}

/// Values of a resource's tags for the Describe* filters `tag:<key>` and `tag-key`;
/// None for other names.
pub fn tag_filter_values(tags: &[Tag], name: &str) -> Option<Vec<String>> {
    if name == "tag-key" {
        return Some(tags.iter().map(|tag| tag.key.clone()).collect());
    }
    let key = name.strip_prefix("tag:")?;
    Some(
        tags.iter()
            .filter(|tag| tag.key == key)
            .map(|tag| tag.value.clone())
            .collect(),
    )
}

/// Values of a DescribeTags entry for its filters.
pub fn description_values(entry: &TagDescription, name: &str) -> Option<Vec<String>> {
    let one = |value: &str| Some(vec![value.to_string()]);
    match name {
        "key" => one(&entry.key),
        "value" => one(&entry.value),
        "resource-id" => one(&entry.resource_id),
        "resource-type" => one(&entry.resource_type),
        _ => {
            let key = name.strip_prefix("tag:")?;
            Some(if entry.key == key {
                vec![entry.value.clone()]
            } else {
                Vec::new()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(key: &str, value: &str) -> Tag {
        Tag {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn ec2_limits_are_enforced() {
        let ok = with_tags(&[], &[tag(&"k".repeat(128), &"v".repeat(256))], "vol-1").unwrap();
        assert_eq!(ok.len(), 1);
        for bad in [
            tag(&"k".repeat(129), ""),
            tag("", "v"),
            tag("k", &"v".repeat(257)),
            tag("aws:owner", "me"),
            tag("AWS:owner", "me"),
        ] {
            let error = with_tags(&[], std::slice::from_ref(&bad), "vol-1").unwrap_err();
            assert_eq!(error.code(), "InvalidParameterValue", "{bad:?}");
        }
        let fifty: Vec<Tag> = (0..50).map(|i| tag(&format!("k{i}"), "")).collect();
        let full = with_tags(&[], &fifty, "vol-1").unwrap();
        // Overwriting an existing key is fine at the limit; a 51st key is not.
        assert_eq!(
            with_tags(&full, &[tag("k3", "new")], "vol-1").unwrap()[3].value,
            "new"
        );
        assert_eq!(
            with_tags(&full, &[tag("k50", "")], "vol-1")
                .unwrap_err()
                .code(),
            "TagLimitExceeded"
        );
    }

    #[test]
    fn delete_matches_key_and_optional_value() {
        let tags = vec![tag("a", "1"), tag("b", "2"), tag("c", "")];
        let gone = |key: &str, value: Option<&str>| TagToDelete {
            key: key.into(),
            value: value.map(str::to_string),
        };
        let kept = without_tags(&tags, Some(&[gone("a", None), gone("b", Some("x"))])).unwrap();
        assert_eq!(kept, vec![tag("b", "2"), tag("c", "")]);
        let kept = without_tags(&tags, Some(&[gone("c", Some(""))])).unwrap();
        assert_eq!(kept.len(), 2);
        assert!(without_tags(&tags, None).unwrap().is_empty());
        assert!(without_tags(&tags, Some(&[gone("aws:x", None)])).is_err());
    }

    #[test]
    fn specifications_must_name_the_resource_type() {
        let specification = TagSpecification {
            resource_type: "snapshot".into(),
            tags: vec![tag("a", "1")],
        };
        assert!(tags_from_specifications(std::slice::from_ref(&specification), "volume").is_err());
        assert_eq!(
            tags_from_specifications(&[specification], "snapshot").unwrap(),
            vec![tag("a", "1")]
        );
    }
}
