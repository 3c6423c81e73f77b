//! Hibernation (`stop-instances --hibernate`, then `start-instances`): the VMM is
//! paused and snapshotted (vCPU, device and memory state: docs/snapshot.md), the
//! snapshot goes to an encrypted EBS volume, and the next start restores it, so the
//! guest continues where it was (its processes and uptime).
//!
//! EC2 writes the RAM into the (encrypted) root volume itself, through the guest's own
//! hibernation agent. Here the VMM takes the snapshot without the guest's help, so the
//! root file system is never touched: the image goes to a separate "hibernation volume"
//! with the root volume's encryption (the launch check still requires an encrypted root
//! big enough for RAM, as EC2's), attached to the instance while it is stopped and
//! deleted after a successful resume.
//!
//! Volume layout: a 1 MiB header block (JSON: lengths and CRC32 of the state) and the
//! state file, then the memory image from 1 MiB on; all-zero memory stays unwritten
//! (qemu-img writes zeroes as NBD WRITE_ZEROES, which the block service frees).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::paths::io_error;
use super::services::BlockService;
use super::{LaunchState, Launcher, ZONE};
use crate::error::Ec2Error;

const HEADER_BYTES: u64 = 1 << 20;
/// The hibernation volume is attached as this device while the instance is stopped.
const DEVICE: &str = "/dev/sdz";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Header {
    magic: String,
    state_bytes: u64,
    state_crc32: u32,
    memory_bytes: u64,
}

const MAGIC: &str = "nitro-hibernation/1";

/// The files of a hibernated instance in its run directory.
pub fn state_file(run: &Path) -> PathBuf {
    run.join("hibernation.state")
}

pub fn memory_file(run: &Path) -> PathBuf {
    run.join("hibernation.mem")
}

