use super::*;
use crate::images::fake::FakeSnapshots;
use crate::images::{EbsBlockDevice, ImageStore, RegisterImageRequest, SnapshotState};

fn image(
    imds_v2: bool,
    snapshots: &FakeSnapshots,
    dir: &tempfile::TempDir,
    encrypted: bool,
) -> Image {
    let root = snapshots.add(8, encrypted, SnapshotState::Completed);
    let data = snapshots.add(20, false, SnapshotState::Completed);
    let store = ImageStore::open(&dir.path().display().to_string()).unwrap();
    let request = RegisterImageRequest {
        name: Some("launchable".into()),
        root_device_name: Some("/dev/xvda".into()),
        block_device_mappings: parse_block_device_mappings(&[
            format!("DeviceName=/dev/xvda,Ebs={{SnapshotId={root}}}"),
            format!("DeviceName=/dev/xvdb,Ebs={{SnapshotId={data},DeleteOnTermination=false}}"),
        ])
        .unwrap(),
        imds_support: imds_v2.then(|| "v2.0".to_string()),
        ..Default::default()
    };
    store.register(&request, "111122223333", snapshots).unwrap()
}

#[test]
fn metadata_options_defaults_follow_the_images_imds_support() {
    let snapshots = FakeSnapshots::default();
    let dir = tempfile::tempdir().unwrap();
    let v1 = MetadataOptions::resolve(None, &image(false, &snapshots, &dir, false)).unwrap();
    assert_eq!(
        (v1.http_tokens.as_str(), v1.http_put_response_hop_limit),
        ("optional", 1)
    );
    let dir = tempfile::tempdir().unwrap();
    let v2_image = image(true, &snapshots, &dir, false);
    let v2 = MetadataOptions::resolve(None, &v2_image).unwrap();
    assert_eq!(
        (v2.http_tokens.as_str(), v2.http_put_response_hop_limit),
        ("required", 2)
    );
    assert_eq!(
        serde_json::to_value(&v2).unwrap(),
        serde_json::json!({"State": "applied", "HttpTokens": "required", "HttpPutResponseHopLimit": 2,
            "HttpEndpoint": "enabled", "HttpProtocolIpv6": "disabled", "InstanceMetadataTags": "disabled"})
    );
    let request = parse_metadata_options(
        "HttpTokens=optional,HttpPutResponseHopLimit=3,HttpEndpoint=disabled",
    )
    .unwrap();
    let chosen = MetadataOptions::resolve(Some(&request), &v2_image).unwrap();
    assert_eq!(
        (
            chosen.http_tokens.as_str(),
            chosen.http_put_response_hop_limit,
            chosen.http_endpoint.as_str()
        ),
        ("optional", 3, "disabled")
    );
    let json =
        parse_metadata_options(r#"{"HttpTokens": "required", "HttpPutResponseHopLimit": 64}"#)
            .unwrap();
    assert_eq!(json.http_put_response_hop_limit, Some(64));
    for bad in [
        "HttpTokens=sometimes",
        "HttpPutResponseHopLimit=0",
        "HttpPutResponseHopLimit=65",
        "HttpEndpoint=on",
        "InstanceMetadataTags=yes",
    ] {
        let request = parse_metadata_options(bad).unwrap();
        let error = MetadataOptions::resolve(Some(&request), &v2_image).unwrap_err();
        assert_eq!(error.code, ErrorCode::InvalidParameterValue, "{bad}");
    }
    let error = MetadataOptions::resolve(
        Some(&parse_metadata_options("HttpTokens=maybe").unwrap()),
        &v2_image,
    )
    .unwrap_err();
    assert_eq!(
        error.message,
        "Value (maybe) for parameter HttpTokens is invalid. Valid values: optional, required"
    );
    assert_eq!(
        parse_metadata_options("HttpTokenz=required")
            .unwrap_err()
            .code,
        ErrorCode::InvalidParameter
    );
    assert_eq!(
        parse_metadata_options("HttpPutResponseHopLimit=two")
            .unwrap_err()
            .code,
        ErrorCode::InvalidParameterValue
    );
}

#[test]
fn placement_zone_and_tenancy() {
    let zones = ["local-1a", "local-1b"];
    let default = Placement::resolve(None, &zones).unwrap();
    assert_eq!(
        (default.availability_zone.as_str(), default.tenancy.as_str()),
        ("local-1a", "default")
    );
    let chosen = Placement::resolve(
        Some(&parse_placement("AvailabilityZone=local-1b").unwrap()),
        &zones,
    )
    .unwrap();
    assert_eq!(chosen.availability_zone, "local-1b");
    let error = Placement::resolve(
        Some(&parse_placement("AvailabilityZone=us-east-1a").unwrap()),
        &zones,
    )
    .unwrap_err();
    assert_eq!(
        (error.code, error.message.as_str()),
        (
            ErrorCode::InvalidParameterValue,
            "Invalid availability zone: [us-east-1a]"
        )
    );
    let error = Placement::resolve(Some(&parse_placement("Tenancy=dedicated").unwrap()), &zones)
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::Unsupported);
    let error =
        Placement::resolve(Some(&parse_placement("Tenancy=mine").unwrap()), &zones).unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidParameterValue);
    assert_eq!(
        Placement::resolve(None, &[]).unwrap_err().code,
        ErrorCode::InternalError
    );
}

