//! The metadata tree: an instance record turned into the directories and leaves EC2 serves.
//!
//! The tree is built once per instance and configuration load; only IAM credentials (which
//! rotate) are computed per request. Every dated version serves the same tree: clients
//! ask for a version to pin the shape, and the shape we serve is a superset of the old
//! ones, which is what cloud-init and botocore need.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{InstanceRecord, MetadataOptions, Toggle};
use crate::error::ImdsError;
use crate::identity::IdentitySigner;

/// `/` lists these, oldest first, as EC2 does.
pub const API_VERSIONS: &[&str] = &[
    "1.0",
    "2007-01-19",
    "2007-03-01",
    "2007-08-29",
    "2007-10-10",
    "2007-12-15",
    "2008-02-01",
    "2008-09-01",
    "2009-04-04",
    "2011-01-01",
    "2011-05-01",
    "2012-01-12",
    "2014-02-25",
    "2014-11-05",
    "2015-10-20",
    "2016-04-19",
    "2016-06-30",
    "2016-09-02",
    "2018-03-28",
    "2018-08-17",
    "2018-09-24",
    "2019-10-01",
    "2020-10-27",
    "2021-01-03",
    "2021-03-23",
    "2021-07-15",
    "2022-09-24",
    "latest",
];

/// Leaves whose body is computed when asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leaf {
    Static(Vec<u8>),
    /// `iam/security-credentials/<role>`: rotates with time.
    RoleCredentials {
        role: String,
    },
    /// `iam/info`: its `LastUpdated` follows the credentials' rotation.
    IamInfo {
        instance_profile_arn: String,
        instance_profile_id: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Directory(Directory),
    Leaf(Leaf),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// What the parent's listing shows instead of the name (`0=my-key` for public keys).
    listed_as: Option<String>,
    node: Node,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    entries: BTreeMap<String, Entry>,
}

impl Directory {
    /// Inserts `node` at a `/`-separated path, creating directories on the way.
    fn insert(&mut self, path: &str, node: Node) {
        let mut directory = self;
        let mut segments = path
            .split('/')
            .filter(|segment| !segment.is_empty())
            .peekable();
        while let Some(segment) = segments.next() {
            if segments.peek().is_none() {
                directory.entries.insert(
                    segment.to_string(),
                    Entry {
                        listed_as: None,
                        node,
                    },
                );
                return;
            }
            let entry = directory
                .entries
                .entry(segment.to_string())
                .or_insert_with(|| Entry {
                    listed_as: None,
                    node: Node::Directory(Directory::default()),
                });
            if !matches!(entry.node, Node::Directory(_)) {
                entry.node = Node::Directory(Directory::default());
            }
            directory = match &mut entry.node {
                Node::Directory(child) => child,
                Node::Leaf(_) => return,
            };
        }
    }

    fn insert_text(&mut self, path: &str, text: impl Into<String>) {
        self.insert(path, Node::Leaf(Leaf::Static(text.into().into_bytes())));
    }

    fn set_listing_label(&mut self, name: &str, label: String) {
        if let Some(entry) = self.entries.get_mut(name) {
            entry.listed_as = Some(label);
        }
    }

    /// Walks `segments` (already split and free of empty parts).
    pub fn lookup<'a>(&'a self, segments: &[&str]) -> Option<&'a Node> {
        let (first, rest) = segments.split_first()?;
        let entry = self.entries.get(*first)?;
        if rest.is_empty() {
            return Some(&entry.node);
        }
        match &entry.node {
            Node::Directory(child) => child.lookup(rest),
            Node::Leaf(_) => None,
        }
    }

    /// Children one per line, sub-directories with a trailing `/`, no final newline.
    pub fn listing(&self) -> String {
        let mut lines: Vec<String> = Vec::with_capacity(self.entries.len());
        for (name, entry) in &self.entries {
            let mut line = entry.listed_as.clone().unwrap_or_else(|| name.clone());
            if matches!(entry.node, Node::Directory(_)) && entry.listed_as.is_none() {
                line.push('/');
            }
            lines.push(line);
        }
        lines.join("\n")
    }

    /// Every leaf path under this directory, for tests and `--describe`.
    pub fn leaf_paths(&self, prefix: &str, out: &mut Vec<String>) {
        for (name, entry) in &self.entries {
            let path = format!("{prefix}{name}");
            match &entry.node {
                Node::Directory(child) => child.leaf_paths(&format!("{path}/"), out),
                Node::Leaf(_) => out.push(path),
            }
        }
    }
}

