use super::*;
use crate::images::fake::FakeSnapshots;
use crate::shorthand::{from_json, parse_list_arguments};
use serde_json::json;

const OWNER: &str = "111122223333";

fn mappings(arguments: &[&str]) -> Vec<BlockDeviceMapping> {
    let arguments: Vec<String> = arguments.iter().map(|a| a.to_string()).collect();
    parse_list_arguments("--block-device-mappings", &arguments)
        .unwrap()
        .into_iter()
        .map(|value| from_json(value).unwrap())
        .collect()
}

fn request(root_snapshot: &str) -> RegisterImageRequest {
    RegisterImageRequest {
        name: Some("debian-12 (base) v1.0".into()),
        root_device_name: Some("/dev/xvda".into()),
        block_device_mappings: mappings(&[&format!(
            "DeviceName=/dev/xvda,Ebs={{SnapshotId={root_snapshot}}}"
        )]),
        ena_support: Some(true),
        imds_support: Some("v2.0".into()),
        ..Default::default()
    }
}

fn error_of(request: &RegisterImageRequest, snapshots: &FakeSnapshots) -> Ec2Error {
    build_image(request, OWNER, snapshots).unwrap_err()
}

#[test]
fn image_names_follow_ec2s_rule() {
    for good in [
        "abc",
        "my-image_1.0 (x86) [test] @home/it's",
        &"a".repeat(128),
    ] {
        assert!(validate_image_name(good).is_ok(), "{good}");
    }
    for bad in [
        "ab",
        "",
        &"a".repeat(129),
        "semi;colon",
        "tab\there",
        "ünïcode",
        "star*",
    ] {
        assert_eq!(
            validate_image_name(bad).unwrap_err().code,
            ErrorCode::InvalidAmiNameMalformed,
            "{bad}"
        );
    }
}

#[test]
fn device_names() {
    for good in [
        "/dev/xvda",
        "/dev/xvdba",
        "xvdb",
        "/dev/sda1",
        "/dev/sdb",
        "/dev/vda",
        "/dev/sdf15",
        "/dev/hda",
    ] {
        assert!(is_valid_device_name(good), "{good}");
    }
    for bad in [
        "/dev/nvme0n1",
        "/dev/sda16",
        "/dev/sda0",
        "/dev/xvd",
        "/dev/xvdabc",
        "/dev/sdA",
        "sdaa",
        "/dev/xvda1",
        "",
    ] {
        assert!(!is_valid_device_name(bad), "{bad}");
    }
}

