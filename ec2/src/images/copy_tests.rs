use super::*;

fn two_disk_image(fixture: &Fixture, encrypted_root: bool) -> Image {
    let root = fixture
        .snapshots
        .add(8, encrypted_root, SnapshotState::Completed);
    let data = fixture.snapshots.add(20, false, SnapshotState::Completed);
    let mut request = register_request("source-image", &root);
    request.block_device_mappings.push(BlockDeviceMapping {
        device_name: "/dev/xvdb".into(),
        ebs: Some(EbsBlockDevice {
            snapshot_id: Some(data),
            ..Default::default()
        }),
        ..Default::default()
    });
    request.tag_specifications = vec![TagSpecification {
        resource_type: "image".into(),
        tags: vec![Tag {
            key: "team".into(),
            value: "a".into(),
        }],
    }];
    fixture
        .store
        .register(&request, OWNER, &fixture.snapshots)
        .unwrap()
}

fn copy(fixture: &Fixture, request: serde_json::Value, caller: &str) -> Result<Image, Ec2Error> {
    fixture
        .store
        .copy_image(&from_json(request).unwrap(), caller, &fixture.snapshots)
}

#[test]
fn copy_makes_new_snapshots_and_leaves_permissions_and_tags_behind() {
    let fixture = fixture();
    let source = two_disk_image(&fixture, false);
    fixture
        .modify(json!({"ImageId": source.image_id, "LaunchPermission": {"Add": [{"UserId": OTHER}, {"Group": "all"}]}}), OWNER)
        .unwrap();
    let copied = copy(
        &fixture,
        json!({"SourceImageId": source.image_id, "SourceRegion": "local", "Name": "copied-image",
               "Encrypted": true, "KmsKeyId": "mrk-chosen"}),
        OWNER,
    )
    .unwrap();
    assert_ne!(copied.image_id, source.image_id);
    assert_eq!(copied.name, "copied-image");
    assert_eq!(copied.description, source.description);
    assert_eq!(copied.state, ImageState::Available);
    assert!(copied.tags.is_empty());
    assert!(!copied.public);
    let record = fixture.store.get(&copied.image_id).unwrap();
    assert_eq!(record.launch_permissions, Default::default());
    assert_eq!(record.image, copied);
    let old = source.snapshot_ids();
    let new = copied.snapshot_ids();
    assert_eq!(new.len(), 2);
    assert!(new.iter().all(|id| !old.contains(id)), "{old:?} vs {new:?}");
    for mapping in &copied.block_device_mappings {
        let ebs = mapping.ebs.as_ref().unwrap();
        assert_eq!(
            (ebs.encrypted, ebs.kms_key_id.as_deref()),
            (Some(true), Some("mrk-chosen"))
        );
    }
    let requests = fixture.snapshots.copies.lock().unwrap().clone();
    assert_eq!(requests.len(), 2);
    assert!(requests
        .iter()
        .all(|r| r.encrypted && r.kms_key_id.as_deref() == Some("mrk-chosen")));
    assert!(requests[0].description.contains(&copied.image_id));
    // The copy is an image of its own: the source's public grant does not apply to it.
    assert_eq!(
        fixture
            .store
            .check_launch_permission(&copied.image_id, OTHER)
            .unwrap_err()
            .code,
        ErrorCode::AuthFailure
    );
}

#[test]
fn copy_image_tags_when_asked_and_plain_copies_stay_plain() {
    let fixture = fixture();
    let source = two_disk_image(&fixture, false);
    let copied = copy(
        &fixture,
        json!({"SourceImageId": source.image_id, "Name": "with-tags", "CopyImageTags": true, "Description": "d"}),
        OWNER,
    )
    .unwrap();
    assert_eq!(copied.tags, source.tags);
    assert_eq!(copied.description.as_deref(), Some("d"));
    assert!(!copied.is_encrypted());
}

#[test]
fn copy_refusals() {
    let fixture = fixture();
    let encrypted = two_disk_image(&fixture, true);
    let id = encrypted.image_id.clone();
    let cases = [
        (
            json!({"SourceImageId": id, "Name": "x-plain", "Encrypted": false}),
            OWNER,
            ErrorCode::InvalidParameterCombination,
        ),
        (
            json!({"SourceImageId": id, "Name": "x-key", "KmsKeyId": "mrk-1"}),
            OWNER,
            ErrorCode::InvalidParameterDependency,
        ),
        (
            json!({"SourceImageId": id}),
            OWNER,
            ErrorCode::MissingParameter,
        ),
        (
            json!({"Name": "no-source"}),
            OWNER,
            ErrorCode::MissingParameter,
        ),
        (
            json!({"SourceImageId": id, "Name": "x"}),
            OWNER,
            ErrorCode::InvalidAmiNameMalformed,
        ),
        (
            json!({"SourceImageId": id, "Name": "source-image"}),
            OWNER,
            ErrorCode::InvalidAmiNameDuplicate,
        ),
        (
            json!({"SourceImageId": id, "Name": "stolen"}),
            OTHER,
            ErrorCode::InvalidAmiIdNotFound,
        ),
        (
            json!({"SourceImageId": "ami-0123456789abcdef0", "Name": "ghost"}),
            OWNER,
            ErrorCode::InvalidAmiIdNotFound,
        ),
    ];
    for (request, caller, code) in cases {
        assert_eq!(
            copy(&fixture, request.clone(), caller).unwrap_err().code,
            code,
            "{request}"
        );
    }
    assert!(
        fixture.snapshots.copies.lock().unwrap().is_empty(),
        "nothing copied"
    );
    // An encrypted source copies to an encrypted image, keeping its key.
    let copied = copy(
        &fixture,
        json!({"SourceImageId": id, "Name": "still-encrypted"}),
        OWNER,
    )
    .unwrap();
    let root = copied.root_mapping().unwrap().ebs.clone().unwrap();
    assert_eq!(
        (root.encrypted, root.kms_key_id.as_deref()),
        (Some(true), Some("mrk-source"))
    );
    // Another account may copy an image shared with it; the copy is theirs.
    fixture
        .modify(
            json!({"ImageId": id, "LaunchPermission": {"Add": [{"UserId": OTHER}]}}),
            OWNER,
        )
        .unwrap();
    let theirs = copy(
        &fixture,
        json!({"SourceImageId": id, "Name": "their-copy"}),
        OTHER,
    )
    .unwrap();
    assert_eq!(theirs.owner_id, OTHER);
}

#[test]
fn a_failed_copy_leaves_nothing_behind() {
    let mut fixture = fixture();
    fixture.snapshots.fail_copy_at = Some(1);
    let source = two_disk_image(&fixture, false);
    let before = fixture.snapshots.count();
    let error = copy(
        &fixture,
        json!({"SourceImageId": source.image_id, "Name": "half-copied"}),
        OWNER,
    )
    .unwrap_err();
    assert_eq!(error.code, ErrorCode::InternalError);
    assert_eq!(
        fixture.snapshots.count(),
        before,
        "the first copy was deleted again"
    );
    assert!(fixture
        .describe(
            json!({"Filters": [{"Name": "name", "Values": ["half-copied"]}]}),
            OWNER
        )
        .unwrap()
        .is_empty());
    fixture.snapshots.fail_copy_at = None;
    copy(
        &fixture,
        json!({"SourceImageId": source.image_id, "Name": "half-copied"}),
        OWNER,
    )
    .unwrap();
}
