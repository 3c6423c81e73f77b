//! Instance records and host configuration, as read from JSON or TOML.
//!
//! One `InstanceRecord` describes what a guest learns about itself; `HostConfig` is the
//! daemon's file (many instances plus the signing key). Validation happens here so the
//! model and handler can trust every field.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ImdsError;

/// Whether token-less (IMDSv1) GETs are answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpTokens {
    #[default]
    Optional,
    Required,
}

/// `disabled` answers every request with 403, like EC2's `http-endpoint=disabled`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Toggle {
    #[default]
    Enabled,
    Disabled,
}

fn default_hop_limit() -> u8 {
    1
}

fn default_rate_limit() -> u32 {
    DEFAULT_REQUESTS_PER_SECOND
}

/// EC2 throttles metadata traffic at about 1,024 packets per second per ENI.
pub const DEFAULT_REQUESTS_PER_SECOND: u32 = 1024;

/// The instance's metadata options (EC2's `ModifyInstanceMetadataOptions`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetadataOptions {
    #[serde(default)]
    pub http_tokens: HttpTokens,
    #[serde(default)]
    pub http_endpoint: Toggle,
    /// IP TTL of token responses, 1..=64.
    #[serde(default = "default_hop_limit")]
    pub http_put_response_hop_limit: u8,
    /// Serve `meta-data/tags/instance/` (EC2 default: disabled).
    #[serde(default = "disabled")]
    pub instance_metadata_tags: Toggle,
    /// Requests per second before requests are answered 503; 0 turns the limit off.
    #[serde(default = "default_rate_limit")]
    pub requests_per_second: u32,
}

fn disabled() -> Toggle {
    Toggle::Disabled
}

