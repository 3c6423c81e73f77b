//! The instance record: the instance exactly as DescribeInstances shows it, plus what EC2
//! keeps beside it (reservation, owner, user data, shutdown behaviour, CPU credits) and
//! an opaque slot for the launcher's own state.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::options::{MetadataOptions, Placement};
use super::state::{self, Action, InstanceState, InstanceStateName, Outcome, Reason};
use crate::cpu_credits::{CreditAccount, CreditMode};
use crate::error::Ec2Error;
use crate::filters::{self, Filter};
use crate::ids::{self, ResourceKind};
use crate::images::{BootMode, StateReason, Tag};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EbsInstanceBlockDevice {
    pub volume_id: String,
    /// attaching | attached | detaching | detached
    pub status: String,
    pub attach_time: String,
    pub delete_on_termination: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceBlockDeviceMapping {
    pub device_name: String,
    pub ebs: EbsInstanceBlockDevice,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkInterfaceAttachment {
    pub attachment_id: String,
    pub device_index: u32,
    pub network_card_index: u32,
    pub status: String,
    pub attach_time: String,
    pub delete_on_termination: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceNetworkInterface {
    pub network_interface_id: String,
    pub mac_address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip_address: Option<String>,
    #[serde(default)]
    pub description: String,
    /// in-use | available
    pub status: String,
    pub interface_type: String,
    pub source_dest_check: bool,
    pub attachment: NetworkInterfaceAttachment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HibernationOptions {
    pub configured: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CpuOptions {
    pub core_count: u32,
    pub threads_per_core: u32,
}

/// An instance with DescribeInstances' field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Instance {
    pub instance_id: String,
    pub image_id: String,
    pub instance_type: String,
    pub state: InstanceState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<StateReason>,
    #[serde(default)]
    pub state_transition_reason: String,
    pub launch_time: String,
    pub ami_launch_index: u32,
    pub placement: Placement,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip_address: Option<String>,
    #[serde(default)]
    pub private_dns_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    pub architecture: String,
    pub root_device_name: String,
    pub root_device_type: String,
    pub block_device_mappings: Vec<InstanceBlockDeviceMapping>,
    pub network_interfaces: Vec<InstanceNetworkInterface>,
    pub metadata_options: MetadataOptions,
    pub ena_support: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sriov_net_support: Option<String>,
    pub hibernation_options: HibernationOptions,
    pub cpu_options: CpuOptions,
    pub ebs_optimized: bool,
    pub virtualization_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<BootMode>,
    pub platform_details: String,
    pub usage_operation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
}

/// `InstanceInitiatedShutdownBehavior`: what a guest `poweroff` does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownBehavior {
    #[default]
    Stop,
    Terminate,
}

/// `StartingInstances[]` / `StoppingInstances[]` / `TerminatingInstances[]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct StateChange<'a> {
    pub instance_id: &'a str,
    pub current_state: InstanceState,
    pub previous_state: InstanceState,
}

/// What the state directory keeps per instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InstanceRecord {
    pub instance: Instance,
    pub reservation_id: String,
    pub owner_id: String,
    /// Base64, as given at launch (DescribeInstanceAttribute userData).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default)]
    pub shutdown_behavior: ShutdownBehavior,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credit_specification: Option<CreditMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_credits: Option<CreditAccount>,
    /// The launcher's own state (processes, sockets, volume tokens); opaque here.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub launcher: Value,
}

impl InstanceRecord {
    pub fn state(&self) -> InstanceStateName {
        self.instance.state.name
    }

    fn set_state(&mut self, name: InstanceStateName) -> InstanceState {
        let previous = self.instance.state;
        self.instance.state = name.into();
        previous
    }

    /// A user verb (StartInstances, StopInstances with or without `--hibernate`,
    /// RebootInstances, TerminateInstances) at `unix_seconds`. Returns EC2's state
    /// change and what the launcher has to do.
    pub fn apply(
        &mut self,
        action: Action,
        unix_seconds: u64,
    ) -> Result<(StateChange<'_>, Outcome), Ec2Error> {
        let outcome = state::decide(
            &self.instance.instance_id,
            self.state(),
            action,
            self.instance.hibernation_options.configured,
        )?;
        let previous = self.instance.state;
        if let Outcome::Begin(next) = outcome {
            self.set_state(next);
            let reason = match (action, next) {
                (Action::Hibernate, _) => Some(Reason::UserInitiatedHibernate),
                (_, InstanceStateName::Stopping | InstanceStateName::ShuttingDown) => {
                    Some(Reason::UserInitiatedShutdown)
                }
                _ => None,
            };
            self.set_reason(reason, unix_seconds);
        }
        Ok((self.change(previous), outcome))
    }

    /// The guest powered itself off: stop or terminate as `shutdown_behavior` says.
    pub fn guest_shutdown(&mut self, unix_seconds: u64) -> Result<StateChange<'_>, Ec2Error> {
        let previous = self.instance.state;
        if previous.name != InstanceStateName::Running {
            return Ok(self.change(previous));
        }
        self.set_state(match self.shutdown_behavior {
            ShutdownBehavior::Stop => InstanceStateName::Stopping,
            ShutdownBehavior::Terminate => InstanceStateName::ShuttingDown,
        });
        self.set_reason(Some(Reason::InstanceInitiatedShutdown), unix_seconds);
        Ok(self.change(previous))
    }

    /// The launch failed: the instance goes to shutting-down with Server.InternalError.
    pub fn launch_failed(&mut self, unix_seconds: u64) -> StateChange<'_> {
        let previous = self.set_state(InstanceStateName::ShuttingDown);
        self.set_reason(Some(Reason::ServerInternalError), unix_seconds);
        self.change(previous)
    }

    /// The launcher finished the intermediate state (VMM up, or gone). Running clears
    /// the reason, as EC2 does.
    pub fn complete(&mut self) -> Option<StateChange<'_>> {
        let next = state::complete(self.state())?;
        let previous = self.set_state(next);
        if next == InstanceStateName::Running {
            self.instance.state_reason = None;
            self.instance.state_transition_reason.clear();
        }
        Some(self.change(previous))
    }

    fn set_reason(&mut self, reason: Option<Reason>, unix_seconds: u64) {
        self.instance.state_reason = reason.map(|reason| {
            let (code, message) = reason.state_reason();
            StateReason {
                code: code.into(),
                message: message.into(),
            }
        });
        self.instance.state_transition_reason = reason
            .map(|r| r.transition_reason(unix_seconds))
            .unwrap_or_default();
    }

    fn change(&self, previous: InstanceState) -> StateChange<'_> {
        StateChange {
            instance_id: &self.instance.instance_id,
            current_state: self.instance.state,
            previous_state: previous,
        }
    }
}

