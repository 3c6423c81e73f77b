//! Images against a real `ebsd`: `EbsdSnapshots` (the real `SnapshotOps`) describes,
//! copies and deletes snapshots over ebsd's API socket, and the image store keeps its
//! manifests in the same object store directory as ebsd's snapshots.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ebs_blockdev::api::client::{ApiClient, ApiTarget};
use ec2::error::ErrorCode;
use ec2::images::{
    BlockDeviceMapping, CopyImageRequest, EbsBlockDevice, EbsdSnapshots, ImageState, ImageStore,
    RegisterImageRequest, SnapshotOps, SnapshotState,
};
use serde_json::json;

const OWNER: &str = ec2::ids::LOCAL_ACCOUNT_ID;

/// Builds ebs-blockdev's `ebsd` into this test's target directory (the way the
/// workspace's `tests` crate does) and returns its path.
fn ebsd_binary() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let status = Command::new(cargo)
        .args(["build", "-p", "ebs-blockdev", "--bin", "ebsd"])
        .current_dir(root)
        .status()
        .expect("run cargo build");
    assert!(status.success(), "building ebsd failed");
    let exe = std::env::current_exe().expect("test executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("ebsd")
}

struct Ebsd {
    child: Child,
    api: PathBuf,
    objects: PathBuf,
}