impl Default for MetadataOptions {
    fn default() -> Self {
        MetadataOptions {
            http_tokens: HttpTokens::Optional,
            http_endpoint: Toggle::Enabled,
            http_put_response_hop_limit: default_hop_limit(),
            instance_metadata_tags: Toggle::Disabled,
            requests_per_second: DEFAULT_REQUESTS_PER_SECOND,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    pub availability_zone: String,
    #[serde(default)]
    pub availability_zone_id: Option<String>,
    #[serde(default)]
    pub group_name: Option<String>,
    #[serde(default)]
    pub partition_number: Option<u32>,
}

impl Placement {
    /// The region is the zone minus its final letter, which is what botocore computes too.
    pub fn region(&self) -> &str {
        let zone = self.availability_zone.as_str();
        match zone.char_indices().last() {
            Some((index, letter)) if letter.is_ascii_alphabetic() => &zone[..index],
            _ => zone,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Lower-case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub interface_id: String,
    #[serde(default)]
    pub device_number: u32,
    pub private_ipv4s: Vec<Ipv4Addr>,
    #[serde(default)]
    pub public_ipv4s: Vec<Ipv4Addr>,
    pub subnet_id: String,
    pub subnet_ipv4_cidr_block: String,
    pub vpc_id: String,
    pub vpc_ipv4_cidr_blocks: Vec<String>,
    #[serde(default)]
    pub security_groups: Vec<SecurityGroup>,
    #[serde(default)]
    pub owner_id: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKey {
    pub name: String,
    pub openssh_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IamRole {
    pub role_name: String,
    pub instance_profile_arn: String,
    pub instance_profile_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledEvent {
    pub code: String,
    pub description: String,
    pub event_id: String,
    pub not_before: String,
    pub not_after: String,
    #[serde(default = "default_event_state")]
    pub state: String,
}

fn default_event_state() -> String {
    "active".to_string()
}

/// A spot interruption notice (`spot/instance-action`, `spot/termination-time`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpotInstanceAction {
    /// `terminate`, `stop` or `hibernate`.
    pub action: String,
    /// RFC 3339 time of the action.
    pub time: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Events {
    #[serde(default)]
    pub maintenance_scheduled: Vec<ScheduledEvent>,
    #[serde(default)]
    pub spot_instance_action: Option<SpotInstanceAction>,
}

fn default_account() -> String {
    "123456789012".to_string()
}
fn default_architecture() -> String {
    "x86_64".to_string()
}
fn default_life_cycle() -> String {
    "on-demand".to_string()
}
fn default_manifest() -> String {
    "(unknown)".to_string()
}
fn default_pending_time() -> String {
    "1970-01-01T00:00:00Z".to_string()
}

/// Everything a guest can learn about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRecord {
    pub instance_id: String,
    #[serde(default = "default_account")]
    pub account_id: String,
    pub image_id: String,
    #[serde(default)]
    pub ami_launch_index: u32,
    #[serde(default = "default_manifest")]
    pub ami_manifest_path: String,
    pub instance_type: String,
    #[serde(default = "default_architecture")]
    pub architecture: String,
    #[serde(default)]
    pub kernel_id: Option<String>,
    #[serde(default)]
    pub ramdisk_id: Option<String>,
    pub reservation_id: String,
    #[serde(default = "default_life_cycle")]
    pub instance_life_cycle: String,
    /// RFC 3339; the identity document's `pendingTime`.
    #[serde(default = "default_pending_time")]
    pub pending_time: String,
    /// Defaults to `ip-a-b-c-d.<region>.compute.internal` from the primary private IP.
    #[serde(default)]
    pub local_hostname: Option<String>,
    #[serde(default)]
    pub public_hostname: Option<String>,
    pub placement: Placement,
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default)]
    pub public_keys: Vec<PublicKey>,
    /// `ami`, `root`, `ebsN`, `ephemeralN` -> device name.
    #[serde(default)]
    pub block_device_mapping: BTreeMap<String, String>,
    #[serde(default)]
    pub iam: Option<IamRole>,
    /// Raw user data as text; `user_data_base64` for binary user data.
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub user_data_base64: Option<String>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub events: Events,
    #[serde(default)]
    pub product_codes: Vec<String>,
    #[serde(default)]
    pub billing_products: Option<Vec<String>>,
    #[serde(default)]
    pub metadata_options: MetadataOptions,
    /// Addresses the host daemon recognises this instance by; defaults to the private IPs.
    #[serde(default)]
    pub source_addresses: Vec<IpAddr>,
}

impl InstanceRecord {
    /// The primary ENI (device number 0, else the first listed).
    pub fn primary_interface(&self) -> Option<&NetworkInterface> {
        self.network_interfaces
            .iter()
            .find(|eni| eni.device_number == 0)
            .or_else(|| self.network_interfaces.first())
    }

    pub fn primary_private_ipv4(&self) -> Option<Ipv4Addr> {
        self.primary_interface()
            .and_then(|eni| eni.private_ipv4s.first().copied())
    }

    pub fn local_hostname(&self) -> String {
        if let Some(name) = &self.local_hostname {
            return name.clone();
        }
        let address = self
            .primary_private_ipv4()
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
            .octets();
        let region = self.placement.region();
        // us-east-1 uses the legacy `ec2.internal` domain on EC2.
        let domain = if region == "us-east-1" {
            "ec2.internal".to_string()
        } else {
            format!("{region}.compute.internal")
        };
        format!(
            "ip-{}-{}-{}-{}.{domain}",
            address[0], address[1], address[2], address[3]
        )
    }

    /// Where the host daemon expects this instance's requests to come from.
    pub fn effective_source_addresses(&self) -> Vec<IpAddr> {
        if !self.source_addresses.is_empty() {
            return self.source_addresses.clone();
        }
        self.network_interfaces
            .iter()
            .flat_map(|eni| eni.private_ipv4s.iter().map(|ip| IpAddr::V4(*ip)))
            .collect()
    }

    /// Checks the rules the model relies on; errors name the field.
    pub fn validate(&self) -> Result<(), ImdsError> {
        let invalid = |field: &str, rule: &str| ImdsError::InvalidConfig {
            instance: self.instance_id.clone(),
            field: field.to_string(),
            rule: rule.to_string(),
        };
        if self.instance_id.is_empty() || self.instance_id.contains('/') {
            return Err(invalid("instance_id", "must be non-empty, without '/'"));
        }
        let hop_limit = self.metadata_options.http_put_response_hop_limit;
        if !(1..=64).contains(&hop_limit) {
            return Err(invalid(
                "metadata_options.http_put_response_hop_limit",
                "must be 1..=64",
            ));
        }
        if self.network_interfaces.is_empty() {
            return Err(invalid("network_interfaces", "needs at least one ENI"));
        }
        for eni in &self.network_interfaces {
            if !is_mac_address(&eni.mac) {
                return Err(invalid(
                    "network_interfaces[].mac",
                    "must be lower-case aa:bb:cc:dd:ee:ff",
                ));
            }
            if eni.private_ipv4s.is_empty() {
                return Err(invalid(
                    "network_interfaces[].private_ipv4s",
                    "needs at least one address",
                ));
            }
        }
        for key in &self.public_keys {
            if key.name.is_empty() || key.name.contains(['/', '\n']) {
                return Err(invalid(
                    "public_keys[].name",
                    "non-empty, no '/' or newline",
                ));
            }
        }
        if let Some(role) = &self.iam {
            if role.role_name.is_empty() || role.role_name.contains('/') {
                return Err(invalid("iam.role_name", "non-empty, without '/'"));
            }
        }
        if self.user_data.is_some() && self.user_data_base64.is_some() {
            return Err(invalid(
                "user_data",
                "give user_data or user_data_base64, not both",
            ));
        }
        if self.user_data_bytes().is_err() {
            return Err(invalid("user_data_base64", "must be valid base64"));
        }
        for name in self.block_device_mapping.keys().chain(self.tags.keys()) {
            if name.is_empty() || name.contains('/') {
                return Err(invalid(
                    "block_device_mapping/tags",
                    "keys must be non-empty, without '/'",
                ));
            }
        }
        Ok(())
    }

    pub fn user_data_bytes(&self) -> Result<Option<Vec<u8>>, base64::DecodeError> {
        use base64::Engine;
        if let Some(text) = &self.user_data {
            return Ok(Some(text.as_bytes().to_vec()));
        }
        match &self.user_data_base64 {
            Some(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map(Some),
            None => Ok(None),
        }
    }
}

fn is_mac_address(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6
        && parts.iter().all(|part| {
            part.len() == 2
                && part
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        })
}

/// Paths to the PEM key and certificate the identity document is signed with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    pub private_key: PathBuf,
    pub certificate: PathBuf,
}

/// The daemon's configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    #[serde(default)]
    pub signing: Option<SigningConfig>,
    /// Hex secret the IAM credentials are derived from; random per daemon start when absent.
    #[serde(default)]
    pub credential_secret: Option<String>,
    pub instances: Vec<InstanceRecord>,
}

impl HostConfig {
    /// Parses JSON or TOML (chosen by extension, `.toml` or anything else as JSON) and
    /// resolves relative key paths against the file's directory.
    pub fn load(path: &Path) -> Result<HostConfig, ImdsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ImdsError::ReadConfig {
            path: path.to_path_buf(),
            source,
        })?;
        let is_toml = path.extension().is_some_and(|ext| ext == "toml");
        let mut config =
            HostConfig::parse(&text, is_toml).map_err(|message| ImdsError::ParseConfig {
                path: path.to_path_buf(),
                message,
            })?;
        if let (Some(signing), Some(dir)) = (&mut config.signing, path.parent()) {
            signing.private_key = dir.join(&signing.private_key);
            signing.certificate = dir.join(&signing.certificate);
        }
        config.validate()?;
        Ok(config)
    }

    pub fn parse(text: &str, is_toml: bool) -> Result<HostConfig, String> {
        if is_toml {
            toml::from_str(text).map_err(|error| error.to_string())
        } else {
            serde_json::from_str(text).map_err(|error| error.to_string())
        }
    }

    /// Every instance valid, instance ids unique, and no source address claimed twice.
    pub fn validate(&self) -> Result<(), ImdsError> {
        let mut owners: BTreeMap<IpAddr, &str> = BTreeMap::new();
        let mut ids = std::collections::BTreeSet::new();
        for instance in &self.instances {
            instance.validate()?;
            if !ids.insert(instance.instance_id.as_str()) {
                return Err(ImdsError::InvalidConfig {
                    instance: instance.instance_id.clone(),
                    field: "instance_id".to_string(),
                    rule: "must be unique".to_string(),
                });
            }
            for address in instance.effective_source_addresses() {
                if let Some(other) = owners.insert(address, &instance.instance_id) {
                    return Err(ImdsError::InvalidConfig {
                        instance: instance.instance_id.clone(),
                        field: "source_addresses".to_string(),
                        rule: format!("{address} is already used by {other}"),
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A complete record used by tests across the crate.
    pub(crate) fn sample_record() -> InstanceRecord {
        let json = r##"{
            "instance_id": "i-0123456789abcdef0",
            "image_id": "ami-0abcdef1234567890",
            "instance_type": "m5.large",
            "reservation_id": "r-0123456789abcdef0",
            "pending_time": "2026-11-25T10:00:00Z",
            "placement": {"availability_zone": "eu-west-1b", "availability_zone_id": "euw1-az2"},
            "network_interfaces": [{
                "mac": "02:00:00:00:00:01", "interface_id": "eni-01", "device_number": 0,
                "private_ipv4s": ["172.31.16.10", "172.31.16.11"],
                "subnet_id": "subnet-01", "subnet_ipv4_cidr_block": "172.31.16.0/20",
                "vpc_id": "vpc-01", "vpc_ipv4_cidr_blocks": ["172.31.0.0/16"],
                "security_groups": [{"id": "sg-01", "name": "default"}]
            }],
            "public_keys": [{"name": "my-key", "openssh_key": "ssh-ed25519 AAAA test"}],
            "block_device_mapping": {"ami": "/dev/xvda", "root": "/dev/xvda", "ebs1": "/dev/sdb"},
            "iam": {"role_name": "app-role",
                    "instance_profile_arn": "arn:aws:iam::123456789012:instance-profile/app",
                    "instance_profile_id": "AIPAEXAMPLE"},
            "user_data": "#cloud-config\nhostname: test\n",
            "tags": {"Name": "web-1"}
        }"##;
        serde_json::from_str(json).expect("sample record parses")
    }

    #[test]
    fn defaults_and_derived_fields() {
        let record = sample_record();
        record.validate().expect("valid");
        assert_eq!(record.placement.region(), "eu-west-1");
        assert_eq!(
            record.local_hostname(),
            "ip-172-31-16-10.eu-west-1.compute.internal"
        );
        assert_eq!(record.metadata_options.http_put_response_hop_limit, 1);
        assert_eq!(record.metadata_options.http_tokens, HttpTokens::Optional);
        assert_eq!(
            record.metadata_options.instance_metadata_tags,
            Toggle::Disabled
        );
        assert_eq!(record.effective_source_addresses().len(), 2);
    }

    #[test]
    fn validation_names_the_field() {
        let mut record = sample_record();
        record.metadata_options.http_put_response_hop_limit = 65;
        let error = record.validate().expect_err("hop limit 65 is invalid");
        assert!(error.to_string().contains("hop_limit"), "{error}");

        let mut record = sample_record();
        record.network_interfaces[0].mac = "02:00:00:00:00:0G".to_string();
        assert!(record.validate().is_err());
    }

    #[test]
    fn duplicate_source_addresses_are_rejected() {
        let first = sample_record();
        let mut second = sample_record();
        second.instance_id = "i-other".to_string();
        let config = HostConfig {
            signing: None,
            credential_secret: None,
            instances: vec![first, second],
        };
        let error = config.validate().expect_err("same private IPs twice");
        assert!(error.to_string().contains("already used"), "{error}");
    }

    #[test]
    fn toml_and_json_agree() {
        let toml_text = r#"
            [[instances]]
            instance_id = "i-1"
            image_id = "ami-1"
            instance_type = "t3.micro"
            reservation_id = "r-1"
            placement = { availability_zone = "us-east-1a" }
            [[instances.network_interfaces]]
            mac = "02:00:00:00:00:02"
            interface_id = "eni-2"
            private_ipv4s = ["10.0.0.5"]
            subnet_id = "subnet-2"
            subnet_ipv4_cidr_block = "10.0.0.0/24"
            vpc_id = "vpc-2"
            vpc_ipv4_cidr_blocks = ["10.0.0.0/16"]
        "#;
        let from_toml = HostConfig::parse(toml_text, true).expect("toml parses");
        let json_text = serde_json::to_string(&from_toml).expect("serialises");
        let from_json = HostConfig::parse(&json_text, false).expect("json parses");
        assert_eq!(from_toml, from_json);
        assert_eq!(
            from_toml.instances[0].local_hostname(),
            "ip-10-0-0-5.ec2.internal"
        );
    }
}