/// The identity document, field order as EC2 prints it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IdentityDocument<'a> {
    account_id: &'a str,
    architecture: &'a str,
    availability_zone: &'a str,
    billing_products: Option<&'a [String]>,
    devpay_product_codes: Option<&'a [String]>,
    marketplace_product_codes: Option<&'a [String]>,
    image_id: &'a str,
    instance_id: &'a str,
    instance_type: &'a str,
    kernel_id: Option<&'a str>,
    pending_time: &'a str,
    private_ip: Option<String>,
    ramdisk_id: Option<&'a str>,
    region: &'a str,
    version: &'a str,
}

/// One instance's metadata, ready to serve.
#[derive(Clone, Debug)]
pub struct InstanceMetadata {
    pub instance_id: String,
    pub options: MetadataOptions,
    /// The tree under `/<version>/`: `dynamic/`, `meta-data/`, `user-data`.
    pub version_root: Directory,
    pub identity_document: String,
}

impl InstanceMetadata {
    /// Builds the tree; signs the identity document when the host has a key.
    pub fn build(
        record: &InstanceRecord,
        signer: Option<&IdentitySigner>,
    ) -> Result<InstanceMetadata, ImdsError> {
        record.validate()?;
        let mut root = Directory::default();
        build_meta_data(record, &mut root);

        let identity_document = identity_document(record)?;
        root.insert_text("dynamic/instance-identity/document", &identity_document);
        if let Some(signer) = signer {
            let signatures = signer.sign(identity_document.as_bytes())?;
            root.insert_text("dynamic/instance-identity/signature", signatures.signature);
            root.insert_text("dynamic/instance-identity/pkcs7", signatures.pkcs7);
        }
        let user_data = record
            .user_data_bytes()
            .map_err(|_| ImdsError::InvalidConfig {
                instance: record.instance_id.clone(),
                field: "user_data_base64".to_string(),
                rule: "must be valid base64".to_string(),
            })?;
        if let Some(bytes) = user_data {
            root.insert("user-data", Node::Leaf(Leaf::Static(bytes)));
        }
        Ok(InstanceMetadata {
            instance_id: record.instance_id.clone(),
            options: record.metadata_options.clone(),
            version_root: root,
            identity_document,
        })
    }
}

fn identity_document(record: &InstanceRecord) -> Result<String, ImdsError> {
    let document = IdentityDocument {
        account_id: &record.account_id,
        architecture: &record.architecture,
        availability_zone: &record.placement.availability_zone,
        billing_products: record.billing_products.as_deref(),
        devpay_product_codes: None,
        marketplace_product_codes: if record.product_codes.is_empty() {
            None
        } else {
            Some(&record.product_codes)
        },
        image_id: &record.image_id,
        instance_id: &record.instance_id,
        instance_type: &record.instance_type,
        kernel_id: record.kernel_id.as_deref(),
        pending_time: &record.pending_time,
        private_ip: record.primary_private_ipv4().map(|ip| ip.to_string()),
        ramdisk_id: record.ramdisk_id.as_deref(),
        region: record.placement.region(),
        version: "2017-09-30",
    };
    serde_json::to_string_pretty(&document).map_err(|error| ImdsError::InvalidConfig {
        instance: record.instance_id.clone(),
        field: "identity document".to_string(),
        rule: error.to_string(),
    })
}

