//! RunInstances' structured options as the `aws` CLI takes them (`--metadata-options`,
//! `--placement`, `--network-interfaces`, `--block-device-mappings`), with EC2's
//! defaults and validation errors.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::error::{Ec2Error, ErrorCode};
use crate::ids::{self, ResourceKind};
use crate::images::{same_device, BlockDeviceMapping, Image, SnapshotOps};
use crate::shorthand::{from_json, lenient, parse_argument, parse_list_arguments};

/// `--metadata-options` as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct MetadataOptionsRequest {
    pub http_tokens: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u32")]
    pub http_put_response_hop_limit: Option<u32>,
    pub http_endpoint: Option<String>,
    pub http_protocol_ipv6: Option<String>,
    pub instance_metadata_tags: Option<String>,
}

/// DescribeInstances' `MetadataOptions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MetadataOptions {
    pub state: String,
    pub http_tokens: String,
    pub http_put_response_hop_limit: u32,
    pub http_endpoint: String,
    pub http_protocol_ipv6: String,
    pub instance_metadata_tags: String,
}

fn one_of(parameter: &str, value: &str, allowed: &[&str]) -> Result<String, Ec2Error> {
    if allowed.contains(&value) {
        Ok(value.to_string())
    } else {
        Err(Ec2Error::invalid_value(format!(
            "Value ({value}) for parameter {parameter} is invalid. Valid values: {}",
            allowed.join(", ")
        )))
    }
}

impl MetadataOptions {
    /// The options an instance of `image` gets: EC2's defaults (IMDSv2 required with a
    /// hop limit of 2 for `ImdsSupport: v2.0` images, else optional with 1) overridden by
    /// the request.
    pub fn resolve(
        request: Option<&MetadataOptionsRequest>,
        image: &Image,
    ) -> Result<MetadataOptions, Ec2Error> {
        let v2_image = image.imds_support.as_deref() == Some("v2.0");
        let mut options = MetadataOptions {
            state: "applied".into(),
            http_tokens: if v2_image { "required" } else { "optional" }.into(),
            http_put_response_hop_limit: if v2_image { 2 } else { 1 },
            http_endpoint: "enabled".into(),
            http_protocol_ipv6: "disabled".into(),
            instance_metadata_tags: "disabled".into(),
        };
        if let Some(request) = request {
            options.modify(request)?;
        }
        Ok(options)
    }

    /// ModifyInstanceMetadataOptions: applies the given fields.
    pub fn modify(&mut self, request: &MetadataOptionsRequest) -> Result<(), Ec2Error> {
        let switch = ["enabled", "disabled"];
        if let Some(tokens) = &request.http_tokens {
            self.http_tokens = one_of("HttpTokens", tokens, &["optional", "required"])?;
        }
        if let Some(limit) = request.http_put_response_hop_limit {
            if !(1..=64).contains(&limit) {
                return Err(Ec2Error::invalid_value(format!(
                    "Value ({limit}) for parameter HttpPutResponseHopLimit is invalid. It must be between 1 and 64"
                )));
            }
            self.http_put_response_hop_limit = limit;
        }
        if let Some(endpoint) = &request.http_endpoint {
            self.http_endpoint = one_of("HttpEndpoint", endpoint, &switch)?;
        }
        if let Some(ipv6) = &request.http_protocol_ipv6 {
            self.http_protocol_ipv6 = one_of("HttpProtocolIpv6", ipv6, &switch)?;
        }
        if let Some(tags) = &request.instance_metadata_tags {
            self.instance_metadata_tags = one_of("InstanceMetadataTags", tags, &switch)?;
        }
        Ok(())
    }
}

/// Parses `--metadata-options` (shorthand or JSON).
pub fn parse_metadata_options(text: &str) -> Result<MetadataOptionsRequest, Ec2Error> {
    from_json(parse_argument("--metadata-options", text)?)
}

/// `--placement` as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct PlacementRequest {
    pub availability_zone: Option<String>,
    pub tenancy: Option<String>,
    pub group_name: Option<String>,
}

/// DescribeInstances' `Placement`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Placement {
    pub availability_zone: String,
    pub tenancy: String,
    #[serde(default)]
    pub group_name: String,
}

