//! EC2 `Filters` for DescribeImages and DescribeInstances.
//!
//! The `Filter` shape and the `*`/`?` matcher are ebsd's (`control::filters`), so every
//! Describe* call of the front door filters the same way. A resource passes when every
//! filter has at least one value matching one of the resource's values for that name;
//! an unknown filter name is refused, as EC2 does.

pub use ebs_blockdev::control::filters::{wildcard_match, Filter};

use crate::error::Ec2Error;

/// Applies `filters` to `items`. `known(name)` says whether a filter name exists for this
/// resource (checked first, so an unknown name is refused even when there is nothing to
/// filter); `values(item, name)` gives an item's values for a known name.
pub fn apply<T>(
    items: Vec<T>,
    filters: &[Filter],
    known: impl Fn(&str) -> bool,
    values: impl Fn(&T, &str) -> Vec<String>,
) -> Result<Vec<T>, Ec2Error> {
    if let Some(filter) = filters.iter().find(|filter| !known(&filter.name)) {
        return Err(Ec2Error::invalid_value(format!(
            "The filter '{}' is invalid",
            filter.name
        )));
    }
    Ok(items
        .into_iter()
        .filter(|item| {
            filters.iter().all(|filter| {
                let have = values(item, &filter.name);
                filter
                    .values
                    .iter()
                    .any(|pattern| have.iter().any(|value| wildcard_match(pattern, value)))
            })
        })
        .collect())
}

/// Whether `name` is a tag filter (`tag:KEY` or `tag-key`).
pub fn is_tag_filter(name: &str) -> bool {
    name == "tag-key" || name.starts_with("tag:")
}

/// Values of `tag:KEY` and `tag-key` filters for a resource's tags; `None` for other names.
pub fn tag_values(tags: &[crate::images::Tag], name: &str) -> Option<Vec<String>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::images::Tag;

    fn filter(name: &str, values: &[&str]) -> Filter {
        Filter {
            name: name.into(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn all_filters_must_match_any_value() {
        let items = vec![("a", "red"), ("b", "blue"), ("c", "red")];
        let known = |name: &str| name == "id" || name == "colour";
        let values = |item: &(&str, &str), name: &str| match name {
            "id" => vec![item.0.to_string()],
            _ => vec![item.1.to_string()],
        };
        let kept = apply(items.clone(), &[filter("colour", &["r*"])], known, values).unwrap();
        assert_eq!(kept, vec![("a", "red"), ("c", "red")]);
        let kept = apply(
            items.clone(),
            &[filter("colour", &["red", "blue"]), filter("id", &["?"])],
            known,
            values,
        )
        .unwrap();
        assert_eq!(kept.len(), 3);
        let kept = apply(
            items.clone(),
            &[filter("colour", &["red"]), filter("id", &["b"])],
            known,
            values,
        )
        .unwrap();
        assert!(kept.is_empty());
        let error = apply(Vec::new(), &[filter("shape", &["x"])], known, values).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidParameterValue);
        assert_eq!(error.message, "The filter 'shape' is invalid");
    }

    #[test]
    fn tag_filters() {
        let tags = vec![
            Tag {
                key: "Name".into(),
                value: "web".into(),
            },
            Tag {
                key: "env".into(),
                value: "prod".into(),
            },
        ];
        assert_eq!(tag_values(&tags, "tag:Name"), Some(vec!["web".to_string()]));
        assert_eq!(tag_values(&tags, "tag:missing"), Some(vec![]));
        assert_eq!(
            tag_values(&tags, "tag-key"),
            Some(vec!["Name".to_string(), "env".to_string()])
        );
        assert_eq!(tag_values(&tags, "name"), None);
        assert!(is_tag_filter("tag:Name") && is_tag_filter("tag-key") && !is_tag_filter("tags"));
    }
}
