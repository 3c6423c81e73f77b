use super::*;

fn create(
    table: &mut VolumeTable,
    kind: &str,
    size: u64,
    iops: Option<u32>,
    multi: bool,
) -> Result<Volume, ControlError> {
    let volume = table.create(
        &CreateVolumeRequest {
            availability_zone: Some("local-1a".into()),
            size: Some(size),
            volume_type: Some(kind.into()),
            iops,
            multi_attach_enabled: Some(multi),
            ..Default::default()
        },
        None,
    )?;
    table.set_state(&volume.volume_id, VolumeState::Available)
}

fn attach_request(volume_id: &str, instance_suffix: u32, zone: &str) -> AttachVolumeRequest {
    AttachVolumeRequest {
        volume_id: volume_id.into(),
        instance_id: format!("i-{instance_suffix:017x}"),
        device: Some("/dev/xvdf".into()),
        instance_availability_zone: zone.into(),
        ..Default::default()
    }
}

#[test]
fn create_applies_defaults_and_ec2_field_names() {
    let mut table = VolumeTable::default();
    let volume = table
        .create(
            &CreateVolumeRequest {
                availability_zone: Some("local-1a".into()),
                size: Some(8),
                ..Default::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(volume.volume_type, VolumeType::Gp2);
    assert_eq!(volume.state, VolumeState::Creating);
    assert_eq!(volume.iops, Some(100));
    let json = serde_json::to_value(&volume).unwrap();
    assert_eq!(json["VolumeType"], "gp2");
    assert_eq!(json["State"], "creating");
    assert_eq!(json["Size"], 8);
    assert!(json["VolumeId"].as_str().unwrap().starts_with("vol-"));
}

#[test]
fn create_requires_zone_and_size_or_snapshot() {
    let mut table = VolumeTable::default();
    let missing_zone = table.create(
        &CreateVolumeRequest {
            size: Some(1),
            ..Default::default()
        },
        None,
    );
    assert_eq!(missing_zone.unwrap_err().code(), "MissingParameter");
    let missing_size = table.create(
        &CreateVolumeRequest {
            availability_zone: Some("local-1a".into()),
            ..Default::default()
        },
        None,
    );
    assert_eq!(missing_size.unwrap_err().code(), "MissingParameter");
    let from_snapshot = table
        .create(
            &CreateVolumeRequest {
                availability_zone: Some("local-1a".into()),
                snapshot_id: Some("snap-0123456789abcdef0".into()),
                ..Default::default()
            },
            Some(20),
        )
        .unwrap();
    assert_eq!(from_snapshot.size, 20);
    let too_small = table.create(
        &CreateVolumeRequest {
            availability_zone: Some("local-1a".into()),
            size: Some(10),
            ..Default::default()
        },
        Some(20),
    );
    assert_eq!(too_small.unwrap_err().code(), "InvalidParameterValue");
}

#[test]
fn multi_attach_only_for_provisioned_iops_and_up_to_16() {
    let mut table = VolumeTable::default();
    let refused = create(&mut table, "gp3", 10, None, true).unwrap_err();
    assert_eq!(refused.code(), "InvalidParameterCombination");
    let volume = create(&mut table, "io2", 10, Some(1000), true).unwrap();
    for instance in 0..MAX_MULTI_ATTACHMENTS as u32 {
        table
            .attach(&attach_request(&volume.volume_id, instance, "local-1a"))
            .unwrap();
    }
    let over = table
        .attach(&attach_request(&volume.volume_id, 99, "local-1a"))
        .unwrap_err();
    assert_eq!(over.code(), "AttachmentLimitExceeded");
    assert_eq!(table.get(&volume.volume_id).unwrap().attachments.len(), 16);
}

#[test]
fn single_attach_volume_refuses_a_second_instance() {
    let mut table = VolumeTable::default();
    let volume = create(&mut table, "gp3", 10, None, false).unwrap();
    table
        .attach(&attach_request(&volume.volume_id, 1, "local-1a"))
        .unwrap();
    assert_eq!(
        table.get(&volume.volume_id).unwrap().state,
        VolumeState::InUse
    );
    let second = table
        .attach(&attach_request(&volume.volume_id, 2, "local-1a"))
        .unwrap_err();
    assert_eq!(second.code(), "VolumeInUse");
}

#[test]
fn attach_only_within_the_volume_zone() {
    let mut table = VolumeTable::default();
    let volume = create(&mut table, "gp2", 10, None, false).unwrap();
    let error = table
        .attach(&attach_request(&volume.volume_id, 1, "local-1b"))
        .unwrap_err();
    assert_eq!(error.code(), "InvalidVolume.ZoneMismatch");
    assert_eq!(
        table.get(&volume.volume_id).unwrap().state,
        VolumeState::Available
    );
}

#[test]
fn export_token_authorizes_only_the_current_attachment() {
    let mut table = VolumeTable::default();
    let volume = create(&mut table, "gp2", 10, None, false).unwrap();
    let mut request = attach_request(&volume.volume_id, 1, "local-1a");
    request.read_only = Some(true);
    let (_, export_name) = table.attach(&request).unwrap();
    let grant = table.authorize_export(&export_name).unwrap();
    assert!(grant.read_only);
    assert_eq!(grant.size_bytes, 10 * GIB);
    assert!(table.authorize_export(&volume.volume_id).is_err());
    assert!(table
        .authorize_export(&format!("{}/{}", volume.volume_id, "0".repeat(32)))
        .is_err());
    assert!(table.authorize_export("vol-nothex").is_err());
    table
        .detach(&DetachVolumeRequest {
            volume_id: volume.volume_id.clone(),
            ..Default::default()
        })
        .unwrap();
    assert!(table.authorize_export(&export_name).is_err());
    assert_eq!(
        table.get(&volume.volume_id).unwrap().state,
        VolumeState::Available
    );
}

#[test]
fn delete_refused_while_attached() {
    let mut table = VolumeTable::default();
    let volume = create(&mut table, "gp2", 10, None, false).unwrap();
    table
        .attach(&attach_request(&volume.volume_id, 1, "local-1a"))
        .unwrap();
    assert_eq!(
        table.begin_delete(&volume.volume_id).unwrap_err().code(),
        "VolumeInUse"
    );
    table
        .detach(&DetachVolumeRequest {
            volume_id: volume.volume_id.clone(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        table.begin_delete(&volume.volume_id).unwrap().state,
        VolumeState::Deleting
    );
    table.finish_delete(&volume.volume_id).unwrap();
    assert_eq!(
        table.get(&volume.volume_id).unwrap_err().code(),
        "InvalidVolume.NotFound"
    );
}

#[test]
fn modify_grows_changes_type_and_rejects_shrinking() {
    let mut table = VolumeTable::default();
    let volume = create(&mut table, "gp2", 100, None, false).unwrap();
    let hour = |hours: u64| std::time::Duration::from_secs(hours * 3600);
    let cooldown = crate::control::modification::DEFAULT_COOLDOWN;
    let shrink = table.modify(
        &ModifyVolumeRequest {
            volume_id: volume.volume_id.clone(),
            size: Some(50),
            ..Default::default()
        },
        hour(0),
        cooldown,
    );
    assert!(shrink
        .unwrap_err()
        .to_string()
        .contains("cannot be smaller"));
    let modification = table
        .modify(
            &ModifyVolumeRequest {
                volume_id: volume.volume_id.clone(),
                size: Some(200),
                volume_type: Some("gp3".into()),
                iops: Some(6000),
                throughput: Some(500),
            },
            hour(0),
            cooldown,
        )
        .unwrap();
    assert_eq!(
        modification.modification_state,
        crate::control::ModificationState::Modifying
    );
    assert_eq!(
        (modification.original_size, modification.target_size),
        (100, 200)
    );
    let modified = table.get(&volume.volume_id).unwrap();
    assert_eq!(
        (modified.volume_type, modified.iops, modified.throughput),
        (VolumeType::Gp3, Some(6000), Some(500))
    );
    // Back to gp2 (after the cooldown): provisioned IOPS/throughput no longer apply.
    let back = ModifyVolumeRequest {
        volume_id: volume.volume_id.clone(),
        volume_type: Some("gp2".into()),
        ..Default::default()
    };
    assert_eq!(
        table.modify(&back, hour(1), cooldown).unwrap_err().code(),
        "VolumeModificationRateExceeded"
    );
    table.modify(&back, hour(6), cooldown).unwrap();
    let gp2 = table.get(&volume.volume_id).unwrap();
    assert_eq!((gp2.iops, gp2.throughput), (Some(600), None));
    // st1 starts at 125 GiB, so a 100 GiB volume cannot become st1.
    let small = create(&mut table, "gp2", 100, None, false).unwrap();
    let to_st1 = table.modify(
        &ModifyVolumeRequest {
            volume_id: small.volume_id.clone(),
            volume_type: Some("st1".into()),
            ..Default::default()
        },
        hour(0),
        cooldown,
    );
    assert!(to_st1
        .unwrap_err()
        .to_string()
        .contains("between 125 and 16384"));
}

#[test]
fn describe_unknown_and_malformed_ids() {
    let mut table = VolumeTable::default();
    let volume = create(&mut table, "gp2", 1, None, false).unwrap();
    let found = table
        .describe(&DescribeVolumesRequest {
            volume_ids: vec![volume.volume_id.clone()],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(found.len(), 1);
    let missing = table.describe(&DescribeVolumesRequest {
        volume_ids: vec!["vol-0123456789abcdef0".into()],
        ..Default::default()
    });
    assert_eq!(missing.unwrap_err().code(), "InvalidVolume.NotFound");
    let malformed = table.describe(&DescribeVolumesRequest {
        volume_ids: vec!["volume-1".into()],
        ..Default::default()
    });
    assert_eq!(malformed.unwrap_err().code(), "InvalidVolumeID.Malformed");
}

#[test]
fn describe_filters_by_ec2_names_and_wildcards() {
    use crate::control::filters::Filter;
    let mut table = VolumeTable::default();
    let gp3 = create(&mut table, "gp3", 10, None, false).unwrap();
    let io2 = create(&mut table, "io2", 10, Some(1000), false).unwrap();
    table
        .attach(&attach_request(&io2.volume_id, 7, "local-1a"))
        .unwrap();
    let filtered = |filters: Vec<Filter>| -> Result<Vec<String>, ControlError> {
        let request = DescribeVolumesRequest {
            volume_ids: vec![],
            filters,
        };
        Ok(table
            .describe(&request)?
            .into_iter()
            .map(|volume| volume.volume_id)
            .collect())
    };
    let filter = |name: &str, values: &[&str]| Filter {
        name: name.into(),
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    assert_eq!(
        filtered(vec![filter("status", &["available"])]).unwrap(),
        vec![gp3.volume_id.clone()]
    );
    assert_eq!(
        filtered(vec![filter("volume-type", &["io?"])]).unwrap(),
        vec![io2.volume_id.clone()]
    );
    assert_eq!(
        filtered(vec![filter("attachment.instance-id", &["i-*7"])]).unwrap(),
        vec![io2.volume_id.clone()]
    );
    assert_eq!(
        filtered(vec![
            filter("status", &["in-use"]),
            filter("volume-type", &["gp3"])
        ])
        .unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(filtered(vec![filter("size", &["10"])]).unwrap().len(), 2);
    let invalid = filtered(vec![filter("colour", &["red"])]).unwrap_err();
    assert!(
        invalid.to_string().contains("'colour' is invalid"),
        "{invalid}"
    );
}

#[test]
fn client_token_makes_create_idempotent() {
    let mut table = VolumeTable::default();
    let request = CreateVolumeRequest {
        availability_zone: Some("local-1a".into()),
        size: Some(5),
        client_token: Some("token-1".into()),
        ..Default::default()
    };
    assert!(table.find_by_client_token(&request).unwrap().is_none());
    let volume = table.create(&request, None).unwrap();
    assert_eq!(
        table
            .find_by_client_token(&request)
            .unwrap()
            .unwrap()
            .volume_id,
        volume.volume_id
    );
    let mut different = request.clone();
    different.size = Some(6);
    assert_eq!(
        table.find_by_client_token(&different).unwrap_err().code(),
        "IdempotentParameterMismatch"
    );
}
