//! Instances as data and rules: the record DescribeInstances shows, the state machine of
//! the user verbs, the state directory, and RunInstances' option parsing. Nothing here
//! starts or stops a process: the launcher drives these records.

mod options;
mod record;
mod state;
mod store;

pub use options::{
    check_hibernation, parse_block_device_mappings, parse_metadata_options,
    parse_network_interfaces, parse_placement, resolve_launch_mappings,
    validate_network_interfaces, MetadataOptions, MetadataOptionsRequest, NetworkInterfaceRequest,
    Placement, PlacementRequest, MAX_NETWORK_INTERFACES,
};
pub use record::{
    describe_instances, CpuOptions, DescribeInstancesRequest, EbsInstanceBlockDevice,
    HibernationOptions, Instance, InstanceBlockDeviceMapping, InstanceNetworkInterface,
    InstanceRecord, NetworkInterfaceAttachment, ShutdownBehavior, StateChange,
};
pub use state::{complete, decide, Action, InstanceState, InstanceStateName, Outcome, Reason};
pub use store::InstanceStore;

#[cfg(test)]
mod tests;
