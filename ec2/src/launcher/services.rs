//! The block service behind the front door: one `ebsd` per state directory, started
//! on demand and left running (like a host's EBS agent), plus the volume calls the
//! launcher makes through its API.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ebs_blockdev::api::client::{ApiClient, ApiTarget};

use crate::images::from_api;
use serde_json::{json, Value};

use super::paths::{io_error, StatePaths};
use crate::error::{Ec2Error, ErrorCode};

/// Where the sibling binaries (`vmm`, `ebsd`) are: next to this executable, or
/// `NITRO_BIN_DIR`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NITRO_BIN_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn sibling(name: &str) -> Result<PathBuf, Ec2Error> {
    let path = bin_dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Ec2Error::internal(format!(
            "{} not found (build it with `cargo build -p {}`, or set NITRO_BIN_DIR)",
            path.display(),
            if name == "vmm" { "vmm" } else { "ebs-blockdev" }
        )))
    }
}

/// The block service's control API, started if it is not running.
pub struct BlockService {
    client: ApiClient,
    nbd_socket: PathBuf,
}

impl BlockService {
    pub fn ensure(paths: &StatePaths) -> Result<BlockService, Ec2Error> {
        let api = paths.ebsd_api();
        let service = BlockService {
            client: ApiClient::new(ApiTarget::Unix(api.clone())),
            nbd_socket: paths.ebsd_nbd(),
        };
        if service.client.call("DescribeVolumes", &json!({})).is_ok() {
            return Ok(service);
        }
        let dir = paths.ebsd_dir();
        std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
        let _ = std::fs::remove_file(&api);
        let _ = std::fs::remove_file(paths.ebsd_nbd());
        let log_path = dir.join("ebsd.log");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_error(&log_path, e))?;
        let err_log = log.try_clone().map_err(|e| io_error(&log_path, e))?;
        let mut command = Command::new(sibling("ebsd")?);
        command
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--snapshot-store")
            .arg(paths.store())
            .arg("--nbd-listen")
            .arg(format!("unix:{}", paths.ebsd_nbd().display()))
            .arg("--api-sock")
            .arg(&api)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log);
        detach(&mut command);
        command
            .spawn()
            .map_err(|e| Ec2Error::internal(format!("starting ebsd: {e}")))?;
        log::info!("started ebsd for {}", paths.root().display());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match service.client.call("DescribeVolumes", &json!({})) {
                Ok(_) => return Ok(service),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => {
                    return Err(Ec2Error::internal(format!(
                        "ebsd did not come up (see {}): {e}",
                        log_path.display()
                    )))
                }
            }
        }
    }

    pub fn target(&self) -> ApiTarget {
        ApiTarget::Unix(self.nbd_socket.with_file_name("api.sock"))
    }

    pub fn nbd_endpoint(&self) -> String {
        format!("unix:{}", self.nbd_socket.display())
    }

    pub fn nbd_socket(&self) -> &Path {
        &self.nbd_socket
    }

    pub fn call(&self, action: &str, body: &Value) -> Result<Value, Ec2Error> {
        self.client.call(action, body).map_err(from_api)
    }

    /// Create a volume and wait until it can be attached.
    pub fn create_volume(&self, request: &Value) -> Result<String, Ec2Error> {
        let reply = self.call("CreateVolume", request)?;
        let id = reply["VolumeId"]
            .as_str()
            .ok_or_else(|| Ec2Error::internal(format!("CreateVolume sent no VolumeId: {reply}")))?
            .to_string();
        self.wait_volume(&id, "available", Duration::from_secs(120))?;
        Ok(id)
    }

    pub fn wait_volume(&self, id: &str, state: &str, limit: Duration) -> Result<(), Ec2Error> {
        let deadline = Instant::now() + limit;
        loop {
            let reply = self.call("DescribeVolumes", &json!({"VolumeIds": [id]}))?;
            let current = reply["Volumes"][0]["State"].as_str().unwrap_or("");
            if current == state {
                return Ok(());
            }
            if current == "error" || Instant::now() > deadline {
                return Err(Ec2Error::internal(format!(
                    "volume {id} is {current}, not {state}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Attach `volume` to `instance`; returns the attachment's NBD export name.
    pub fn attach(&self, volume: &str, instance: &str, device: &str) -> Result<String, Ec2Error> {
        let reply = self.call(
            "AttachVolume",
            &json!({"VolumeId": volume, "InstanceId": instance, "Device": device,
                    "InstanceAvailabilityZone": super::ZONE}),
        )?;
        reply["NbdExport"]["ExportName"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Ec2Error::internal(format!("AttachVolume sent no export: {reply}")))
    }

    pub fn detach(&self, volume: &str) -> Result<(), Ec2Error> {
        match self.call("DetachVolume", &json!({"VolumeId": volume, "Force": true})) {
            Ok(_) => self.wait_volume(volume, "available", Duration::from_secs(60)),
            Err(e) if e.code == ErrorCode::IncorrectState => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn delete_volume(&self, volume: &str) -> Result<(), Ec2Error> {
        self.call("DeleteVolume", &json!({"VolumeId": volume}))
            .map(|_| ())
    }

    /// Snapshot a volume and wait for the upload to finish.
    pub fn snapshot(&self, volume: &str, description: &str) -> Result<String, Ec2Error> {
        let reply = self.call(
            "CreateSnapshot",
            &json!({"VolumeId": volume, "Description": description}),
        )?;
        let id = reply["SnapshotId"]
            .as_str()
            .ok_or_else(|| Ec2Error::internal(format!("CreateSnapshot sent no id: {reply}")))?
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            let reply = self.call("DescribeSnapshots", &json!({"SnapshotIds": [&id]}))?;
            match reply["Snapshots"][0]["State"].as_str().unwrap_or("") {
                "completed" => return Ok(id),
                "error" => {
                    return Err(Ec2Error::internal(format!(
                        "snapshot {id} of {volume} failed"
                    )))
                }
                _ if Instant::now() > deadline => {
                    return Err(Ec2Error::internal(format!(
                        "snapshot {id} is taking too long"
                    )))
                }
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
}

/// Run the child in its own session, so it outlives the CLI and its terminal's signals.
pub fn detach(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
