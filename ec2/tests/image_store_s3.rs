//! The image store on an S3-compatible object store (moto, from the venv that
//! scripts/setup/ebs.sh makes), configured exactly as ebsd's snapshot store is:
//! `s3://bucket/prefix` plus the AWS_* environment.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ec2::error::{Ec2Error, ErrorCode};
use ec2::images::{
    BlockDeviceMapping, EbsBlockDevice, ImageStore, RegisterImageRequest, Snapshot,
    SnapshotCopyRequest, SnapshotOps,
};
use serde_json::json;

const OWNER: &str = "111122223333";
const SNAPSHOT: &str = "snap-0123456789abcdef0";

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_moto() -> (Moto, u16) {
    let venv = std::env::var_os("EBS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache/venv-ebs"));
    let server = venv.join("bin/moto_server");
    assert!(
        server.exists(),
        "{} is missing: run scripts/setup/ebs.sh to install the S3 test server",
        server.display()
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto_server");
    let moto = Moto(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    // CreateBucket with a bare PUT (moto does not check signatures).
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "PUT /images HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.contains(" 200 "), "{response}");
    (moto, port)
}

/// One completed 8 GiB snapshot.
struct OneSnapshot;

impl SnapshotOps for OneSnapshot {
    fn describe_snapshot(&self, snapshot_id: &str) -> Result<Option<Snapshot>, Ec2Error> {
        if snapshot_id != SNAPSHOT {
            return Ok(None);
        }
        Ok(Some(
            serde_json::from_value(json!({
                "SnapshotId": SNAPSHOT, "VolumeId": "", "VolumeSize": 8, "State": "completed",
                "StartTime": "", "Progress": "100%", "Description": "", "Encrypted": false,
                "OwnerId": OWNER,
            }))
            .unwrap(),
        ))
    }

    fn copy_snapshot(&self, _: &SnapshotCopyRequest) -> Result<Snapshot, Ec2Error> {
        Err(Ec2Error::internal("not in this test"))
    }

    fn delete_snapshot(&self, _: &str) -> Result<(), Ec2Error> {
        Ok(())
    }
}

#[test]
fn image_manifests_round_trip_through_s3() {
    let (_moto, port) = start_moto();
    // This test binary has this one test, so setting the process environment is safe.
    for (name, value) in [
        ("AWS_ENDPOINT", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false".into()),
    ] {
        std::env::set_var(name, value);
    }
    let location = "s3://images/region-1";
    let store = ImageStore::open(location).unwrap();
    let request = RegisterImageRequest {
        name: Some("in-the-bucket".into()),
        root_device_name: Some("/dev/xvda".into()),
        block_device_mappings: vec![BlockDeviceMapping {
            device_name: "/dev/xvda".into(),
            ebs: Some(EbsBlockDevice {
                snapshot_id: Some(SNAPSHOT.into()),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let image = store.register(&request, OWNER, &OneSnapshot).unwrap();
    store
        .modify_attribute(
            &serde_json::from_value(json!({"ImageId": image.image_id,
                "LaunchPermission": {"Add": [{"Group": "all"}]}}))
            .unwrap(),
            OWNER,
        )
        .unwrap();

    let reopened = ImageStore::open(location).unwrap();
    let record = reopened.get(&image.image_id).unwrap();
    assert!(record.launch_permissions.public && record.image.public);
    let seen = reopened
        .describe(&Default::default(), "444455556666")
        .unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].name, "in-the-bucket");
    assert_eq!(
        reopened
            .register(&request, OWNER, &OneSnapshot)
            .unwrap_err()
            .code,
        ErrorCode::InvalidAmiNameDuplicate
    );
    reopened.deregister(&image.image_id, OWNER).unwrap();
    assert!(store
        .describe(&Default::default(), OWNER)
        .unwrap()
        .is_empty());
}
