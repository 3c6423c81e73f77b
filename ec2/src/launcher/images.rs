//! ImportImage (a raw or qcow2 disk, plus a kernel and ramdisk) and CreateImage (from
//! an instance's volumes).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::{LaunchState, Launcher, ZONE};
use crate::error::{Ec2Error, ErrorCode};
use crate::ids::{new_id, ResourceKind};
use crate::images::{BlockDeviceMapping, EbsBlockDevice, Image, RegisterImageRequest};
use crate::instances::{Action, InstanceStateName};

#[derive(Debug, Clone, Default)]
pub struct ImportRequest {
    pub disk: std::path::PathBuf,
    /// `raw` or `qcow2` (`None`: detected by qemu-img).
    pub format: Option<String>,
    /// None: the image boots from its root volume's /boot (boot_volume.rs).
    pub kernel: Option<std::path::PathBuf>,
    pub ramdisk: Option<std::path::PathBuf>,
    pub kernel_parameters: String,
    pub name: String,
    pub description: Option<String>,
    pub root_device_name: String,
    pub encrypted: bool,
    pub kms_key_id: Option<String>,
    pub progress: bool,
}

fn qemu_img_info(disk: &Path) -> Result<(String, u64), Ec2Error> {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(disk)
        .output()
        .map_err(|e| {
            Ec2Error::internal(format!("qemu-img (scripts/setup/ebs.sh installs it): {e}"))
        })?;
    if !out.status.success() {
        return Err(Ec2Error::new(
            ErrorCode::InvalidParameterValue,
            format!(
                "The disk {} cannot be read: {}",
                disk.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let info: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Ec2Error::internal(format!("qemu-img info: {e}")))?;
    let format = info["format"].as_str().unwrap_or("raw").to_string();
    let size = info["virtual-size"].as_u64().unwrap_or(0);
    Ok((format, size))
}

impl Launcher {
    /// Copy the disk into a new volume, snapshot it, register the AMI.
    pub fn import_image(&self, request: &ImportRequest) -> Result<Value, Ec2Error> {
        crate::images::validate_image_name(&request.name)?;
        let (detected, size) = qemu_img_info(&request.disk)?;
        let format = request.format.clone().unwrap_or(detected.clone());
        if !["raw", "qcow2"].contains(&format.as_str()) || format != detected {
            return Err(Ec2Error::new(
                ErrorCode::InvalidParameterValue,
                format!("Disk format {format} is not supported or does not match the file ({detected}); use raw or qcow2"),
            ));
        }
        let gib = size.div_ceil(1 << 30).max(1);
        let mut body = json!({"AvailabilityZone": ZONE, "Size": gib, "VolumeType": "gp3"});
        if request.encrypted {
            body["Encrypted"] = json!(true);
            if let Some(key) = &request.kms_key_id {
                body["KmsKeyId"] = json!(key);
            }
        }
        let task_id = format!("import-ami-{}", &new_id(ResourceKind::Image)[4..]);
        let volume = self.ebs().create_volume(&body)?;
        let result = self.fill_and_snapshot(&volume, &task_id, request, &format);
        let _ = self.ebs().detach(&volume);
        let _ = self.ebs().delete_volume(&volume);
        let snapshot = result?;
        let kernel_id = match &request.kernel {
            Some(file) => Some(
                self.kernels()
                    .put_kernel(file, &request.kernel_parameters)?
                    .kernel_id,
            ),
            None => None,
        };
        let ramdisk = match &request.ramdisk {
            Some(file) => Some(self.kernels().put_ramdisk(file)?),
            None => None,
        };
        let register = RegisterImageRequest {
            name: Some(request.name.clone()),
            description: request.description.clone(),
            architecture: Some("x86_64".into()),
            root_device_name: Some(request.root_device_name.clone()),
            block_device_mappings: vec![BlockDeviceMapping {
                device_name: request.root_device_name.clone(),
                ebs: Some(EbsBlockDevice {
                    snapshot_id: Some(snapshot.clone()),
                    volume_size: Some(gib),
                    volume_type: Some("gp3".into()),
                    delete_on_termination: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            kernel_id: kernel_id.clone(),
            ramdisk_id: ramdisk.clone(),
            ena_support: Some(true),
            imds_support: Some("v2.0".into()),
            ..Default::default()
        };
        let image = self
            .images()
            .register(&register, &self.account, &self.snapshot_ops())?;
        Ok(json!({
            "ImportTaskId": task_id,
            "ImageId": image.image_id,
            "Status": "completed",
            "Architecture": "x86_64",
            "KernelId": kernel_id,
            "RamdiskId": ramdisk,
            "SnapshotDetails": [{"DiskImageSize": size, "Format": format.to_uppercase(),
                                 "SnapshotId": snapshot, "Status": "completed",
                                 "UserBucket": {}, "DeviceName": request.root_device_name}],
        }))
    }

    fn fill_and_snapshot(
        &self,
        volume: &str,
        task_id: &str,
        request: &ImportRequest,
        format: &str,
    ) -> Result<String, Ec2Error> {
        let export = self
            .ebs()
            .attach(volume, &new_id(ResourceKind::Instance), "/dev/sdf")?;
        // qemu-img writes straight into the volume through its NBD export.
        let target = format!(
            "nbd+unix:///{export}?socket={}",
            self.ebs().nbd_socket().display()
        );
        let mut child = Command::new("qemu-img")
            .args(["convert", "-p", "-n", "-f", format, "-O", "raw"])
            .arg(&request.disk)
            .arg(&target)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Ec2Error::internal(format!("qemu-img convert: {e}")))?;
        let bar = request.progress.then(|| {
            let bar = indicatif::ProgressBar::new(100);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}%")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(format!("{task_id}: copying"));
            bar
        });
        if let Some(stdout) = child.stdout.take() {
            // qemu-img -p prints "    (12.34/100%)" with carriage returns.
            for chunk in BufReader::new(stdout).split(b'\r').map_while(Result::ok) {
                let text = String::from_utf8_lossy(&chunk);
                if let Some(pct) = text
                    .trim()
                    .strip_prefix('(')
                    .and_then(|t| t.split('/').next())
                    .and_then(|t| t.parse::<f64>().ok())
                {
                    if let Some(bar) = &bar {
                        bar.set_position(pct as u64);
                    }
                }
            }
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Ec2Error::internal(format!("qemu-img convert: {e}")))?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        if !out.status.success() {
            return Err(Ec2Error::internal(format!(
                "copying {} into {volume}: {}",
                request.disk.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        self.ebs().detach(volume)?;
        self.ebs()
            .snapshot(volume, &format!("Created by {task_id}"))
    }

    /// CreateImage: snapshots of every EBS volume of the instance. Unless `no_reboot`,
    /// a running instance is stopped cleanly first and started again afterwards.
    pub fn create_image(
        &self,
        instance_id: &str,
        name: &str,
        description: Option<&str>,
        no_reboot: bool,
    ) -> Result<Value, Ec2Error> {
        crate::images::validate_image_name(name)?;
        let record = self.instances().get(instance_id)?;
        let was_running = record.state() == InstanceStateName::Running;
        if !matches!(
            record.state(),
            InstanceStateName::Running | InstanceStateName::Stopped
        ) {
            return Err(Ec2Error::new(
                ErrorCode::IncorrectInstanceState,
                format!("The instance '{instance_id}' is not in the 'running' or 'stopped' state."),
            ));
        }
        let ids = [instance_id.to_string()];
        if was_running && !no_reboot {
            self.change_state(&ids, Action::Stop, false)?;
            self.wait_for(&ids, InstanceStateName::Stopped, Duration::from_secs(180))?;
        }
        let result = self.snapshot_into_image(instance_id, name, description);
        if was_running && !no_reboot {
            self.change_state(&ids, Action::Start, false)?;
        }
        result
    }

    fn snapshot_into_image(
        &self,
        instance_id: &str,
        name: &str,
        description: Option<&str>,
    ) -> Result<Value, Ec2Error> {
        let record = self.instances().get(instance_id)?;
        let state = LaunchState::of(&record)?;
        let source: Image = self.images().get(&record.instance.image_id)?.image;
        let mut mappings = Vec::new();
        for volume in &state.volumes {
            let info = self
                .ebs()
                .call("DescribeVolumes", &json!({"VolumeIds": [volume.volume_id]}))?;
            let v = &info["Volumes"][0];
            let snapshot = self.ebs().snapshot(
                &volume.volume_id,
                &format!("Created by CreateImage({instance_id})"),
            )?;
            mappings.push(BlockDeviceMapping {
                device_name: volume.device_name.clone(),
                ebs: Some(EbsBlockDevice {
                    snapshot_id: Some(snapshot),
                    volume_size: v["Size"].as_u64(),
                    volume_type: v["VolumeType"].as_str().map(str::to_string),
                    delete_on_termination: Some(volume.delete_on_termination),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        let register = RegisterImageRequest {
            name: Some(name.to_string()),
            description: description.map(str::to_string),
            architecture: Some(source.architecture.clone()),
            root_device_name: Some(source.root_device_name.clone()),
            block_device_mappings: mappings,
            // An instance that booted from its root volume's /boot makes an image
            // that does too (the kernel travels inside the root snapshot).
            kernel_id: (!state.boot_from_volume).then(|| state.kernel_id.clone()),
            ramdisk_id: state.ramdisk_id.clone(),
            ena_support: Some(source.ena_support),
            imds_support: source.imds_support.clone(),
            ..Default::default()
        };
        let image = self
            .images()
            .register(&register, &self.account, &self.snapshot_ops())?;
        Ok(json!({"ImageId": image.image_id}))
    }
}
