use super::*;
use crate::images::fake::FakeSnapshots;
use crate::images::{BlockDeviceMapping, EbsBlockDevice, Tag, TagSpecification};
use crate::shorthand::{from_json, parse_argument};
use serde_json::json;

const OWNER: &str = "111122223333";
const OTHER: &str = "444455556666";

struct Fixture {
    _dir: tempfile::TempDir,
    location: String,
    store: ImageStore,
    snapshots: FakeSnapshots,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let location = dir.path().join("objects").display().to_string();
    let store = ImageStore::open(&location).unwrap();
    Fixture {
        _dir: dir,
        location,
        store,
        snapshots: FakeSnapshots::default(),
    }
}

fn register_request(name: &str, snapshot_id: &str) -> RegisterImageRequest {
    RegisterImageRequest {
        name: Some(name.into()),
        description: Some(format!("{name} image")),
        root_device_name: Some("/dev/xvda".into()),
        block_device_mappings: vec![BlockDeviceMapping {
            device_name: "/dev/xvda".into(),
            ebs: Some(EbsBlockDevice {
                snapshot_id: Some(snapshot_id.into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

impl Fixture {
    fn register(&self, name: &str, owner: &str) -> Image {
        let snapshot = self.snapshots.add(8, false, SnapshotState::Completed);
        self.store
            .register(&register_request(name, &snapshot), owner, &self.snapshots)
            .unwrap()
    }

    fn describe(&self, request: serde_json::Value, caller: &str) -> Result<Vec<String>, Ec2Error> {
        let request: DescribeImagesRequest = from_json(request).unwrap();
        Ok(self
            .store
            .describe(&request, caller)?
            .into_iter()
            .map(|image| image.name)
            .collect())
    }

    fn modify(&self, request: serde_json::Value, caller: &str) -> Result<(), Ec2Error> {
        self.store
            .modify_attribute(&from_json(request).unwrap(), caller)
    }
}

#[test]
fn registered_manifests_persist_in_the_object_store() {
    let fixture = fixture();
    let image = fixture.register("web-server", OWNER);
    let object = std::path::Path::new(&fixture.location)
        .join("images")
        .join(format!("{}.json", image.image_id));
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&object).unwrap()).unwrap();
    assert_eq!(stored["Image"]["ImageId"], image.image_id);
    assert_eq!(
        stored["LaunchPermissions"],
        json!({"Public": false, "UserIds": []})
    );
    let reopened = ImageStore::open(&fixture.location).unwrap();
    assert_eq!(reopened.get(&image.image_id).unwrap().image, image);
    assert_eq!(
        reopened.get("ami-0123456789abcdef0").unwrap_err().code,
        ErrorCode::InvalidAmiIdNotFound
    );
    assert_eq!(
        reopened.get("ami-zz").unwrap_err().code,
        ErrorCode::InvalidAmiIdMalformed
    );
}

#[test]
fn names_are_unique_per_owner() {
    let fixture = fixture();
    let first = fixture.register("same-name", OWNER);
    let snapshot = fixture.snapshots.add(8, false, SnapshotState::Completed);
    let error = fixture
        .store
        .register(
            &register_request("same-name", &snapshot),
            OWNER,
            &fixture.snapshots,
        )
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidAmiNameDuplicate);
    assert_eq!(
        error.message,
        format!(
            "AMI name same-name is already in use by AMI {}",
            first.image_id
        )
    );
    fixture.register("same-name", OTHER);
}

#[test]
fn describe_by_ids_owners_executable_users_and_filters() {
    let fixture = fixture();
    let web = fixture.register("web-server-1", OWNER);
    fixture.register("db-server", OWNER);
    let theirs = fixture.register("their-image", OTHER);
    let shared = fixture.register("shared-image", OTHER);
    fixture
        .modify(
            json!({"ImageId": shared.image_id, "LaunchPermission": {"Add": [{"UserId": OWNER}]}}),
            OTHER,
        )
        .unwrap();
    let public = fixture.register("public-image", OTHER);
    fixture
        .modify(
            json!({"ImageId": public.image_id, "LaunchPermission": {"Add": [{"Group": "all"}]}}),
            OTHER,
        )
        .unwrap();

    let mut all = fixture.describe(json!({}), OWNER).unwrap();
    all.sort();
    assert_eq!(
        all,
        ["db-server", "public-image", "shared-image", "web-server-1"]
    );
    assert_eq!(
        fixture
            .describe(json!({"ImageIds": [web.image_id]}), OWNER)
            .unwrap(),
        ["web-server-1"]
    );
    let hidden = fixture
        .describe(json!({"ImageIds": [theirs.image_id]}), OWNER)
        .unwrap_err();
    assert_eq!(hidden, Ec2Error::image_not_found(&theirs.image_id));
    assert_eq!(
        fixture
            .describe(json!({"ImageIds": ["ami-123"]}), OWNER)
            .unwrap_err()
            .code,
        ErrorCode::InvalidAmiIdMalformed
    );
    let mut own = fixture
        .describe(json!({"Owners": ["self"]}), OWNER)
        .unwrap();
    own.sort();
    assert_eq!(own, ["db-server", "web-server-1"]);
    let mut by_other = fixture.describe(json!({"Owners": [OTHER]}), OWNER).unwrap();
    by_other.sort();
    assert_eq!(by_other, ["public-image", "shared-image"]);
    assert!(fixture
        .describe(json!({"Owners": ["amazon"]}), OWNER)
        .unwrap()
        .is_empty());
    assert_eq!(
        fixture
            .describe(json!({"Owners": ["me"]}), OWNER)
            .unwrap_err()
            .code,
        ErrorCode::InvalidUserIdMalformed
    );
    assert_eq!(
        fixture
            .describe(json!({"ExecutableUsers": ["all"]}), OWNER)
            .unwrap(),
        ["public-image"]
    );
    let mut executable = fixture
        .describe(
            json!({"ExecutableUsers": ["self"], "Owners": [OTHER]}),
            OWNER,
        )
        .unwrap();
    executable.sort();
    assert_eq!(executable, ["shared-image"]);

    let filtered = |filters: serde_json::Value| {
        fixture
            .describe(json!({"Filters": filters}), OWNER)
            .unwrap()
    };
    assert_eq!(
        filtered(json!([{"Name": "name", "Values": ["web-*"]}])),
        ["web-server-1"]
    );
    assert_eq!(
        filtered(json!([{"Name": "description", "Values": ["db-serve? image"]}])),
        ["db-server"]
    );
    assert_eq!(
        filtered(json!([{"Name": "is-public", "Values": ["true"]}])),
        ["public-image"]
    );
    assert_eq!(
        filtered(json!([{"Name": "image-id", "Values": [web.image_id]}])),
        ["web-server-1"]
    );
    let snapshot = web.snapshot_ids()[0].clone();
    assert_eq!(
        filtered(json!([{"Name": "block-device-mapping.snapshot-id", "Values": [snapshot]}])),
        ["web-server-1"]
    );
    assert_eq!(
        filtered(
            json!([{"Name": "owner-id", "Values": [OWNER]}, {"Name": "name", "Values": ["db*"]}])
        ),
        ["db-server"]
    );
    for (name, value) in [
        ("architecture", "x86_64"),
        ("state", "available"),
        ("root-device-type", "ebs"),
        ("root-device-name", "/dev/xvda"),
        ("ena-support", "false"),
        ("image-type", "machine"),
    ] {
        assert_eq!(
            filtered(json!([{"Name": name, "Values": [value]}])).len(),
            4,
            "{name}"
        );
    }
    assert!(filtered(json!([{"Name": "architecture", "Values": ["arm64"]}])).is_empty());
    let error = fixture
        .describe(
            json!({"Filters": [{"Name": "colour", "Values": ["x"]}]}),
            OWNER,
        )
        .unwrap_err();
    assert_eq!(error.message, "The filter 'colour' is invalid");
}

#[test]
fn tag_filters() {
    let fixture = fixture();
    let snapshot = fixture.snapshots.add(8, false, SnapshotState::Completed);
    let mut request = register_request("tagged", &snapshot);
    request.tag_specifications = vec![TagSpecification {
        resource_type: "image".into(),
        tags: vec![Tag {
            key: "env".into(),
            value: "prod".into(),
        }],
    }];
    fixture
        .store
        .register(&request, OWNER, &fixture.snapshots)
        .unwrap();
    fixture.register("untagged", OWNER);
    let filtered = |filters: serde_json::Value| {
        fixture
            .describe(json!({"Filters": filters}), OWNER)
            .unwrap()
    };
    assert_eq!(
        filtered(json!([{"Name": "tag:env", "Values": ["prod"]}])),
        ["tagged"]
    );
    assert!(filtered(json!([{"Name": "tag:env", "Values": ["dev"]}])).is_empty());
    assert_eq!(
        filtered(json!([{"Name": "tag-key", "Values": ["e*"]}])),
        ["tagged"]
    );
}

#[test]
fn launch_permissions_are_enforced_and_modifiable() {
    let fixture = fixture();
    let image = fixture.register("private-image", OWNER);
    let id = image.image_id.clone();
    assert_eq!(
        fixture.store.check_launch_permission(&id, OWNER).unwrap(),
        image
    );
    let refused = fixture
        .store
        .check_launch_permission(&id, OTHER)
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::AuthFailure);
    assert_eq!(
        refused.message,
        format!("Not authorized for images: [{id}]")
    );
    assert!(fixture.describe(json!({}), OTHER).unwrap().is_empty());

    // Shorthand as typed: --launch-permission "Add=[{UserId=444455556666}]".
    let add = parse_argument("--launch-permission", &format!("Add=[{{UserId={OTHER}}}]")).unwrap();
    fixture
        .modify(json!({"ImageId": id, "LaunchPermission": add}), OWNER)
        .unwrap();
    fixture.store.check_launch_permission(&id, OTHER).unwrap();
    assert_eq!(
        fixture.describe(json!({}), OTHER).unwrap(),
        ["private-image"]
    );
    let attribute = fixture
        .store
        .describe_attribute(&id, "launchPermission", OWNER)
        .unwrap();
    assert_eq!(
        attribute,
        json!({"ImageId": id, "LaunchPermissions": [{"UserId": OTHER}]})
    );
    // Only the owner sees or changes launch permissions.
    assert_eq!(
        fixture
            .store
            .describe_attribute(&id, "launchPermission", OTHER)
            .unwrap_err()
            .code,
        ErrorCode::AuthFailure
    );
    assert_eq!(
        fixture
            .modify(
                json!({"ImageId": id, "LaunchPermission": {"Add": [{"Group": "all"}]}}),
                OTHER
            )
            .unwrap_err()
            .code,
        ErrorCode::AuthFailure
    );
    fixture
        .modify(json!({"ImageId": id, "Attribute": "launchPermission", "OperationType": "remove", "UserIds": [OTHER]}), OWNER)
        .unwrap();
    assert_eq!(
        fixture
            .store
            .check_launch_permission(&id, OTHER)
            .unwrap_err()
            .code,
        ErrorCode::AuthFailure
    );

    fixture
        .modify(
            json!({"ImageId": id, "LaunchPermission": {"Add": [{"Group": "all"}]}}),
            OWNER,
        )
        .unwrap();
    fixture.store.check_launch_permission(&id, OTHER).unwrap();
    assert!(fixture.store.get(&id).unwrap().image.public);
    fixture
        .modify(
            json!({"ImageId": id, "LaunchPermission": {"Remove": [{"Group": "all"}]}}),
            OWNER,
        )
        .unwrap();
    assert!(!fixture.store.get(&id).unwrap().image.public);

    for (bad, code) in [
        (
            json!({"ImageId": id, "LaunchPermission": {"Add": [{"UserId": "12"}]}}),
            ErrorCode::InvalidAmiAttributeItemValue,
        ),
        (
            json!({"ImageId": id, "LaunchPermission": {"Add": [{"Group": "everyone"}]}}),
            ErrorCode::InvalidAmiAttributeItemValue,
        ),
        (
            json!({"ImageId": id, "LaunchPermission": {"Add": [{}]}}),
            ErrorCode::InvalidAmiAttributeItemValue,
        ),
        (
            json!({"ImageId": id}),
            ErrorCode::InvalidParameterCombination,
        ),
        (
            json!({"ImageId": id, "UserIds": [OTHER]}),
            ErrorCode::MissingParameter,
        ),
        (
            json!({"LaunchPermission": {"Add": [{"Group": "all"}]}}),
            ErrorCode::MissingParameter,
        ),
    ] {
        assert_eq!(
            fixture.modify(bad.clone(), OWNER).unwrap_err().code,
            code,
            "{bad}"
        );
    }
    assert!(
        !fixture.store.get(&id).unwrap().image.public,
        "a refused change changes nothing"
    );
}

#[test]
fn description_and_other_attributes() {
    let fixture = fixture();
    let image = fixture.register("described", OWNER);
    let id = image.image_id.clone();
    fixture
        .modify(
            json!({"ImageId": id, "Description": {"Value": "new words"}}),
            OWNER,
        )
        .unwrap();
    assert_eq!(
        fixture
            .store
            .describe_attribute(&id, "description", OWNER)
            .unwrap(),
        json!({"ImageId": id, "Description": {"Value": "new words"}})
    );
    fixture
        .modify(
            json!({"ImageId": id, "Attribute": "description", "Value": "legacy"}),
            OWNER,
        )
        .unwrap();
    assert_eq!(
        fixture.store.get(&id).unwrap().image.description.as_deref(),
        Some("legacy")
    );
    assert_eq!(
        fixture
            .store
            .describe_attribute(&id, "sriovNetSupport", OWNER)
            .unwrap(),
        json!({"ImageId": id, "SriovNetSupport": {}})
    );
    let mappings = fixture
        .store
        .describe_attribute(&id, "blockDeviceMapping", OWNER)
        .unwrap();
    assert_eq!(
        mappings["BlockDeviceMappings"][0]["DeviceName"],
        "/dev/xvda"
    );
    assert_eq!(
        fixture
            .store
            .describe_attribute(&id, "colour", OWNER)
            .unwrap_err()
            .code,
        ErrorCode::InvalidParameterValue
    );
}

#[test]
fn pending_images_become_available_or_failed() {
    let fixture = fixture();
    let snapshot = fixture.snapshots.add(8, false, SnapshotState::Pending);
    let image = fixture
        .store
        .register(
            &register_request("from-instance", &snapshot),
            OWNER,
            &fixture.snapshots,
        )
        .unwrap();
    assert_eq!(image.state, ImageState::Pending);
    let error = fixture
        .store
        .check_launch_permission(&image.image_id, OWNER)
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidAmiIdUnavailable);
    assert_eq!(
        error.message,
        format!("AMI '{}' is pending, and cannot be run", image.image_id)
    );
    assert_eq!(
        fixture
            .store
            .refresh_state(&image.image_id, &fixture.snapshots)
            .unwrap()
            .state,
        ImageState::Pending
    );
    fixture
        .snapshots
        .set_state(&snapshot, SnapshotState::Completed);
    assert_eq!(
        fixture
            .store
            .refresh_state(&image.image_id, &fixture.snapshots)
            .unwrap()
            .state,
        ImageState::Available
    );
    let second = fixture.snapshots.add(8, false, SnapshotState::Pending);
    let failing = fixture
        .store
        .register(
            &register_request("will-fail", &second),
            OWNER,
            &fixture.snapshots,
        )
        .unwrap();
    fixture.snapshots.set_state(&second, SnapshotState::Error);
    let failed = fixture
        .store
        .refresh_state(&failing.image_id, &fixture.snapshots)
        .unwrap();
    assert_eq!(failed.state, ImageState::Failed);
    assert!(failed.state_reason.unwrap().message.contains(&second));
}

#[test]
fn deregister_keeps_snapshots_and_frees_the_name() {
    let fixture = fixture();
    let image = fixture.register("short-lived", OWNER);
    let snapshots_before = fixture.snapshots.count();
    assert_eq!(
        fixture
            .store
            .deregister(&image.image_id, OTHER)
            .unwrap_err(),
        Ec2Error::image_not_found(&image.image_id)
    );
    let gone = fixture.store.deregister(&image.image_id, OWNER).unwrap();
    assert_eq!(gone.state, ImageState::Deregistered);
    assert_eq!(gone.snapshot_ids(), image.snapshot_ids());
    assert_eq!(fixture.snapshots.count(), snapshots_before);
    assert_eq!(
        fixture
            .describe(json!({"ImageIds": [image.image_id]}), OWNER)
            .unwrap_err()
            .code,
        ErrorCode::InvalidAmiIdNotFound
    );
    assert_eq!(
        fixture
            .store
            .deregister(&image.image_id, OWNER)
            .unwrap_err()
            .code,
        ErrorCode::InvalidAmiIdNotFound
    );
    fixture.register("short-lived", OWNER);
}

#[test]
fn corrupt_manifests_are_skipped_by_describe() {
    let fixture = fixture();
    fixture.register("good", OWNER);
    let bad = std::path::Path::new(&fixture.location).join("images/ami-0123456789abcdef0.json");
    std::fs::write(&bad, b"{not json").unwrap();
    assert_eq!(fixture.describe(json!({}), OWNER).unwrap(), ["good"]);
    assert_eq!(
        fixture.store.get("ami-0123456789abcdef0").unwrap_err().code,
        ErrorCode::InternalError
    );
}

#[path = "copy_tests.rs"]
mod copy_tests;
