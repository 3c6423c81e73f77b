//! CreateTags, DeleteTags and DescribeTags over volumes (`vol-`) and snapshots (`snap-`).
//! A request naming several resources changes all of them or none.

use serde_json::{json, Value};

use super::{Service, ServiceState};
use crate::control::filters::filter_resources;
use crate::control::tags::{
    description_values, with_tags, without_tags, CreateTagsRequest, DeleteTagsRequest,
    DescribeTagsRequest, Tag, TagDescription,
};
use crate::control::ControlError;

fn tags_of<'a>(state: &'a ServiceState, resource_id: &str) -> Result<&'a [Tag], ControlError> {
    if resource_id.starts_with("vol-") {
        Ok(&state.table.get(resource_id)?.tags)
    } else if resource_id.starts_with("snap-") {
        Ok(&state.snapshots.get(resource_id)?.tags)
    } else {
        Err(ControlError::InvalidId(resource_id.to_string()))
    }
}

fn set_tags(
    state: &mut ServiceState,
    resource_id: &str,
    tags: Vec<Tag>,
) -> Result<(), ControlError> {
    if resource_id.starts_with("vol-") {
        *state.table.tags_mut(resource_id)? = tags;
    } else {
        state.snapshots.get_mut(resource_id)?.tags = tags;
    }
    Ok(())
}

impl Service {
    /// Applies `change` to the tags of every resource, or fails without changing any.
    fn change_tags(
        &self,
        resources: &[String],
        change: impl Fn(&[Tag], &str) -> Result<Vec<Tag>, ControlError>,
    ) -> Result<Value, ControlError> {
        if resources.is_empty() {
            return Err(ControlError::MissingParameter(
                "The request must contain the parameter ResourceId".into(),
            ));
        }
        let mut state = self.lock();
        let mut updated = Vec::new();
        for resource_id in resources {
            updated.push((
                resource_id,
                change(tags_of(&state, resource_id)?, resource_id)?,
            ));
        }
        for (resource_id, tags) in updated {
            set_tags(&mut state, resource_id, tags)?;
        }
        self.persist(&state)?;
        Ok(json!({"Return": true}))
    }

    pub fn create_tags(&self, request: &CreateTagsRequest) -> Result<Value, ControlError> {
        if request.tags.is_empty() {
            return Err(ControlError::MissingParameter(
                "The request must contain the parameter Tag".into(),
            ));
        }
        self.change_tags(&request.resources, |existing, resource_id| {
            with_tags(existing, &request.tags, resource_id)
        })
    }

    pub fn delete_tags(&self, request: &DeleteTagsRequest) -> Result<Value, ControlError> {
        self.change_tags(&request.resources, |existing, _| {
            without_tags(existing, request.tags.as_deref())
        })
    }

    pub fn describe_tags(&self, request: &DescribeTagsRequest) -> Result<Value, ControlError> {
        let state = self.lock();
        let describe = |resource_id: &str, resource_type: &str, tags: &[Tag]| {
            tags.iter()
                .map(|tag| TagDescription {
                    key: tag.key.clone(),
                    resource_id: resource_id.to_string(),
                    resource_type: resource_type.to_string(),
                    value: tag.value.clone(),
                })
                .collect::<Vec<_>>()
        };
        let mut entries = Vec::new();
        for volume in state.table.all() {
            entries.extend(describe(&volume.volume_id, "volume", &volume.tags));
        }
        for snapshot in state.snapshots.all() {
            entries.extend(describe(&snapshot.snapshot_id, "snapshot", &snapshot.tags));
        }
        let entries = filter_resources(entries, &request.filters, description_values)?;
        Ok(json!({ "Tags": entries }))
    }
}