#[test]
fn network_interfaces() {
    let parse = |args: &[&str]| {
        parse_network_interfaces(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    };
    let interfaces = parse(&[
        "DeviceIndex=0,PrivateIpAddress=10.0.0.5,Groups=[sg-1,sg-2],DeleteOnTermination=true",
        r#"[{"DeviceIndex": 1, "InterfaceType": "interface", "Description": "second"}]"#,
    ])
    .unwrap();
    assert_eq!(interfaces.len(), 2);
    assert_eq!(
        interfaces[0].private_ip_address.as_deref(),
        Some("10.0.0.5")
    );
    assert_eq!(interfaces[0].groups, ["sg-1", "sg-2"]);
    assert_eq!(interfaces[0].delete_on_termination, Some(true));
    assert_eq!(interfaces[1].device_index, Some(1));
    for (args, code) in [
        (vec!["DeviceIndex=1"], ErrorCode::InvalidParameterValue),
        (
            vec!["DeviceIndex=0", "DeviceIndex=0"],
            ErrorCode::InvalidParameterValue,
        ),
        (vec!["SubnetId=subnet-1"], ErrorCode::MissingParameter),
        (
            vec!["DeviceIndex=0,PrivateIpAddress=10.0.0.300"],
            ErrorCode::InvalidParameterValue,
        ),
        (
            vec!["DeviceIndex=0,NetworkInterfaceId=eni-xyz"],
            ErrorCode::InvalidNetworkInterfaceIdMalformed,
        ),
        (
            vec![
                "DeviceIndex=0,NetworkInterfaceId=eni-0123456789abcdef0,PrivateIpAddress=10.0.0.1",
            ],
            ErrorCode::InvalidParameterCombination,
        ),
        (
            vec!["DeviceIndex=0,InterfaceType=efa"],
            ErrorCode::Unsupported,
        ),
        (
            vec!["DeviceIndex=0,InterfaceType=fast"],
            ErrorCode::InvalidParameterValue,
        ),
        (
            vec!["DeviceIndex=0,Colour=red"],
            ErrorCode::InvalidParameter,
        ),
    ] {
        assert_eq!(parse(&args).unwrap_err().code, code, "{args:?}");
    }
    let nine: Vec<String> = (0..9).map(|i| format!("DeviceIndex={i}")).collect();
    assert_eq!(
        parse_network_interfaces(&nine).unwrap_err().code,
        ErrorCode::InvalidParameterValue
    );
    assert!(parse(&[]).unwrap().is_empty());
}

#[test]
fn launch_mappings_merge_with_the_images() {
    let snapshots = FakeSnapshots::default();
    let dir = tempfile::tempdir().unwrap();
    let image = image(false, &snapshots, &dir, false);
    let overrides = parse_block_device_mappings(&[
        "DeviceName=/dev/xvda,Ebs={VolumeSize=30,VolumeType=io2,Iops=5000}".into(),
        "DeviceName=/dev/xvdb,NoDevice=".into(),
        "DeviceName=/dev/xvdc,Ebs={VolumeSize=10,Encrypted=true,KmsKeyId=mrk-1}".into(),
        "DeviceName=/dev/xvdd,VirtualName=ephemeral0".into(),
    ])
    .unwrap();
    let mappings = resolve_launch_mappings(&image, &overrides, &snapshots).unwrap();
    let devices: Vec<&str> = mappings.iter().map(|m| m.device_name.as_str()).collect();
    assert_eq!(devices, ["/dev/xvda", "/dev/xvdc", "/dev/xvdd"]);
    let root = mappings[0].ebs.clone().unwrap();
    assert_eq!(
        root.snapshot_id,
        image
            .root_mapping()
            .unwrap()
            .ebs
            .as_ref()
            .unwrap()
            .snapshot_id
    );
    assert_eq!(
        (
            root.volume_size,
            root.volume_type.as_deref(),
            root.iops,
            root.throughput
        ),
        (Some(30), Some("io2"), Some(5000), None)
    );
    let data = mappings[1].ebs.clone().unwrap();
    assert_eq!(
        (
            data.encrypted,
            data.kms_key_id.as_deref(),
            data.delete_on_termination
        ),
        (Some(true), Some("mrk-1"), Some(true))
    );
    // Unchanged image mappings come through resolved as they were.
    assert_eq!(
        resolve_launch_mappings(&image, &[], &snapshots).unwrap(),
        image.block_device_mappings
    );

    let refuse = |args: &[&str], code: ErrorCode, fragment: &str| {
        let overrides =
            parse_block_device_mappings(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
                .unwrap();
        let error = resolve_launch_mappings(&image, &overrides, &snapshots).unwrap_err();
        assert_eq!(error.code, code, "{args:?}: {error}");
        assert!(error.message.contains(fragment), "{args:?}: {error}");
    };
    refuse(
        &["DeviceName=/dev/xvda,Ebs={VolumeSize=4}"],
        ErrorCode::InvalidBlockDeviceMapping,
        "smaller than snapshot",
    );
    refuse(
        &["DeviceName=/dev/xvda,NoDevice="],
        ErrorCode::InvalidBlockDeviceMapping,
        "cannot be removed",
    );
    refuse(
        &["DeviceName=/dev/xvda,VirtualName=ephemeral0"],
        ErrorCode::InvalidBlockDeviceMapping,
        "must stay an EBS volume",
    );
    refuse(
        &["DeviceName=/dev/xvde,Ebs={VolumeSize=100000}"],
        ErrorCode::InvalidParameterValue,
        "Size",
    );
    refuse(
        &["DeviceName=/dev/xvde,Ebs={VolumeSize=10,VolumeType=st1}"],
        ErrorCode::InvalidParameterValue,
        "st1",
    );
    refuse(
        &["DeviceName=/dev/bogus,Ebs={VolumeSize=10}"],
        ErrorCode::InvalidBlockDeviceMapping,
        "Invalid device name",
    );
    refuse(
        &["DeviceName=/dev/xvdb,Ebs={Encrypted=false,KmsKeyId=k}"],
        ErrorCode::InvalidParameterDependency,
        "KmsKeyId",
    );
}

#[test]
fn hibernation_needs_an_encrypted_root_big_enough_for_ram() {
    let snapshots = FakeSnapshots::default();
    let dir = tempfile::tempdir().unwrap();
    let plain = image(false, &snapshots, &dir, false);
    let error =
        check_hibernation(&plain.block_device_mappings, &plain.root_device_name, 1024).unwrap_err();
    assert_eq!(error.code, ErrorCode::UnsupportedHibernationConfiguration);
    assert_eq!(
        error.message,
        "For hibernation, the root device volume must be encrypted."
    );
    let dir = tempfile::tempdir().unwrap();
    let encrypted = image(false, &snapshots, &dir, true);
    check_hibernation(
        &encrypted.block_device_mappings,
        &encrypted.root_device_name,
        8 * 1024,
    )
    .unwrap();
    let error = check_hibernation(
        &encrypted.block_device_mappings,
        &encrypted.root_device_name,
        16 * 1024,
    )
    .unwrap_err();
    assert_eq!(error.code, ErrorCode::UnsupportedHibernationConfiguration);
    let mut no_root = encrypted.block_device_mappings.clone();
    no_root[0].ebs = Some(EbsBlockDevice::default());
    no_root.remove(0);
    assert_eq!(
        check_hibernation(&no_root, "/dev/xvda", 1)
            .unwrap_err()
            .code,
        ErrorCode::InvalidBlockDeviceMapping
    );
}