fn crc32(bytes: &[u8]) -> u32 {
    // CRC-32 (IEEE), bitwise: the state is small (tens of KiB).
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Copy `from` into `to` at `offset`, leaving holes where `from` has them.
fn copy_sparse(
    from: &mut File,
    to: &mut File,
    from_start: u64,
    len: u64,
    to_start: u64,
) -> std::io::Result<()> {
    let mut pos = from_start;
    let end = from_start + len;
    let mut buf = vec![0u8; 1 << 20];
    while pos < end {
        // SAFETY: lseek on an fd we own.
        let data = unsafe { libc::lseek(from.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 || data as u64 >= end {
            break; // the rest is a hole
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(from.as_raw_fd(), data as libc::off_t, libc::SEEK_HOLE) };
        let stop = if hole < 0 {
            end
        } else {
            (hole as u64).min(end)
        };
        let mut at = data as u64;
        from.seek(SeekFrom::Start(at))?;
        while at < stop {
            let n = ((stop - at) as usize).min(buf.len());
            from.read_exact(&mut buf[..n])?;
            to.seek(SeekFrom::Start(to_start + (at - from_start)))?;
            to.write_all(&buf[..n])?;
            at += n as u64;
        }
        pos = stop;
    }
    Ok(())
}

/// Pack state + memory into one sparse image file (the volume's content).
fn pack(state: &Path, memory: &Path, image: &Path) -> Result<u64, Ec2Error> {
    let state_bytes = std::fs::read(state).map_err(|e| io_error(state, e))?;
    let mut mem = File::open(memory).map_err(|e| io_error(memory, e))?;
    let memory_bytes = mem.metadata().map_err(|e| io_error(memory, e))?.len();
    let header = Header {
        magic: MAGIC.into(),
        state_bytes: state_bytes.len() as u64,
        state_crc32: crc32(&state_bytes),
        memory_bytes,
    };
    let mut head = serde_json::to_vec(&header).map_err(|e| Ec2Error::internal(e.to_string()))?;
    head.push(b'\n');
    if (head.len() + state_bytes.len()) as u64 > HEADER_BYTES {
        return Err(Ec2Error::internal(
            "hibernation state larger than its 1 MiB slot",
        ));
    }
    let mut out = File::create(image).map_err(|e| io_error(image, e))?;
    let total = HEADER_BYTES + memory_bytes;
    out.set_len(total).map_err(|e| io_error(image, e))?;
    out.write_all(&head).map_err(|e| io_error(image, e))?;
    out.write_all(&state_bytes)
        .map_err(|e| io_error(image, e))?;
    copy_sparse(&mut mem, &mut out, 0, memory_bytes, HEADER_BYTES)
        .map_err(|e| io_error(image, e))?;
    Ok(total)
}

/// Split the volume's image back into the state and memory files.
fn unpack(image: &Path, state: &Path, memory: &Path) -> Result<(), Ec2Error> {
    let mut input = File::open(image).map_err(|e| io_error(image, e))?;
    let mut first = vec![0u8; HEADER_BYTES as usize];
    input
        .read_exact(&mut first)
        .map_err(|e| io_error(image, e))?;
    let newline = first
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| Ec2Error::internal("hibernation volume has no header"))?;
    let header: Header = serde_json::from_slice(&first[..newline])
        .map_err(|e| Ec2Error::internal(format!("hibernation header: {e}")))?;
    let start = newline + 1;
    let end = start + header.state_bytes as usize;
    if header.magic != MAGIC || end > first.len() || crc32(&first[start..end]) != header.state_crc32
    {
        return Err(Ec2Error::internal(
            "hibernation volume is damaged (header or state checksum)",
        ));
    }
    std::fs::write(state, &first[start..end]).map_err(|e| io_error(state, e))?;
    let mut out = File::create(memory).map_err(|e| io_error(memory, e))?;
    out.set_len(header.memory_bytes)
        .map_err(|e| io_error(memory, e))?;
    copy_sparse(&mut input, &mut out, HEADER_BYTES, header.memory_bytes, 0)
        .map_err(|e| io_error(memory, e))?;
    out.sync_all().map_err(|e| io_error(memory, e))
}

fn qemu_img_convert(from: &str, to: &str, create: bool) -> Result<(), Ec2Error> {
    let mut command = Command::new("qemu-img");
    command.args(["convert", "-f", "raw", "-O", "raw"]);
    if !create {
        command.arg("-n");
    }
    let out = command
        .arg(from)
        .arg(to)
        .output()
        .map_err(|e| Ec2Error::internal(format!("qemu-img: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Ec2Error::internal(format!(
            "qemu-img convert {from} -> {to}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn nbd_url(ebs: &BlockService, export: &str) -> String {
    format!("nbd+unix:///{export}?socket={}", ebs.nbd_socket().display())
}

impl Launcher {
    /// Pause and snapshot the instance's VMM and store the snapshot on a new encrypted
    /// volume; the caller then stops the VMM. Returns the volume id.
    pub(super) fn hibernate_vmm(&self, id: &str, state: &LaunchState) -> Result<String, Ec2Error> {
        let run = self.paths.run_dir(id);
        let (snap, mem) = (state_file(&run), memory_file(&run));
        self.vmm_call(id, "PATCH", "/vm", &json!({"state": "Paused"}))?;
        self.vmm_call(
            id,
            "PUT",
            "/snapshot/create",
            &json!({"snapshot_path": snap, "mem_file_path": mem}),
        )?;
        let image = run.join("hibernation.img");
        let total = pack(&snap, &mem, &image)?;
        let root = state
            .volumes
            .first()
            .ok_or_else(|| Ec2Error::internal("no root volume"))?;
        let info = self
            .ebs()
            .call("DescribeVolumes", &json!({"VolumeIds": [root.volume_id]}))?;
        let mut body = json!({
            "AvailabilityZone": ZONE,
            "Size": total.div_ceil(1 << 30),
            "VolumeType": "gp3",
            "Encrypted": true,
        });
        if let Some(key) = info["Volumes"][0]["KmsKeyId"].as_str() {
            body["KmsKeyId"] = json!(key);
        }
        let volume = self.ebs().create_volume(&body)?;
        let export = self.ebs().attach(&volume, id, DEVICE)?;
        let copied = qemu_img_convert(
            &image.to_string_lossy(),
            &nbd_url(self.ebs(), &export),
            false,
        );
        for f in [&image, &snap, &mem] {
            let _ = std::fs::remove_file(f);
        }
        if let Err(e) = copied {
            let _ = self.ebs().detach(&volume);
            let _ = self.ebs().delete_volume(&volume);
            return Err(e);
        }
        Ok(volume)
    }

    /// PUT/PATCH on the instance's VMM API.
    pub(super) fn vmm_call(
        &self,
        id: &str,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(), Ec2Error> {
        let sock = self.paths.run_dir(id).join("vmm.sock");
        let client = ebs_blockdev::api::client::ApiClient::new(
            ebs_blockdev::api::client::ApiTarget::Unix(sock),
        );
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        match client.request(method, path, &bytes) {
            Ok((status, _)) if status < 300 => Ok(()),
            Ok((status, reply)) => Err(Ec2Error::internal(format!(
                "vmm of {id}: {method} {path}: {status} {}",
                String::from_utf8_lossy(&reply)
            ))),
            Err(e) => Err(Ec2Error::internal(format!("vmm of {id}: {e}"))),
        }
    }
}

/// Fetch the hibernation image back into the run directory (state and memory files)
/// for `vmm --restore`. The volume stays until the restored VMM runs.
pub fn fetch(
    ebs: &BlockService,
    instance_id: &str,
    volume: &str,
    run: &Path,
) -> Result<(PathBuf, PathBuf), Ec2Error> {
    let reply = ebs.call("DescribeVolumes", &json!({"VolumeIds": [volume]}))?;
    let attachments = reply["Volumes"][0]["Attachments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !attachments.is_empty() {
        ebs.detach(volume)?;
    }
    let export = ebs.attach(volume, instance_id, DEVICE)?;
    let image = run.join("hibernation.img");
    qemu_img_convert(&nbd_url(ebs, &export), &image.to_string_lossy(), true)?;
    let (snap, mem) = (state_file(run), memory_file(run));
    let unpacked = unpack(&image, &snap, &mem);
    let _ = std::fs::remove_file(&image);
    unpacked?;
    ebs.wait_volume(volume, "in-use", Duration::from_secs(30))?;
    Ok((snap, mem))
}

/// The resume worked: the volume is no longer needed.
pub fn discard(ebs: &BlockService, volume: &str) {
    if let Err(e) = ebs.detach(volume).and_then(|()| ebs.delete_volume(volume)) {
        log::warn!("hibernation volume {volume}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_and_unpack_round_trip_keeping_holes() {
        let dir = tempfile::tempdir().unwrap();
        let (state, mem) = (dir.path().join("s"), dir.path().join("m"));
        std::fs::write(&state, b"{\"vcpus\": 1}").unwrap();
        let mut m = File::create(&mem).unwrap();
        m.set_len(8 << 20).unwrap();
        m.seek(SeekFrom::Start(3 << 20)).unwrap();
        m.write_all(&[0xab; 4096]).unwrap();
        drop(m);
        let image = dir.path().join("img");
        assert_eq!(pack(&state, &mem, &image).unwrap(), (1 << 20) + (8 << 20));
        let (s2, m2) = (dir.path().join("s2"), dir.path().join("m2"));
        unpack(&image, &s2, &m2).unwrap();
        assert_eq!(std::fs::read(&s2).unwrap(), b"{\"vcpus\": 1}");
        let back = std::fs::read(&m2).unwrap();
        assert_eq!(back.len(), 8 << 20);
        assert!(back[3 << 20..(3 << 20) + 4096].iter().all(|&b| b == 0xab));
        assert!(back[..3 << 20].iter().all(|&b| b == 0));
        // Holes stay holes: far fewer blocks than the length.
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&m2).unwrap().blocks() * 512 < 1 << 20);

        // A damaged state is refused.
        let mut img = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        let head_len = std::fs::read(&image)
            .unwrap()
            .iter()
            .position(|&b| b == b'\n')
            .unwrap();
        img.seek(SeekFrom::Start(head_len as u64 + 2)).unwrap();
        img.write_all(b"X").unwrap();
        drop(img);
        assert!(unpack(&image, &s2, &m2).is_err());
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