#[test]
fn register_fills_in_what_ec2_derives() {
    let snapshots = FakeSnapshots::default();
    let root = snapshots.add(8, false, SnapshotState::Completed);
    let mut request = request(&root);
    request.block_device_mappings.extend(mappings(&[
        "DeviceName=/dev/xvdb,Ebs={VolumeSize=100,VolumeType=io2,Iops=4000,DeleteOnTermination=false}",
        "DeviceName=/dev/xvdc,VirtualName=ephemeral0",
    ]));
    request.tag_specifications = vec![TagSpecification {
        resource_type: "image".into(),
        tags: vec![Tag {
            key: "env".into(),
            value: "test".into(),
        }],
    }];
    let image = build_image(&request, OWNER, &snapshots).unwrap();
    assert_eq!(image.state, ImageState::Available);
    assert_eq!(image.owner_id, OWNER);
    assert_eq!(
        image.image_location,
        format!("{OWNER}/debian-12 (base) v1.0")
    );
    assert_eq!(image.boot_source, BootSource::RootVolume);
    assert!(crate::ids::is_valid(ResourceKind::Image, &image.image_id));
    let json = serde_json::to_value(&image).unwrap();
    assert_eq!(
        json["BlockDeviceMappings"][0],
        json!({"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": root, "VolumeSize": 8, "VolumeType": "gp3",
               "Iops": 3000, "Throughput": 125, "Encrypted": false, "DeleteOnTermination": true}})
    );
    assert_eq!(
        json["BlockDeviceMappings"][1]["Ebs"],
        json!({"VolumeSize": 100, "VolumeType": "io2", "Iops": 4000, "Encrypted": false, "DeleteOnTermination": false})
    );
    assert_eq!(
        json["BlockDeviceMappings"][2],
        json!({"DeviceName": "/dev/xvdc", "VirtualName": "ephemeral0"})
    );
    for (field, value) in [
        ("Architecture", json!("x86_64")),
        ("ImageType", json!("machine")),
        ("RootDeviceType", json!("ebs")),
        ("EnaSupport", json!(true)),
        ("ImdsSupport", json!("v2.0")),
        ("Public", json!(false)),
        ("State", json!("available")),
        ("BootSource", json!({"Type": "root-volume"})),
        ("Tags", json!([{"Key": "env", "Value": "test"}])),
    ] {
        assert_eq!(json[field], value, "{field}");
    }
    assert!(json["CreationDate"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn pending_snapshots_make_a_pending_image_and_failed_ones_are_refused() {
    let snapshots = FakeSnapshots::default();
    let root = snapshots.add(8, false, SnapshotState::Pending);
    assert_eq!(
        build_image(&request(&root), OWNER, &snapshots)
            .unwrap()
            .state,
        ImageState::Pending
    );
    snapshots.set_state(&root, SnapshotState::Error);
    assert_eq!(
        error_of(&request(&root), &snapshots).code,
        ErrorCode::IncorrectState
    );
}

#[test]
fn encrypted_snapshots_stay_encrypted() {
    let snapshots = FakeSnapshots::default();
    let root = snapshots.add(8, true, SnapshotState::Completed);
    let image = build_image(&request(&root), OWNER, &snapshots).unwrap();
    let ebs = image.root_mapping().unwrap().ebs.clone().unwrap();
    assert_eq!(
        (ebs.encrypted, ebs.kms_key_id.as_deref()),
        (Some(true), Some("mrk-source"))
    );
    assert!(image.is_encrypted());
    let mut unencrypt = request(&root);
    unencrypt.block_device_mappings[0]
        .ebs
        .as_mut()
        .unwrap()
        .encrypted = Some(false);
    assert_eq!(
        error_of(&unencrypt, &snapshots).code,
        ErrorCode::InvalidParameterCombination
    );
    let plain = snapshots.add(8, false, SnapshotState::Completed);
    let mut key_only = request(&plain);
    key_only.block_device_mappings[0]
        .ebs
        .as_mut()
        .unwrap()
        .kms_key_id = Some("alias/aws/ebs".into());
    let error = error_of(&key_only, &snapshots);
    assert_eq!(error.code, ErrorCode::InvalidParameterDependency);
    assert_eq!(
        error.message,
        "The parameter KmsKeyId requires the parameter Encrypted to be set."
    );
}

#[test]
fn mapping_rules() {
    let snapshots = FakeSnapshots::default();
    let root = snapshots.add(8, false, SnapshotState::Completed);
    let root_arg = format!("DeviceName=/dev/xvda,Ebs={{SnapshotId={root}}}");
    let too_small =
        format!("Volume of size 4GB is smaller than snapshot '{root}', expect size >= 8GB");
    let cases: Vec<(Vec<String>, Option<&str>, ErrorCode, &str)> = vec![
        (
            vec![root_arg.clone()],
            Some("/dev/xvdz"),
            ErrorCode::InvalidBlockDeviceMapping,
            "not in the block device mappings",
        ),
        (
            vec![root_arg.clone()],
            None,
            ErrorCode::MissingParameter,
            "rootDeviceName",
        ),
        (
            vec!["DeviceName=/dev/xvda,Ebs={VolumeSize=8}".into()],
            Some("/dev/xvda"),
            ErrorCode::InvalidBlockDeviceMapping,
            "SnapshotId",
        ),
        (
            vec![
                root_arg.clone(),
                "DeviceName=xvda,Ebs={VolumeSize=8}".into(),
            ],
            Some("/dev/xvda"),
            ErrorCode::InvalidBlockDeviceMapping,
            "more than one",
        ),
        (
            vec![
                root_arg.clone(),
                "DeviceName=/dev/nvme1n1,Ebs={VolumeSize=8}".into(),
            ],
            Some("/dev/xvda"),
            ErrorCode::InvalidBlockDeviceMapping,
            "Invalid device name",
        ),
        (
            vec![root_arg.clone(), "DeviceName=/dev/xvdb,NoDevice=".into()],
            Some("/dev/xvda"),
            ErrorCode::InvalidBlockDeviceMapping,
            "NoDevice",
        ),
        (
            vec![
                root_arg.clone(),
                "DeviceName=/dev/xvdb,VirtualName=ephemeral24".into(),
            ],
            Some("/dev/xvda"),
            ErrorCode::InvalidBlockDeviceMapping,
            "ephemeral24",
        ),
        (
            vec![
                root_arg.clone(),
                "DeviceName=/dev/xvdb,VirtualName=ephemeral1,Ebs={VolumeSize=1}".into(),
            ],
            Some("/dev/xvda"),
            ErrorCode::InvalidBlockDeviceMapping,
            "exactly one",
        ),
        (
            vec![
                root_arg.clone(),
                "DeviceName=/dev/xvdb,Ebs={VolumeType=gp3}".into(),
            ],
            Some("/dev/xvda"),
            ErrorCode::InvalidBlockDeviceMapping,
            "VolumeSize",
        ),
        (
            vec![format!(
                "DeviceName=/dev/xvda,Ebs={{SnapshotId={root},VolumeSize=4}}"
            )],
            Some("/dev/xvda"),
            ErrorCode::InvalidBlockDeviceMapping,
            &too_small,
        ),
        (
            vec!["DeviceName=/dev/xvda,Ebs={SnapshotId=snap-nothex}".into()],
            Some("/dev/xvda"),
            ErrorCode::InvalidSnapshotIdMalformed,
            "snap-nothex",
        ),
        (
            vec!["DeviceName=/dev/xvda,Ebs={SnapshotId=snap-0123456789abcdef0}".into()],
            Some("/dev/xvda"),
            ErrorCode::InvalidSnapshotNotFound,
            "The snapshot 'snap-0123456789abcdef0' does not exist.",
        ),
        (
            vec![
                root_arg.clone(),
                "DeviceName=/dev/xvdb,Ebs={VolumeSize=2,VolumeType=io1,Iops=100}".into(),
            ],
            Some("/dev/xvda"),
            ErrorCode::InvalidParameterValue,
            "Size",
        ),
        (
            vec![
                root_arg.clone(),
                "DeviceName=/dev/xvdb,Ebs={VolumeSize=20,VolumeType=gp2,Iops=3000}".into(),
            ],
            Some("/dev/xvda"),
            ErrorCode::InvalidParameterCombination,
            "Iops",
        ),
        (
            vec![
                root_arg.clone(),
                "DeviceName=/dev/xvdb,Ebs={VolumeSize=20,VolumeType=gp9}".into(),
            ],
            Some("/dev/xvda"),
            ErrorCode::InvalidParameterValue,
            "gp9",
        ),
    ];
    for (arguments, root_name, code, fragment) in cases {
        let mut request = request(&root);
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        request.block_device_mappings = mappings(&arguments);
        request.root_device_name = root_name.map(str::to_string);
        let error = error_of(&request, &snapshots);
        assert_eq!(error.code, code, "{arguments:?}: {error}");
        assert!(error.message.contains(fragment), "{arguments:?}: {error}");
    }
}

#[test]
fn image_level_parameters() {
    let snapshots = FakeSnapshots::default();
    let root = snapshots.add(8, false, SnapshotState::Completed);
    let check = |edit: &dyn Fn(&mut RegisterImageRequest), code: ErrorCode| {
        let mut request = request(&root);
        edit(&mut request);
        assert_eq!(error_of(&request, &snapshots).code, code);
    };
    check(&|r| r.name = None, ErrorCode::MissingParameter);
    check(
        &|r| r.architecture = Some("arm64".into()),
        ErrorCode::Unsupported,
    );
    check(
        &|r| r.architecture = Some("sparc".into()),
        ErrorCode::InvalidParameterValue,
    );
    check(
        &|r| r.virtualization_type = Some("paravirtual".into()),
        ErrorCode::Unsupported,
    );
    check(
        &|r| r.imds_support = Some("v1.0".into()),
        ErrorCode::InvalidParameterValue,
    );
    check(
        &|r| r.sriov_net_support = Some("complex".into()),
        ErrorCode::InvalidParameterValue,
    );
    check(
        &|r| r.boot_mode = Some("bios".into()),
        ErrorCode::InvalidParameterValue,
    );
    check(
        &|r| r.description = Some("d".repeat(256)),
        ErrorCode::InvalidParameterValue,
    );
    check(
        &|r| r.ramdisk_id = Some("ari-0123456789abcdef0".into()),
        ErrorCode::InvalidParameterCombination,
    );
    check(
        &|r| r.kernel_id = Some("vmlinuz".into()),
        ErrorCode::InvalidParameterValue,
    );

    let mut with_kernel = request(&root);
    with_kernel.kernel_id = Some("aki-0123456789abcdef0".into());
    with_kernel.boot_mode = Some("uefi-preferred".into());
    with_kernel.sriov_net_support = Some("simple".into());
    let image = build_image(&with_kernel, OWNER, &snapshots).unwrap();
    assert_eq!(
        image.boot_source,
        BootSource::Kernel {
            kernel_id: "aki-0123456789abcdef0".into(),
            ramdisk_id: None
        }
    );
    assert_eq!(image.boot_mode, Some(BootMode::UefiPreferred));
    let parsed: RegisterImageRequest =
        from_json(json!({"Name": "abc", "Bogus": 1})).unwrap_or_default();
    assert_eq!(
        parsed,
        RegisterImageRequest::default(),
        "unknown fields are refused"
    );
}
