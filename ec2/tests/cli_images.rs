//! The `ec2` CLI's image verbs on this host (no guest needed): import-image of a
//! qcow2 disk with a kernel and ramdisk, describe-images, copy-image (plain and
//! encrypted: new snapshots, the encrypted copy's snapshot is encrypted, launch
//! permissions not copied), modify/describe-image-attribute, deregister-image (the
//! snapshots stay), and EC2's errors for bad input. The block service starts on
//! demand and is stopped at the end.

use std::path::{Path, PathBuf};
use std::process::Command;

use integration_tests::workspace_bin;
use serde_json::Value;

struct Front {
    ec2: PathBuf,
    ebs: PathBuf,
    state: PathBuf,
}

impl Front {
    fn run(&self, args: &[&str]) -> Result<Value, (String, String)> {
        let out = Command::new(&self.ec2)
            .args(args)
            .env("NITRO_STATE_DIR", &self.state)
            .output()
            .expect("run ec2");
        if out.status.success() {
            Ok(if out.stdout.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&out.stdout).expect("JSON on stdout")
            })
        } else {
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            let code = err
                .lines()
                .next()
                .and_then(|l| serde_json::from_str::<Value>(l).ok())
                .and_then(|v| v["Error"]["Code"].as_str().map(str::to_string))
                .unwrap_or_default();
            Err((code, err))
        }
    }

    fn ok(&self, args: &[&str]) -> Value {
        self.run(args)
            .unwrap_or_else(|(_, e)| panic!("ec2 {args:?} failed: {e}"))
    }

    fn code(&self, args: &[&str]) -> String {
        match self.run(args) {
            Ok(v) => panic!("ec2 {args:?} should fail, got {v}"),
            Err((code, _)) => code,
        }
    }

    fn snapshot(&self, id: &str) -> Value {
        let out = Command::new(&self.ebs)
            .args(["describe-snapshots", "--snapshot-ids", id])
            .env("EBS_API_SOCK", self.state.join("ebsd/api.sock"))
            .output()
            .expect("run ebs");
        let v: Value = serde_json::from_slice(&out.stdout).expect("ebs JSON");
        v["Snapshots"][0].clone()
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        // The block service was started detached for this state directory.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(format!(
                "ebsd serve --data-dir {}",
                self.state.join("ebsd/data").display()
            ))
            .status();
    }
}

fn root_snapshot(image: &Value) -> String {
    image["BlockDeviceMappings"][0]["Ebs"]["SnapshotId"]
        .as_str()
        .expect("snapshot id")
        .to_string()
}

