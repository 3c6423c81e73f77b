//! Images that boot "from the root volume's /boot" (no KernelId): before each VMM
//! start the supervisor takes the kernel, the initrd and the command line from the
//! instance's own root volume, so a kernel the guest installed (apt upgrade, a custom
//! build) is the one that boots next time, as with EC2's PV-GRUB / HVM boot loader.
//!
//! How: the root volume is copied sparsely out of its NBD export (`qemu-img convert`
//! reads only allocated blocks) into the run directory, and e2fsprogs' `debugfs` reads
//! the ext2/3/4 file system in it (the whole disk, or the partition holding /boot when
//! the disk is partitioned). The newest `/boot/vmlinuz-VERSION` boots with its
//! `/boot/initrd.img-VERSION` when present; the command line is `/etc/kernel/cmdline`
//! (kernel-install's convention) or `console=ttyS0 root=<root device> rw`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{Ec2Error, ErrorCode};

/// What one VMM start boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub version: String,
}

fn unbootable(message: String) -> Ec2Error {
    Ec2Error::new(ErrorCode::InvalidParameterValue, message)
}

fn run(command: &mut Command, what: &str) -> Result<String, Ec2Error> {
    let out = command
        .output()
        .map_err(|e| Ec2Error::internal(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(Ec2Error::internal(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Copy the volume behind `nbd_uri` into `work` and take its boot files.
pub fn extract(nbd_uri: &str, work: &Path, root_device: &str) -> Result<BootFiles, Ec2Error> {
    std::fs::create_dir_all(work).map_err(|e| super::paths::io_error(work, e))?;
    let disk = work.join("root.raw");
    let _ = std::fs::remove_file(&disk);
    run(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", nbd_uri])
            .arg(&disk),
        "qemu-img convert (root volume)",
    )?;
    let result = extract_from_disk(&disk, work, root_device);
    // The copy is only needed while the files are read out.
    let _ = std::fs::remove_file(&disk);
    result
}

/// The file system's location in `disk`: the whole disk, or `disk?offset=N` for the
/// partition that holds /boot (e2fsprogs' unix I/O manager takes an offset option).
fn file_systems(disk: &Path) -> Vec<String> {
    let whole = disk.to_string_lossy().into_owned();
    let Ok(text) = run(
        Command::new("sfdisk").arg("--json").arg(disk),
        "sfdisk --json",
    ) else {
        return vec![whole];
    };
    let Ok(table) = serde_json::from_str::<serde_json::Value>(&text) else {
        return vec![whole];
    };
    let sector = table["partitiontable"]["sectorsize"]
        .as_u64()
        .unwrap_or(512);
    let mut places: Vec<String> = table["partitiontable"]["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["start"].as_u64())
        .map(|start| format!("{whole}?offset={}", start * sector))
        .collect();
    places.push(whole);
    places
}

fn debugfs(fs: &str, request: &str) -> Result<String, Ec2Error> {
    run(
        Command::new("debugfs").args(["-R", request, fs]),
        &format!("debugfs {request}"),
    )
}

/// `ls -p` lines are `/inode/mode/uid/gid/name/size/`: the names of regular files.
fn file_names(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.trim().split('/').collect();
            // ["", inode, mode, uid, gid, name, size, ""]
            let mode = u32::from_str_radix(fields.get(2)?, 8).ok()?;
            (mode & 0o170000 == 0o100000).then(|| fields.get(5).map(|n| n.to_string()))?
        })
        .collect()
}

/// Compare kernel versions as `sort -V` does for the common shapes (6.12.9 <
/// 6.12.10): numeric runs as numbers, the rest as text.
fn version_key(version: &str) -> Vec<(u64, String)> {
    let mut key = Vec::new();
    let mut chars = version.chars().peekable();
    while chars.peek().is_some() {
        let mut digits = String::new();
        while let Some(c) = chars.peek().copied().filter(char::is_ascii_digit) {
            digits.push(c);
            chars.next();
        }
        let mut text = String::new();
        while let Some(c) = chars.peek().copied().filter(|c| !c.is_ascii_digit()) {
            text.push(c);
            chars.next();
        }
        key.push((digits.parse().unwrap_or(0), text));
    }
    key
}

/// The newest kernel version in /boot and whether its initrd is there.
pub fn choose_kernel(names: &[String]) -> Option<(String, bool)> {
    let version = names
        .iter()
        .filter_map(|n| n.strip_prefix("vmlinuz-"))
        .max_by_key(|v| version_key(v))?
        .to_string();
    let initrd = names.contains(&format!("initrd.img-{version}"));
    Some((version, initrd))
}

fn extract_from_disk(disk: &Path, work: &Path, root_device: &str) -> Result<BootFiles, Ec2Error> {
    for fs in file_systems(disk) {
        let Ok(listing) = debugfs(&fs, "ls -p /boot") else {
            continue;
        };
        let names = file_names(&listing);
        let Some((version, has_initrd)) = choose_kernel(&names) else {
            continue;
        };
        let kernel = work.join("vmlinuz");
        let _ = std::fs::remove_file(&kernel);
        debugfs(
            &fs,
            &format!("dump /boot/vmlinuz-{version} {}", kernel.display()),
        )?;
        let initrd = if has_initrd {
            let path = work.join("initrd.img");
            let _ = std::fs::remove_file(&path);
            debugfs(
                &fs,
                &format!("dump /boot/initrd.img-{version} {}", path.display()),
            )?;
            Some(path)
        } else {
            None
        };
        if !kernel.is_file() {
            return Err(Ec2Error::internal(format!(
                "debugfs did not write /boot/vmlinuz-{version}"
            )));
        }
        let cmdline = debugfs(&fs, "cat /etc/kernel/cmdline")
            .ok()
            .map(|text| text.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|line| !line.is_empty())
            .unwrap_or_else(|| format!("console=ttyS0 root={root_device} rw"));
        return Ok(BootFiles {
            kernel,
            initrd,
            cmdline,
            version,
        });
    }
    Err(unbootable(
        "The root volume has no ext2/3/4 file system with /boot/vmlinuz-VERSION: the \
         image boots from its root volume's /boot"
            .to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_kernel_wins_with_its_initrd() {
        let names: Vec<String> = [
            "vmlinuz-6.1.0-9-amd64",
            "vmlinuz-6.12.9+deb12-amd64",
            "vmlinuz-6.12.10+deb12-amd64",
            "initrd.img-6.12.9+deb12-amd64",
            "config-6.12.10+deb12-amd64",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            choose_kernel(&names),
            Some(("6.12.10+deb12-amd64".to_string(), false))
        );
        let names = vec!["vmlinuz-5.10".to_string(), "initrd.img-5.10".to_string()];
        assert_eq!(choose_kernel(&names), Some(("5.10".to_string(), true)));
        assert_eq!(choose_kernel(&["grub".to_string()]), None);
    }

    /// A root file system with /boot and /etc/kernel/cmdline, as mke2fs -d builds it.
    fn tree(dir: &Path, cmdline: Option<&str>) -> PathBuf {
        let root = dir.join("tree");
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::write(root.join("boot/vmlinuz-6.1.0-9-amd64"), b"old kernel").unwrap();
        std::fs::write(root.join("boot/vmlinuz-6.12.10-amd64"), b"new kernel").unwrap();
        std::fs::write(root.join("boot/initrd.img-6.12.10-amd64"), b"new initrd").unwrap();
        if let Some(line) = cmdline {
            std::fs::create_dir_all(root.join("etc/kernel")).unwrap();
            std::fs::write(root.join("etc/kernel/cmdline"), line).unwrap();
        }
        root
    }

    fn mkfs(image: &Path, root: &Path, offset: Option<u64>, size_mib: u64) {
        let mut cmd = Command::new("mke2fs");
        cmd.args(["-q", "-F", "-t", "ext4", "-d"]).arg(root);
        if let Some(offset) = offset {
            cmd.arg("-E").arg(format!("offset={offset}"));
        }
        cmd.arg(image).arg(format!("{size_mib}M"));
        assert!(cmd.status().expect("mke2fs (e2fsprogs)").success());
    }

    #[test]
    fn boot_files_come_from_a_whole_disk_or_a_partition() {
        let dir = tempfile::tempdir().unwrap();
        // A bare ext4 root (the default AMI's shape).
        let root = tree(dir.path(), Some("console=ttyS0 root=/dev/vda rw quiet\n"));
        let disk = dir.path().join("bare.raw");
        mkfs(&disk, &root, None, 16);
        let work = dir.path().join("work-bare");
        std::fs::create_dir_all(&work).unwrap();
        let files = extract_from_disk(&disk, &work, "/dev/vda").unwrap();
        assert_eq!(files.version, "6.12.10-amd64");
        assert_eq!(std::fs::read(&files.kernel).unwrap(), b"new kernel");
        assert_eq!(
            std::fs::read(files.initrd.as_ref().unwrap()).unwrap(),
            b"new initrd"
        );
        assert_eq!(files.cmdline, "console=ttyS0 root=/dev/vda rw quiet");

        // A partitioned disk (a cloud image's shape): the file system at 1 MiB.
        let root = tree(&dir.path().join("p"), None);
        let disk = dir.path().join("parted.raw");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        let mut sfdisk = Command::new("sfdisk")
            .arg("--quiet")
            .arg(&disk)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sfdisk");
        use std::io::Write;
        sfdisk
            .stdin
            .take()
            .unwrap()
            .write_all(b"label: dos\nstart=2048, type=83\n")
            .unwrap();
        assert!(sfdisk.wait().unwrap().success());
        mkfs(&disk, &root, Some(1 << 20), 24);
        let work = dir.path().join("work-parted");
        std::fs::create_dir_all(&work).unwrap();
        let files = extract_from_disk(&disk, &work, "/dev/vda1").unwrap();
        assert_eq!(std::fs::read(&files.kernel).unwrap(), b"new kernel");
        assert_eq!(files.cmdline, "console=ttyS0 root=/dev/vda1 rw");

        // No kernel: a clear refusal.
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let disk = dir.path().join("empty.raw");
        mkfs(&disk, &empty, None, 8);
        let err = extract_from_disk(&disk, &work, "/dev/vda").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidParameterValue);
    }

    #[test]
    fn listings_name_regular_files_only() {
        let listing = "/2/040755/0/0/./ /\n/12/100644/0/0/vmlinuz-6.1/7340032/\n\
                       /13/120777/0/0/vmlinuz/14/\n/14/040755/0/0/grub//\n";
        assert_eq!(file_names(listing), vec!["vmlinuz-6.1".to_string()]);
    }
}