impl Ebsd {
    fn start(dir: &Path) -> Ebsd {
        let data = dir.join("data");
        let api = dir.join("api.sock");
        let child = Command::new(ebsd_binary())
            .arg("serve")
            .arg("--data-dir")
            .arg(&data)
            .arg("--nbd-listen")
            .arg(format!("unix:{}", dir.join("nbd.sock").display()))
            .arg("--api-sock")
            .arg(&api)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("start ebsd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&api).is_err() {
            assert!(
                Instant::now() < deadline,
                "ebsd did not open its API socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ebsd {
            child,
            api,
            objects: data.join("objects"),
        }
    }

    fn client(&self) -> ApiClient {
        ApiClient::new(ApiTarget::Unix(self.api.clone()))
    }

    fn ops(&self) -> EbsdSnapshots {
        EbsdSnapshots::new(ApiTarget::Unix(self.api.clone()))
    }

    /// A completed snapshot of a new `size_gib` volume.
    fn snapshot(&self, size_gib: u64) -> String {
        let client = self.client();
        let volume = client
            .call(
                "CreateVolume",
                &json!({"AvailabilityZone": "local-1a", "Size": size_gib, "VolumeType": "gp3"}),
            )
            .expect("CreateVolume");
        let volume_id = volume["VolumeId"].as_str().expect("VolumeId");
        let snapshot = client
            .call("CreateSnapshot", &json!({"VolumeId": volume_id}))
            .expect("CreateSnapshot");
        let snapshot_id = snapshot["SnapshotId"]
            .as_str()
            .expect("SnapshotId")
            .to_string();
        self.wait_completed(&snapshot_id);
        snapshot_id
    }

    fn wait_completed(&self, snapshot_id: &str) {
        let ops = self.ops();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let snapshot = ops
                .describe_snapshot(snapshot_id)
                .unwrap()
                .expect("snapshot exists");
            match snapshot.state {
                SnapshotState::Completed => return,
                SnapshotState::Error => panic!("snapshot {snapshot_id} failed"),
                SnapshotState::Pending => {}
            }
            assert!(
                Instant::now() < deadline,
                "snapshot {snapshot_id} did not complete"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Ebsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn register_request(name: &str, root_snapshot: &str, size: Option<u64>) -> RegisterImageRequest {
    RegisterImageRequest {
        name: Some(name.into()),
        root_device_name: Some("/dev/xvda".into()),
        block_device_mappings: vec![BlockDeviceMapping {
            device_name: "/dev/xvda".into(),
            ebs: Some(EbsBlockDevice {
                snapshot_id: Some(root_snapshot.into()),
                volume_size: size,
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn images_over_a_real_ebsd() {
    let dir = tempfile::tempdir().unwrap();
    let ebsd = Ebsd::start(dir.path());
    let ops = ebsd.ops();
    let store = ImageStore::open(&ebsd.objects.display().to_string()).unwrap();

    assert!(ops
        .describe_snapshot("snap-0123456789abcdef0")
        .unwrap()
        .is_none());
    let root = ebsd.snapshot(2);
    let described = ops.describe_snapshot(&root).unwrap().unwrap();
    assert_eq!((described.volume_size, described.encrypted), (2, false));

    // RegisterImage checks sizes against the real snapshot.
    let error = store
        .register(&register_request("too-small", &root, Some(1)), OWNER, &ops)
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidBlockDeviceMapping);
    let image = store
        .register(&register_request("base-image", &root, None), OWNER, &ops)
        .unwrap();
    assert_eq!(image.state, ImageState::Available);
    let root_ebs = image.root_mapping().unwrap().ebs.clone().unwrap();
    assert_eq!(root_ebs.volume_size, Some(2));
    // The manifest lives beside ebsd's snapshots, in the same object store.
    assert!(ebsd
        .objects
        .join("images")
        .join(format!("{}.json", image.image_id))
        .is_file());
    assert!(ebsd.objects.join("snapshots").is_dir());

    // An encrypted copy with ebsd's default key: new, encrypted, completed snapshots.
    let copy_request: CopyImageRequest = serde_json::from_value(json!({
        "SourceImageId": image.image_id, "Name": "base-image-encrypted",
        "Encrypted": true, "KmsKeyId": "alias/aws/ebs"
    }))
    .unwrap();
    let encrypted = store.copy_image(&copy_request, OWNER, &ops).unwrap();
    let copied_snapshot = encrypted.snapshot_ids()[0].clone();
    assert_ne!(copied_snapshot, root);
    ebsd.wait_completed(&copied_snapshot);
    let copy = ops.describe_snapshot(&copied_snapshot).unwrap().unwrap();
    assert!(copy.encrypted);
    assert!(copy.description.contains(&encrypted.image_id));
    assert_eq!(
        store
            .refresh_state(&encrypted.image_id, &ops)
            .unwrap()
            .state,
        ImageState::Available
    );

    // Encrypted -> unencrypted is refused before ebsd is asked.
    let back: CopyImageRequest = serde_json::from_value(json!({
        "SourceImageId": encrypted.image_id, "Name": "decrypted", "Encrypted": false
    }))
    .unwrap();
    assert_eq!(
        store.copy_image(&back, OWNER, &ops).unwrap_err().code,
        ErrorCode::InvalidParameterCombination
    );

    // ebsd's own refusal (an unknown key) comes back with its EC2 code, and the half
    // made image is gone.
    let bad_key: CopyImageRequest = serde_json::from_value(json!({
        "SourceImageId": image.image_id, "Name": "bad-key",
        "Encrypted": true, "KmsKeyId": "mrk-doesnotexist"
    }))
    .unwrap();
    let error = store.copy_image(&bad_key, OWNER, &ops).unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidParameterValue, "{error}");
    let names: Vec<String> = store
        .describe(&Default::default(), OWNER)
        .unwrap()
        .into_iter()
        .map(|image| image.name)
        .collect();
    assert!(!names.contains(&"bad-key".to_string()), "{names:?}");

    // Deregistering keeps the snapshots in ebsd; deleting one works through the trait.
    store.deregister(&encrypted.image_id, OWNER).unwrap();
    assert!(ops.describe_snapshot(&copied_snapshot).unwrap().is_some());
    ops.delete_snapshot(&copied_snapshot).unwrap();
    assert!(ops.describe_snapshot(&copied_snapshot).unwrap().is_none());
    assert_eq!(
        ops.delete_snapshot(&copied_snapshot).unwrap_err().code,
        ErrorCode::InvalidSnapshotNotFound
    );
}