impl Placement {
    /// Picks the zone (the request's, which must be one of `zones`, else `zones[0]`)
    /// and checks the tenancy (only shared tenancy exists on this host).
    pub fn resolve(
        request: Option<&PlacementRequest>,
        zones: &[&str],
    ) -> Result<Placement, Ec2Error> {
        let default_zone = zones
            .first()
            .ok_or_else(|| Ec2Error::internal("no availability zone is configured"))?;
        let request = request.cloned().unwrap_or_default();
        let zone = request.availability_zone.as_deref().unwrap_or(default_zone);
        if !zones.contains(&zone) {
            return Err(Ec2Error::invalid_value(format!(
                "Invalid availability zone: [{zone}]"
            )));
        }
        let tenancy = request.tenancy.as_deref().unwrap_or("default");
        match one_of("Tenancy", tenancy, &["default", "dedicated", "host"])?.as_str() {
            "default" => {}
            other => {
                return Err(Ec2Error::new(
                    ErrorCode::Unsupported,
                    format!(
                        "The requested configuration is currently not supported: tenancy {other}"
                    ),
                ))
            }
        }
        Ok(Placement {
            availability_zone: zone.to_string(),
            tenancy: tenancy.to_string(),
            group_name: request.group_name.unwrap_or_default(),
        })
    }
}

/// Parses `--placement`.
pub fn parse_placement(text: &str) -> Result<PlacementRequest, Ec2Error> {
    from_json(parse_argument("--placement", text)?)
}

/// One `--network-interfaces` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct NetworkInterfaceRequest {
    #[serde(default, deserialize_with = "lenient::opt_u32")]
    pub device_index: Option<u32>,
    pub network_interface_id: Option<String>,
    pub subnet_id: Option<String>,
    pub description: Option<String>,
    pub private_ip_address: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub delete_on_termination: Option<bool>,
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub associate_public_ip_address: Option<bool>,
    /// `interface` (emulated or VF, as the launcher decides), this host's `enhanced`
    /// (a VF or fail) and `emulated`, or `efa`.
    pub interface_type: Option<String>,
    #[serde(default, deserialize_with = "lenient::opt_u32")]
    pub network_card_index: Option<u32>,
}

/// At most this many interfaces per instance (the largest types in the catalogue).
pub const MAX_NETWORK_INTERFACES: usize = 8;

/// Parses `--network-interfaces` (one or more arguments) and applies EC2's rules:
/// unique device indexes including the primary (0), valid IPv4 addresses, well-formed
/// interface ids, supported interface types.
pub fn parse_network_interfaces(
    arguments: &[String],
) -> Result<Vec<NetworkInterfaceRequest>, Ec2Error> {
    let interfaces: Vec<NetworkInterfaceRequest> =
        parse_list_arguments("--network-interfaces", arguments)?
            .into_iter()
            .map(from_json)
            .collect::<Result<_, _>>()?;
    validate_network_interfaces(&interfaces)?;
    Ok(interfaces)
}

pub fn validate_network_interfaces(interfaces: &[NetworkInterfaceRequest]) -> Result<(), Ec2Error> {
    if interfaces.len() > MAX_NETWORK_INTERFACES {
        return Err(Ec2Error::invalid_value(format!(
            "At most {MAX_NETWORK_INTERFACES} network interfaces can be attached at launch"
        )));
    }
    let mut indexes = Vec::new();
    for interface in interfaces {
        let index = interface
            .device_index
            .ok_or_else(|| Ec2Error::missing("NetworkInterface.DeviceIndex"))?;
        if indexes.contains(&index) {
            return Err(Ec2Error::invalid_value(format!(
                "Each network interface requires a unique device index: {index} is used twice"
            )));
        }
        indexes.push(index);
        if let Some(address) = &interface.private_ip_address {
            if address.parse::<Ipv4Addr>().is_err() {
                return Err(Ec2Error::invalid_value(format!(
                    "Invalid private IP address: {address}"
                )));
            }
        }
        if let Some(eni) = &interface.network_interface_id {
            ids::validate(ResourceKind::NetworkInterface, eni)?;
            if interface.subnet_id.is_some() || interface.private_ip_address.is_some() {
                return Err(Ec2Error::combination(
                    "A network interface ID cannot be combined with a subnet or private IP address",
                ));
            }
        }
        match interface.interface_type.as_deref() {
            // `enhanced`/`emulated`: this host's extension (docs/front-door.md).
            None | Some("interface" | "enhanced" | "emulated") => {}
            Some(kind @ ("efa" | "efa-only" | "trunk")) => {
                return Err(Ec2Error::new(
                    ErrorCode::Unsupported,
                    format!(
                    "The requested configuration is currently not supported: interface type {kind}"
                ),
                ))
            }
            Some(other) => {
                one_of(
                    "InterfaceType",
                    other,
                    &[
                        "interface",
                        "enhanced",
                        "emulated",
                        "efa",
                        "efa-only",
                        "trunk",
                    ],
                )?;
            }
        }
    }
    if !interfaces.is_empty() && !indexes.contains(&0) {
        return Err(Ec2Error::invalid_value(
            "The primary network interface (device index 0) must be specified",
        ));
    }
    Ok(())
}