#[test]
fn image_verbs_through_the_cli() {
    let ec2 = workspace_bin("ec2", "ec2");
    let ebs = workspace_bin("ebs-blockdev", "ebs");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli-images");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let front = Front {
        ec2,
        ebs,
        state: dir.join("state"),
    };
    // A qcow2 disk with a pattern, a stand-in kernel and ramdisk.
    let raw = dir.join("disk.raw");
    let mut bytes = vec![0u8; 8 << 20];
    bytes[4096..8192].fill(0x5a);
    std::fs::write(&raw, &bytes).unwrap();
    let qcow = dir.join("disk.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow)
        .status()
        .expect("qemu-img (scripts/setup/ebs.sh installs it)");
    assert!(st.success());
    let kernel = dir.join("kernel");
    std::fs::write(&kernel, b"not really a kernel").unwrap();
    let url = format!("Format=qcow2,Url=file://{}", qcow.display());
    let k = kernel.to_string_lossy().into_owned();

    let imported = front.ok(&[
        "import-image",
        "--disk-containers",
        &url,
        "--kernel-file",
        &k,
        "--name",
        "imported-one",
    ]);
    let ami = imported["ImageId"].as_str().expect("ImageId").to_string();
    assert!(ami.starts_with("ami-"), "{imported}");
    assert_eq!(imported["Status"], "completed");
    let images = front.ok(&["describe-images", "--image-ids", &ami]);
    let image = &images["Images"][0];
    assert_eq!(image["Name"], "imported-one");
    assert_eq!(image["State"], "available");
    assert_eq!(image["ImdsSupport"], "v2.0");
    let snap = root_snapshot(image);
    // One filter value in shorthand, as scripts/lib/front-door-session.sh uses it.
    let by_filter = front.ok(&[
        "describe-images",
        "--owners",
        "self",
        "--filters",
        "Name=name,Values=imported-one",
    ]);
    assert_eq!(by_filter["Images"][0]["ImageId"], ami.as_str());
    assert_eq!(front.snapshot(&snap)["State"], "completed");

    // Copies: new snapshots; the encrypted one is encrypted; permissions stay behind.
    front.ok(&[
        "modify-image-attribute",
        "--image-id",
        &ami,
        "--launch-permission",
        "Add=[{UserId=111122223333}]",
    ]);
    let plain = front.ok(&[
        "copy-image",
        "--source-image-id",
        &ami,
        "--name",
        "plain-copy",
    ])["ImageId"]
        .as_str()
        .unwrap()
        .to_string();
    let secret = front.ok(&[
        "copy-image",
        "--source-image-id",
        &ami,
        "--name",
        "secret-copy",
        "--encrypted",
    ])["ImageId"]
        .as_str()
        .unwrap()
        .to_string();
    let copies = front.ok(&["describe-images", "--image-ids", &plain, &secret]);
    let by_name = |name: &str| {
        copies["Images"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["Name"] == name)
            .cloned()
            .expect(name)
    };
    let (plain_img, secret_img) = (by_name("plain-copy"), by_name("secret-copy"));
    assert_ne!(
        root_snapshot(&plain_img),
        snap,
        "a copy has its own snapshot"
    );
    assert_eq!(
        front.snapshot(&root_snapshot(&plain_img))["Encrypted"],
        false
    );
    assert_eq!(
        front.snapshot(&root_snapshot(&secret_img))["Encrypted"],
        true
    );
    let perms = front.ok(&[
        "describe-image-attribute",
        "--image-id",
        &plain,
        "--attribute",
        "launchPermission",
    ]);
    assert_eq!(
        perms["LaunchPermissions"].as_array().map(Vec::len),
        Some(0),
        "launch permissions are not copied: {perms}"
    );
    let source_perms = front.ok(&[
        "describe-image-attribute",
        "--image-id",
        &ami,
        "--attribute",
        "launchPermission",
    ]);
    assert_eq!(
        source_perms["LaunchPermissions"][0]["UserId"],
        "111122223333"
    );

    // Errors.
    assert_eq!(
        front.code(&["describe-images", "--image-ids", "ami-bogus"]),
        "InvalidAMIID.Malformed"
    );
    assert_eq!(
        front.code(&[
            "copy-image",
            "--source-image-id",
            "ami-0123456789abcdef0",
            "--name",
            "x-copy"
        ]),
        "InvalidAMIID.NotFound"
    );
    assert_eq!(
        front.code(&[
            "copy-image",
            "--source-image-id",
            &ami,
            "--name",
            "plain-copy"
        ]),
        "InvalidAMIName.Duplicate"
    );
    assert_eq!(
        front.code(&[
            "import-image",
            "--disk-containers",
            &url,
            "--kernel-file",
            &k,
            "--name",
            "x"
        ]),
        "InvalidAMIName.Malformed"
    );
    let missing = format!("Format=raw,Url=file://{}/nope.raw", dir.display());
    assert_eq!(
        front.code(&[
            "import-image",
            "--disk-containers",
            &missing,
            "--kernel-file",
            &k,
            "--name",
            "missing-disk"
        ]),
        "InvalidParameterValue"
    );
    assert_eq!(
        front.code(&["describe-instance-types", "--instance-types", "t3.gigantic"]),
        "InvalidParameterValue"
    );

    // Deregister keeps the snapshot.
    front.ok(&["deregister-image", "--image-id", &ami]);
    assert_eq!(
        front.code(&["describe-images", "--image-ids", &ami]),
        "InvalidAMIID.NotFound"
    );
    assert_eq!(front.snapshot(&snap)["State"], "completed");
}