fn build_meta_data(record: &InstanceRecord, root: &mut Directory) {
    let mut meta = Directory::default();
    meta.insert_text("ami-id", &record.image_id);
    meta.insert_text("ami-launch-index", record.ami_launch_index.to_string());
    meta.insert_text("ami-manifest-path", &record.ami_manifest_path);
    for (name, device) in &record.block_device_mapping {
        meta.insert_text(&format!("block-device-mapping/{name}"), device);
    }
    let scheduled: Vec<serde_json::Value> = record
        .events
        .maintenance_scheduled
        .iter()
        .map(|event| {
            serde_json::json!({
                "Code": event.code, "Description": event.description,
                "EventId": event.event_id, "NotBefore": event.not_before,
                "NotAfter": event.not_after, "State": event.state,
            })
        })
        .collect();
    meta.insert_text(
        "events/maintenance/scheduled",
        serde_json::Value::Array(scheduled).to_string(),
    );
    meta.insert_text("events/maintenance/history", "[]");
    let local_hostname = record.local_hostname();
    meta.insert_text("hostname", &local_hostname);
    meta.insert_text("local-hostname", &local_hostname);
    if let Some(ip) = record.primary_private_ipv4() {
        meta.insert_text("local-ipv4", ip.to_string());
    }
    if let Some(role) = &record.iam {
        meta.insert(
            "iam/info",
            Node::Leaf(Leaf::IamInfo {
                instance_profile_arn: role.instance_profile_arn.clone(),
                instance_profile_id: role.instance_profile_id.clone(),
            }),
        );
        meta.insert(
            &format!("iam/security-credentials/{}", role.role_name),
            Node::Leaf(Leaf::RoleCredentials {
                role: role.role_name.clone(),
            }),
        );
    }
    meta.insert_text("instance-action", "none");
    meta.insert_text("instance-id", &record.instance_id);
    meta.insert_text("instance-life-cycle", &record.instance_life_cycle);
    meta.insert_text("instance-type", &record.instance_type);
    if let Some(kernel) = &record.kernel_id {
        meta.insert_text("kernel-id", kernel);
    }
    if let Some(ramdisk) = &record.ramdisk_id {
        meta.insert_text("ramdisk-id", ramdisk);
    }
    if let Some(primary) = record.primary_interface() {
        meta.insert_text("mac", &primary.mac);
        let names: Vec<&str> = primary
            .security_groups
            .iter()
            .map(|group| group.name.as_str())
            .collect();
        meta.insert_text("security-groups", names.join("\n"));
    }
    insert_interfaces(record, &local_hostname, &mut meta);
    let placement = &record.placement;
    meta.insert_text("placement/availability-zone", &placement.availability_zone);
    if let Some(zone_id) = &placement.availability_zone_id {
        meta.insert_text("placement/availability-zone-id", zone_id);
    }
    if let Some(group) = &placement.group_name {
        meta.insert_text("placement/group-name", group);
    }
    if let Some(partition) = placement.partition_number {
        meta.insert_text("placement/partition-number", partition.to_string());
    }
    meta.insert_text("placement/region", placement.region());
    if !record.product_codes.is_empty() {
        meta.insert_text("product-codes", record.product_codes.join("\n"));
    }
    let public_ipv4 = record
        .primary_interface()
        .and_then(|eni| eni.public_ipv4s.first());
    if let Some(ip) = public_ipv4 {
        meta.insert_text("public-ipv4", ip.to_string());
    }
    if let Some(name) = &record.public_hostname {
        meta.insert_text("public-hostname", name);
    }
    for (index, key) in record.public_keys.iter().enumerate() {
        let index_name = index.to_string();
        meta.insert_text(
            &format!("public-keys/{index_name}/openssh-key"),
            &key.openssh_key,
        );
        if let Some(Entry {
            node: Node::Directory(keys),
            ..
        }) = meta.entries.get_mut("public-keys")
        {
            keys.set_listing_label(&index_name, format!("{index_name}={}", key.name));
        }
    }
    meta.insert_text("reservation-id", &record.reservation_id);
    meta.insert_text("services/domain", "amazonaws.com");
    meta.insert_text("services/partition", "aws");
    if let Some(spot) = &record.events.spot_instance_action {
        meta.insert_text(
            "spot/instance-action",
            serde_json::json!({"action": spot.action, "time": spot.time}).to_string(),
        );
        meta.insert_text("spot/termination-time", &spot.time);
    }
    if record.metadata_options.instance_metadata_tags == Toggle::Enabled {
        for (key, value) in &record.tags {
            meta.insert_text(&format!("tags/instance/{key}"), value);
        }
    }
    root.insert("meta-data", Node::Directory(meta));
}