/// Parses `--block-device-mappings` (one or more arguments).
pub fn parse_block_device_mappings(
    arguments: &[String],
) -> Result<Vec<BlockDeviceMapping>, Ec2Error> {
    parse_list_arguments("--block-device-mappings", arguments)?
        .into_iter()
        .map(from_json)
        .collect()
}

/// The mappings an instance of `image` gets: the image's, with RunInstances' overrides
/// applied per device (fields given replace the image's, `NoDevice` drops a mapping, new
/// devices are added), each EBS mapping then validated and resolved as at
/// RegisterImage (size >= snapshot, type limits, encryption).
pub fn resolve_launch_mappings(
    image: &Image,
    overrides: &[BlockDeviceMapping],
    snapshots: &dyn SnapshotOps,
) -> Result<Vec<BlockDeviceMapping>, Ec2Error> {
    crate::images::check_mapping_shapes(overrides, true)?;
    let mut mappings = image.block_device_mappings.clone();
    for change in overrides {
        let existing = mappings
            .iter()
            .position(|mapping| same_device(&mapping.device_name, &change.device_name));
        let is_root = same_device(&change.device_name, &image.root_device_name);
        match (existing, change.no_device.is_some()) {
            (_, true) if is_root => {
                return Err(Ec2Error::block_device_mapping(format!(
                    "The root device {} cannot be removed with NoDevice",
                    image.root_device_name
                )))
            }
            (Some(index), true) => {
                mappings.remove(index);
            }
            (None, true) => {}
            (Some(index), false) => {
                let current = &mut mappings[index];
                match (&mut current.ebs, &change.ebs) {
                    (Some(ebs), Some(new)) => {
                        merge(&mut ebs.snapshot_id, &new.snapshot_id);
                        merge(&mut ebs.volume_size, &new.volume_size);
                        merge(&mut ebs.volume_type, &new.volume_type);
                        merge(&mut ebs.encrypted, &new.encrypted);
                        merge(&mut ebs.kms_key_id, &new.kms_key_id);
                        merge(&mut ebs.delete_on_termination, &new.delete_on_termination);
                        // A new type brings its own IOPS/throughput defaults.
                        if new.volume_type.is_some() {
                            ebs.iops = new.iops;
                            ebs.throughput = new.throughput;
                        } else {
                            merge(&mut ebs.iops, &new.iops);
                            merge(&mut ebs.throughput, &new.throughput);
                        }
                    }
                    _ if is_root => {
                        return Err(Ec2Error::block_device_mapping(format!(
                            "The root device {} must stay an EBS volume",
                            image.root_device_name
                        )))
                    }
                    _ => *current = change.clone(),
                }
            }
            (None, false) => mappings.push(change.clone()),
        }
    }
    for mapping in &mut mappings {
        if let Some(ebs) = &mapping.ebs {
            mapping.ebs = Some(crate::images::resolve_ebs(&mapping.device_name, ebs, snapshots)?.0);
        }
    }
    Ok(mappings)
}

fn merge<T: Clone>(target: &mut Option<T>, value: &Option<T>) {
    if value.is_some() {
        target.clone_from(value);
    }
}

/// Launch-time hibernation check (`--hibernation-options Configured=true`): EC2 needs an
/// encrypted EBS root large enough to hold the instance's RAM.
pub fn check_hibernation(
    mappings: &[BlockDeviceMapping],
    root_device_name: &str,
    memory_mib: u64,
) -> Result<(), Ec2Error> {
    let root = mappings
        .iter()
        .find(|mapping| same_device(&mapping.device_name, root_device_name))
        .and_then(|mapping| mapping.ebs.as_ref())
        .ok_or_else(|| Ec2Error::block_device_mapping("Hibernation needs an EBS root volume"))?;
    let unsupported =
        |message: String| Ec2Error::new(ErrorCode::UnsupportedHibernationConfiguration, message);
    if root.encrypted != Some(true) {
        return Err(unsupported(
            "For hibernation, the root device volume must be encrypted.".into(),
        ));
    }
    let size_mib = root.volume_size.unwrap_or(0) * 1024;
    if size_mib < memory_mib {
        return Err(unsupported(format!(
            "For hibernation, the root device volume ({size_mib} MiB) must be large enough to hold the \
             instance's memory ({memory_mib} MiB)"
        )));
    }
    Ok(())
}

#[cfg(test)]
#[path = "options_tests.rs"]
mod tests;