/// DescribeInstances' parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct DescribeInstancesRequest {
    #[serde(default)]
    pub instance_ids: Vec<String>,
    #[serde(default)]
    pub filters: Vec<Filter>,
}

const INSTANCE_FILTERS: &[&str] = &[
    "instance-id",
    "instance-state-name",
    "instance-state-code",
    "image-id",
    "instance-type",
    "availability-zone",
    "reservation-id",
    "owner-id",
    "private-ip-address",
    "key-name",
    "architecture",
    "root-device-name",
    "block-device-mapping.volume-id",
    "network-interface.network-interface-id",
    "client-token",
];

fn filter_values(record: &InstanceRecord, name: &str) -> Vec<String> {
    let instance = &record.instance;
    if let Some(values) = filters::tag_values(&instance.tags, name) {
        return values;
    }
    let one = |value: &str| vec![value.to_string()];
    match name {
        "instance-id" => one(&instance.instance_id),
        "instance-state-name" => one(instance.state.name.as_str()),
        "instance-state-code" => one(&instance.state.code.to_string()),
        "image-id" => one(&instance.image_id),
        "instance-type" => one(&instance.instance_type),
        "availability-zone" => one(&instance.placement.availability_zone),
        "reservation-id" => one(&record.reservation_id),
        "owner-id" => one(&record.owner_id),
        "private-ip-address" => instance.private_ip_address.iter().cloned().collect(),
        "key-name" => instance.key_name.iter().cloned().collect(),
        "client-token" => instance.client_token.iter().cloned().collect(),
        "architecture" => one(&instance.architecture),
        "root-device-name" => one(&instance.root_device_name),
        "block-device-mapping.volume-id" => instance
            .block_device_mappings
            .iter()
            .map(|mapping| mapping.ebs.volume_id.clone())
            .collect(),
        "network-interface.network-interface-id" => instance
            .network_interfaces
            .iter()
            .map(|eni| eni.network_interface_id.clone())
            .collect(),
        _ => Vec::new(),
    }
}

/// DescribeInstances as `caller`: `{"Reservations": [{ReservationId, OwnerId, Groups,
/// Instances}]}`, reservations in launch order, instances by launch index. Naming an
/// instance the caller does not own is `InvalidInstanceID.NotFound`, as in EC2.
pub fn describe_instances(
    records: Vec<InstanceRecord>,
    request: &DescribeInstancesRequest,
    caller: &str,
) -> Result<Value, Ec2Error> {
    for instance_id in &request.instance_ids {
        ids::validate(ResourceKind::Instance, instance_id)?;
    }
    let mut owned: Vec<InstanceRecord> = records
        .into_iter()
        .filter(|record| record.owner_id == caller)
        .collect();
    let missing: Vec<&str> = request
        .instance_ids
        .iter()
        .filter(|id| {
            !owned
                .iter()
                .any(|record| &record.instance.instance_id == *id)
        })
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(Ec2Error::instances_not_found(&missing));
    }
    if !request.instance_ids.is_empty() {
        owned.retain(|record| request.instance_ids.contains(&record.instance.instance_id));
    }
    let known = |name: &str| INSTANCE_FILTERS.contains(&name) || filters::is_tag_filter(name);
    let mut kept = filters::apply(owned, &request.filters, known, filter_values)?;
    kept.sort_by(|a, b| {
        (
            &a.instance.launch_time,
            &a.reservation_id,
            a.instance.ami_launch_index,
        )
            .cmp(&(
                &b.instance.launch_time,
                &b.reservation_id,
                b.instance.ami_launch_index,
            ))
    });
    let mut reservations: Vec<Value> = Vec::new();
    let mut current: Option<(String, String, Vec<&Instance>)> = None;
    let flush = |group: (String, String, Vec<&Instance>), out: &mut Vec<Value>| {
        out.push(json!({"ReservationId": group.0, "OwnerId": group.1, "Groups": [], "Instances": group.2}));
    };
    for record in &kept {
        match &mut current {
            Some((reservation, _, instances)) if *reservation == record.reservation_id => {
                instances.push(&record.instance)
            }
            _ => {
                if let Some(group) = current.take() {
                    flush(group, &mut reservations);
                }
                current = Some((
                    record.reservation_id.clone(),
                    record.owner_id.clone(),
                    vec![&record.instance],
                ));
            }
        }
    }
    if let Some(group) = current {
        flush(group, &mut reservations);
    }
    Ok(json!({ "Reservations": reservations }))
}