fn insert_interfaces(record: &InstanceRecord, local_hostname: &str, meta: &mut Directory) {
    for eni in &record.network_interfaces {
        let base = format!("network/interfaces/macs/{}", eni.mac);
        let ips: Vec<String> = eni.private_ipv4s.iter().map(|ip| ip.to_string()).collect();
        meta.insert_text(
            &format!("{base}/device-number"),
            eni.device_number.to_string(),
        );
        meta.insert_text(&format!("{base}/interface-id"), &eni.interface_id);
        meta.insert_text(&format!("{base}/local-hostname"), local_hostname);
        meta.insert_text(&format!("{base}/local-ipv4s"), ips.join("\n"));
        meta.insert_text(&format!("{base}/mac"), &eni.mac);
        meta.insert_text(
            &format!("{base}/owner-id"),
            eni.owner_id.as_deref().unwrap_or(&record.account_id),
        );
        if !eni.public_ipv4s.is_empty() {
            let public: Vec<String> = eni.public_ipv4s.iter().map(|ip| ip.to_string()).collect();
            meta.insert_text(&format!("{base}/public-ipv4s"), public.join("\n"));
        }
        let group_ids: Vec<&str> = eni.security_groups.iter().map(|g| g.id.as_str()).collect();
        let group_names: Vec<&str> = eni
            .security_groups
            .iter()
            .map(|g| g.name.as_str())
            .collect();
        meta.insert_text(&format!("{base}/security-group-ids"), group_ids.join("\n"));
        meta.insert_text(&format!("{base}/security-groups"), group_names.join("\n"));
        meta.insert_text(&format!("{base}/subnet-id"), &eni.subnet_id);
        meta.insert_text(
            &format!("{base}/subnet-ipv4-cidr-block"),
            &eni.subnet_ipv4_cidr_block,
        );
        meta.insert_text(&format!("{base}/vpc-id"), &eni.vpc_id);
        if let Some(first_block) = eni.vpc_ipv4_cidr_blocks.first() {
            meta.insert_text(&format!("{base}/vpc-ipv4-cidr-block"), first_block);
        }
        meta.insert_text(
            &format!("{base}/vpc-ipv4-cidr-blocks"),
            eni.vpc_ipv4_cidr_blocks.join("\n"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::sample_record;

    fn text(node: Option<&Node>) -> String {
        match node {
            Some(Node::Leaf(Leaf::Static(bytes))) => String::from_utf8_lossy(bytes).into_owned(),
            other => panic!("expected a static leaf, got {other:?}"),
        }
    }

    #[test]
    fn record_fields_appear_at_their_paths() {
        let record = sample_record();
        let metadata = InstanceMetadata::build(&record, None).expect("builds");
        let root = &metadata.version_root;
        assert_eq!(
            text(root.lookup(&["meta-data", "instance-id"])),
            record.instance_id
        );
        assert_eq!(
            text(root.lookup(&["meta-data", "placement", "region"])),
            "eu-west-1"
        );
        let mac = &record.network_interfaces[0].mac;
        let ips = text(root.lookup(&[
            "meta-data",
            "network",
            "interfaces",
            "macs",
            mac,
            "local-ipv4s",
        ]));
        assert_eq!(ips, "172.31.16.10\n172.31.16.11");
        assert_eq!(
            text(root.lookup(&["meta-data", "public-keys", "0", "openssh-key"])),
            record.public_keys[0].openssh_key
        );
        assert_eq!(
            text(root.lookup(&["user-data"])),
            record.user_data.clone().unwrap_or_default()
        );
        // Tags are off by default.
        assert!(root.lookup(&["meta-data", "tags"]).is_none());
        // Unsigned without a key: only the document.
        let identity = root.lookup(&["dynamic", "instance-identity"]);
        match identity {
            Some(Node::Directory(directory)) => assert_eq!(directory.listing(), "document"),
            other => panic!("expected directory, got {other:?}"),
        }
    }

    #[test]
    fn listings_mark_directories_and_label_public_keys() {
        let record = sample_record();
        let metadata = InstanceMetadata::build(&record, None).expect("builds");
        let root = &metadata.version_root;
        let Some(Node::Directory(keys)) = root.lookup(&["meta-data", "public-keys"]) else {
            panic!("public-keys is a directory");
        };
        assert_eq!(keys.listing(), "0=my-key");
        let Some(Node::Directory(placement)) = root.lookup(&["meta-data", "placement"]) else {
            panic!("placement is a directory");
        };
        assert_eq!(
            placement.listing(),
            "availability-zone\navailability-zone-id\nregion"
        );
        assert_eq!(root.listing(), "dynamic/\nmeta-data/\nuser-data");
    }

    #[test]
    fn tags_when_enabled_and_signed_identity() {
        let mut record = sample_record();
        record.metadata_options.instance_metadata_tags = Toggle::Enabled;
        let signer = crate::identity::tests::test_signer();
        let metadata = InstanceMetadata::build(&record, Some(&signer)).expect("builds");
        let root = &metadata.version_root;
        assert_eq!(
            text(root.lookup(&["meta-data", "tags", "instance", "Name"])),
            "web-1"
        );
        let Some(Node::Directory(identity)) = root.lookup(&["dynamic", "instance-identity"]) else {
            panic!("instance-identity is a directory");
        };
        assert_eq!(identity.listing(), "document\npkcs7\nsignature");
        let document: serde_json::Value =
            serde_json::from_str(&metadata.identity_document).expect("document is JSON");
        assert_eq!(document["instanceId"], record.instance_id.as_str());
        assert_eq!(document["region"], "eu-west-1");
        assert_eq!(document["privateIp"], "172.31.16.10");
    }

    #[test]
    fn spot_and_maintenance_events_are_served() {
        let mut record = sample_record();
        record.events.maintenance_scheduled = vec![crate::config::ScheduledEvent {
            code: "system-reboot".to_string(),
            description: "scheduled reboot".to_string(),
            event_id: "instance-event-0d59937288b749b32".to_string(),
            not_before: "21 Jan 2027 09:00:43 GMT".to_string(),
            not_after: "21 Jan 2027 09:17:23 GMT".to_string(),
            state: "active".to_string(),
        }];
        record.events.spot_instance_action = Some(crate::config::SpotInstanceAction {
            action: "terminate".to_string(),
            time: "2027-01-21T09:00:00Z".to_string(),
        });
        let metadata = InstanceMetadata::build(&record, None).expect("builds");
        let root = &metadata.version_root;
        let scheduled: serde_json::Value = serde_json::from_str(&text(root.lookup(&[
            "meta-data",
            "events",
            "maintenance",
            "scheduled",
        ])))
        .expect("JSON");
        assert_eq!(scheduled[0]["Code"], "system-reboot");
        assert_eq!(scheduled[0]["EventId"], "instance-event-0d59937288b749b32");
        let action: serde_json::Value = serde_json::from_str(&text(root.lookup(&[
            "meta-data",
            "spot",
            "instance-action",
        ])))
        .expect("JSON");
        assert_eq!(
            action,
            serde_json::json!({"action": "terminate", "time": "2027-01-21T09:00:00Z"})
        );
        assert_eq!(
            text(root.lookup(&["meta-data", "spot", "termination-time"])),
            "2027-01-21T09:00:00Z"
        );
        // Without events: an empty list and no spot directory.
        let plain = InstanceMetadata::build(&sample_record(), None).expect("builds");
        assert_eq!(
            text(
                plain
                    .version_root
                    .lookup(&["meta-data", "events", "maintenance", "scheduled"])
            ),
            "[]"
        );
        assert!(plain.version_root.lookup(&["meta-data", "spot"]).is_none());
    }
}
