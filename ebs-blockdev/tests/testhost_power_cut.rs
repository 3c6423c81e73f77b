//! Power-cut test: what kill -9 cannot show. ebsd's data directory lives on ext4 on a
//! dm-log-writes device inside the test host (scripts/testhost.sh; this machine's kernel
//! has no device-mapper). dm-log-writes records every write that reached the device in the
//! order it became stable (plain writes only once a later FLUSH completed, FUA writes at
//! completion), plus marks. Verifying writers send FUA writes, plain writes with FLUSHes
//! and whole-block TRIMs through ebsd's NBD export; after each acknowledgement that makes
//! data durable (FUA write, FLUSH) the writer puts a mark into the log. The log is then
//! replayed onto the file system image as it was before the run, stopping at several
//! entries (flush and FUA entries, durability marks, arbitrary entries, the moment ebsd was
//! killed): each stop is the device after a power cut there. For each:
//!
//! - the file system mounts (ext4 journal recovery);
//! - the block map on disk decodes and holds the bits of every durable write;
//! - ebsd starts on it and serves the volume;
//! - every write made durable by an acknowledgement logged before the cut reads back, or
//!   something sent after it (never older, never torn, never bytes nobody wrote);
//! - BLOCK_STATUS (through qemu-img) covers all data, and nothing appears outside the
//!   written region;
//! - e2fsck finds the file system clean afterwards.
//!
//! The outer test boots the test host (whose module list includes dm-mod, dm-log-writes,
//! loop, ext4 and crc32c_generic, which ext4 asks for at mount), and runs
//! this binary's ignored inner test there. EBS_POWER_CUT_SEED replays a run (the seed is
//! printed), EBS_POWER_CUT_SECONDS (default 12) sets how long the writers run,
//! EBS_POWER_CUT_POINTS (default 20) how many crash points are checked.

mod common;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::daemon::Daemon;
use common::*;
use ebs_blockdev::engine::BlockMap;
use ebs_blockdev::nbd::{NbdClient, NbdEndpoint};

const INNER: &str = "power_cut_inside_the_test_host";
const INNER_ENV: &str = "EBS_POWER_CUT_INNER";

const SLOT: u64 = 4096;
const BLOCK: u64 = 512 * 1024;
const SLOTS_PER_BLOCK: u64 = BLOCK / SLOT;
const BLOCKS: u64 = 32;
const REGION: u64 = BLOCKS * BLOCK;
const WRITERS: u64 = 4;
const VOLUME_GIB: u64 = 1;

const FS_BYTES: u64 = 256 << 20;
const LOG_BYTES: u64 = 1 << 30;
const DM_NAME: &str = "ebs-power-cut";

// ---------------------------------------------------------------------------------------
// Outer test: boot the test host and run the inner test there.

#[test]
fn acknowledged_writes_survive_a_power_cut_under_ebsd() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("ebs-blockdev lives in the repository")
        .to_path_buf();
    let script = repo.join("scripts/testhost.sh");
    assert!(script.is_file(), "{} is missing", script.display());
    require_tool("dmsetup");
    require_tool("mkfs.ext4");
    require_tool("e2fsck");
    require_tool("losetup");
    require_tool("qemu-img");
    let exe = std::env::current_exe().expect("test executable path");
    let passed = [
        INNER_ENV,
        "EBS_POWER_CUT_SEED",
        "EBS_POWER_CUT_SECONDS",
        "EBS_POWER_CUT_POINTS",
        "RUST_BACKTRACE",
    ];
    let start = Instant::now();
    let output = Command::new(&script)
        .args(["run", "--mem", "2048", "--timeout", "600", "--"])
        .arg(&exe)
        .args([
            "--exact",
            INNER,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TESTHOST_ENV", passed.join(" "))
        .env(INNER_ENV, "1")
        .current_dir(&repo)
        .output()
        .expect("run scripts/testhost.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let all = format!("{stdout}\n--- testhost.sh stderr ---\n{stderr}");
    assert_eq!(
        output.status.code(),
        Some(0),
        "power-cut test failed in the test host (124: timeout, 125: test host failure):\n{all}"
    );
    for line in stdout.lines().filter(|line| line.starts_with("power-cut:")) {
        eprintln!("{line}");
    }
    assert!(
        stdout.contains("power-cut: planted violation caught"),
        "the checker was not shown to catch a lost write:\n{all}"
    );
    let summary = stdout
        .lines()
        .find(|line| line.starts_with("POWER-CUT-VERIFIED "))
        .unwrap_or_else(|| panic!("the inner test reported no result:\n{all}"));
    eprintln!("{summary} (test host run {:.0?})", start.elapsed());
}

// ---------------------------------------------------------------------------------------
// Histories of what the writers sent, as in tests/crash.rs.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Zero,
    Written(u64),
}

struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

fn slot_bytes(slot: u64, content: Content) -> Vec<u8> {
    match content {
        Content::Zero => vec![0u8; SLOT as usize],
        Content::Written(generation) => {
            let mut bytes = random_bytes(slot.wrapping_mul(1_000_003) ^ generation, SLOT as usize);
            bytes[..8].copy_from_slice(&slot.to_le_bytes());
            bytes[8..16].copy_from_slice(&generation.to_le_bytes());
            bytes
        }
    }
}

/// Everything the writers did: per slot the contents in the order they were sent (index
/// 0: zero, the fresh volume), and the durability events: event `id` made
/// `events[id]` (slot, index into that slot's history) durable when it was acknowledged.
#[derive(Default)]
struct Record {
    sent: Vec<Vec<Content>>,
    events: Vec<Vec<(u64, usize)>>,
}

type Shared = Arc<Mutex<Record>>;

fn send(record: &Shared, slot: u64, content: Content) -> usize {
    let mut record = record.lock().unwrap();
    let history = &mut record.sent[slot as usize];
    history.push(content);
    history.len() - 1
}

/// Registers an acknowledged durability event and marks it in the device's log: the
/// mark lands after every log entry that the acknowledgement depended on.
fn durable(record: &Shared, log: &LogWrites, slots: Vec<(u64, usize)>) {
    let id = {
        let mut record = record.lock().unwrap();
        record.events.push(slots);
        record.events.len() - 1
    };
    log.mark(&format!("d{id}")).expect("dm-log-writes mark");
}

/// One writer: owns blocks `writer, writer + WRITERS, ...`; runs until `stop` or until
/// the daemon is gone.
fn writer(
    client: Arc<NbdClient>,
    record: Shared,
    log: Arc<LogWrites>,
    writer: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut random = Xorshift(seed | 1);
    let mut generation = writer << 40;
    let mut acknowledged_not_durable: Vec<(u64, usize)> = Vec::new();
    let own_blocks: Vec<u64> = (0..BLOCKS)
        .filter(|block| block % WRITERS == writer)
        .collect();
    let mut operations = 0u64;
    let mut since_flush = 0;
    while !stop.load(Ordering::Relaxed) {
        let block = own_blocks[random.below(own_blocks.len())];
        let choice = random.next() % 100;
        let result = if choice < 4 {
            let slots: Vec<(u64, usize)> = (0..SLOTS_PER_BLOCK)
                .map(|i| {
                    let slot = block * SLOTS_PER_BLOCK + i;
                    (slot, send(&record, slot, Content::Zero))
                })
                .collect();
            client
                .trim(block * BLOCK, BLOCK)
                .map(|()| acknowledged_not_durable.extend(slots))
        } else {
            let slot = block * SLOTS_PER_BLOCK + random.next() % SLOTS_PER_BLOCK;
            generation += 1;
            let content = Content::Written(generation);
            let index = send(&record, slot, content);
            let fua = choice < 40;
            client
                .write_at(slot * SLOT, &slot_bytes(slot, content), fua)
                .map(|()| {
                    if fua {
                        durable(&record, &log, vec![(slot, index)]);
                    } else {
                        acknowledged_not_durable.push((slot, index));
                    }
                })
        };
        if result.is_err() {
            break;
        }
        operations += 1;
        since_flush += 1;
        if since_flush == 6 {
            since_flush = 0;
            let covered = std::mem::take(&mut acknowledged_not_durable);
            if client.flush().is_err() {
                break;
            }
            durable(&record, &log, covered);
        }
    }
    operations
}

/// Problems found when `region` is checked against what must be durable: each slot must
/// hold its newest durable content or something sent after it.
fn check_region(region: &[u8], sent: &[Vec<Content>], durable: &[usize]) -> Vec<String> {
    let mut problems = Vec::new();
    for (slot, history) in sent.iter().enumerate() {
        let actual = &region[slot * SLOT as usize..(slot + 1) * SLOT as usize];
        let candidates = &history[durable[slot]..];
        let found = candidates
            .iter()
            .any(|&content| slot_bytes(slot as u64, content) == actual);
        if !found {
            let header = (
                u64::from_le_bytes(actual[..8].try_into().unwrap()),
                u64::from_le_bytes(actual[8..16].try_into().unwrap()),
            );
            problems.push(format!(
                "slot {slot}: durable content {:?}, sent after it {:?}, found (slot, generation) header {header:?}",
                history[durable[slot]],
                &history[durable[slot] + 1..]
            ));
        }
    }
    problems
}

/// The block map as the crash left it (before ebsd reconciles it with the data file):
/// it must decode, and hold the bits of every durable write, since FLUSH and FUA persist
/// the map before they are acknowledged: `changed` (never cleared without a snapshot) for
/// every block with a durable write or trim, `allocated` for a block whose durable data
/// no later trim may have released.
fn check_block_map(
    path: &Path,
    sent: &[Vec<Content>],
    durable: &[usize],
    why: &str,
) -> Vec<String> {
    let bytes =
        std::fs::read(path).unwrap_or_else(|error| panic!("{why}: {}: {error}", path.display()));
    let map = BlockMap::decode(&bytes).unwrap_or_else(|error| panic!("{why}: {error}"));
    assert_eq!(
        map.volume_size,
        VOLUME_GIB << 30,
        "{why}: block map volume size"
    );
    assert!(
        !map.clean_shutdown,
        "{why}: block map claims a clean shutdown"
    );
    let mut problems = Vec::new();
    for (slot, history) in sent.iter().enumerate() {
        let block = slot as u64 / SLOTS_PER_BLOCK;
        let index = durable[slot];
        if index == 0 {
            continue;
        }
        if !map.changed.get(block) {
            problems.push(format!("block {block}: durable change to slot {slot} not in the persisted map's changed bits"));
        }
        let written = matches!(history[index], Content::Written(_));
        let trimmed_later = history[index + 1..].contains(&Content::Zero);
        if written && !trimmed_later && !map.allocated.get(block) {
            problems.push(format!("block {block}: durable data in slot {slot} not in the persisted map's allocated bits"));
        }
    }
    problems.dedup_by_key(|problem| problem.split(':').next().unwrap_or("").to_string());
    problems
}

// ---------------------------------------------------------------------------------------
// dm-log-writes: marks through the device-mapper ioctl, and the log format
// (Documentation/admin-guide/device-mapper/log-writes.rst, drivers/md/dm-log-writes.c).

/// `struct dm_ioctl` is 312 bytes; DM_TARGET_MSG = _IOWR(0xfd, 14, struct dm_ioctl).
const DM_IOCTL_SIZE: usize = 312;
const DM_TARGET_MSG: u64 = (3 << 30) | ((DM_IOCTL_SIZE as u64) << 16) | (0xfd << 8) | 14;

struct LogWrites {
    control: File,
    name: String,
}

impl LogWrites {
    fn open(name: &str) -> io::Result<LogWrites> {
        Ok(LogWrites {
            control: OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/mapper/control")?,
            name: name.to_string(),
        })
    }

    /// `dmsetup message NAME 0 mark LABEL`, without a process per mark.
    fn mark(&self, label: &str) -> io::Result<()> {
        let message = format!("mark {label}");
        let mut buffer = vec![0u8; 4096];
        buffer[0..4].copy_from_slice(&4u32.to_ne_bytes()); // DM_VERSION_MAJOR
        let size = buffer.len() as u32;
        buffer[12..16].copy_from_slice(&size.to_ne_bytes()); // data_size
        buffer[16..20].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_ne_bytes()); // data_start
        buffer[48..48 + self.name.len()].copy_from_slice(self.name.as_bytes()); // name
                                                                                // struct dm_target_msg { u64 sector = 0; char message[]; }
        let text = DM_IOCTL_SIZE + 8;
        buffer[text..text + message.len()].copy_from_slice(message.as_bytes());
        // SAFETY: the buffer outlives the call and is as large as data_size says; the
        // kernel reads and writes only within it.
        let result = unsafe {
            libc::ioctl(
                self.control.as_raw_fd(),
                DM_TARGET_MSG as _,
                buffer.as_mut_ptr(),
            )
        };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

const LOG_MAGIC: u64 = 0x006a_7366_7773_6872;
const LOG_FLUSH: u64 = 1 << 0;
const LOG_FUA: u64 = 1 << 1;
const LOG_DISCARD: u64 = 1 << 2;
const LOG_MARK: u64 = 1 << 3;

#[derive(Debug)]
struct LogEntry {
    /// Byte offset on the logged device.
    offset: u64,
    length: u64,
    flags: u64,
    /// Byte offset of the data in the log.
    data_at: u64,
    mark: Option<String>,
}

fn le64(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// Reads the entry headers of a dm-log-writes log: a super sector, then for each entry a
/// sector holding {sector, nr_sectors, flags, data_len} (and a mark's text), followed by
/// the written data unless it is a discard or a mark.
fn read_log(log: &mut File) -> Vec<LogEntry> {
    let mut header = [0u8; 32];
    log.read_exact(&mut header).expect("read log super");
    assert_eq!(le64(&header, 0), LOG_MAGIC, "not a dm-log-writes log");
    assert_eq!(le64(&header, 8), 1, "log format version");
    let count = le64(&header, 16);
    let sector = u64::from(u32::from_le_bytes(header[24..28].try_into().unwrap()));
    let mut entries = Vec::with_capacity(count as usize);
    let mut position = sector;
    let mut entry = vec![0u8; sector as usize];
    for _ in 0..count {
        log.seek(SeekFrom::Start(position)).unwrap();
        log.read_exact(&mut entry).expect("read log entry");
        let flags = le64(&entry, 16);
        let sectors = le64(&entry, 8);
        let mark = (flags & LOG_MARK != 0).then(|| {
            let length = le64(&entry, 24) as usize;
            String::from_utf8_lossy(&entry[32..32 + length]).into_owned()
        });
        let data_at = position + sector;
        position += sector;
        if flags & (LOG_DISCARD | LOG_MARK) == 0 {
            position += sectors * sector;
        }
        entries.push(LogEntry {
            offset: le64(&entry, 0) * sector,
            length: sectors * sector,
            flags,
            data_at,
            mark,
        });
    }
    entries
}

/// Applies one log entry to the image: writes its data, or punches the discarded range
/// (the loop device under the log did the same on tmpfs).
fn apply(entry: &LogEntry, log: &File, image: &File, buffer: &mut Vec<u8>) {
    if entry.flags & LOG_MARK != 0 || entry.length == 0 {
        return;
    }
    if entry.flags & LOG_DISCARD != 0 {
        // SAFETY: fallocate on a file we own, with plain integer arguments.
        let result = unsafe {
            libc::fallocate(
                image.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                entry.offset as libc::off_t,
                entry.length as libc::off_t,
            )
        };
        assert_eq!(result, 0, "punch: {}", io::Error::last_os_error());
        return;
    }
    buffer.resize(entry.length as usize, 0);
    log.read_exact_at(buffer, entry.data_at).expect("log data");
    image
        .write_all_at(buffer, entry.offset)
        .expect("replay write");
}

// ---------------------------------------------------------------------------------------
// Inner test, run in the test host as root.

fn command(program: &str, args: &[&str]) -> String {
    let output = run_ok(Command::new(program).args(args));
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// A crash point: the device holds log entries `0..end`.
#[derive(Debug, Clone)]
struct CrashPoint {
    end: usize,
    why: String,
}

fn choose_crash_points(
    entries: &[LogEntry],
    setup: usize,
    cut: usize,
    wanted: usize,
    random: &mut Xorshift,
) -> Vec<CrashPoint> {
    let mut points = vec![
        CrashPoint {
            end: setup + 1,
            why: "before the first write".into(),
        },
        CrashPoint {
            end: cut,
            why: "when ebsd was killed".into(),
        },
    ];
    let between = setup + 1..cut;
    let flushes: Vec<usize> = between
        .clone()
        .filter(|&i| entries[i].flags & LOG_FLUSH != 0)
        .collect();
    let fuas: Vec<usize> = between
        .clone()
        .filter(|&i| entries[i].flags & (LOG_FUA | LOG_FLUSH) == LOG_FUA)
        .collect();
    let marks: Vec<usize> = between
        .clone()
        .filter(|&i| {
            entries[i]
                .mark
                .as_deref()
                .is_some_and(|m| m.starts_with('d'))
        })
        .collect();
    for turn in 0..wanted.saturating_sub(points.len()) {
        let point = match turn % 5 {
            0 if !flushes.is_empty() => {
                let i = flushes[random.below(flushes.len())];
                CrashPoint {
                    end: i + 1,
                    why: format!("after flush entry {i}"),
                }
            }
            1 if !flushes.is_empty() => {
                let i = flushes[random.below(flushes.len())];
                CrashPoint {
                    end: i,
                    why: format!("just before flush entry {i}"),
                }
            }
            2 if !marks.is_empty() => {
                let i = marks[random.below(marks.len())];
                CrashPoint {
                    end: i + 1,
                    why: format!(
                        "right after durability mark {}",
                        entries[i].mark.as_deref().unwrap_or("")
                    ),
                }
            }
            3 if !fuas.is_empty() => {
                let i = fuas[random.below(fuas.len())];
                CrashPoint {
                    end: i + 1,
                    why: format!("after FUA entry {i}"),
                }
            }
            _ => {
                let i = between.start + random.below(between.len().max(1));
                CrashPoint {
                    end: i,
                    why: format!("at arbitrary entry {i}"),
                }
            }
        };
        points.push(point);
    }
    points.sort_by_key(|point| point.end);
    points.dedup_by_key(|point| point.end);
    points
}

struct Checked {
    durable_slots: usize,
    problems: Vec<String>,
}

/// Mounts `image`, starts ebsd on it and checks the volume against the writes made
/// durable by the acknowledgements whose marks lie before `point.end`.
#[allow(clippy::too_many_arguments)]
fn check_crash_point(
    work: &Path,
    image: &Path,
    point: &CrashPoint,
    entries: &[LogEntry],
    record: &Record,
    volume_id: &str,
    token: &str,
    planted_check: bool,
) -> Checked {
    let mut durable = vec![0usize; record.sent.len()];
    for entry in &entries[..point.end] {
        let Some(id) = entry.mark.as_deref().and_then(|m| m.strip_prefix('d')) else {
            continue;
        };
        let id: usize = id.parse().unwrap();
        for &(slot, index) in &record.events[id] {
            let durable = &mut durable[slot as usize];
            *durable = (*durable).max(index);
        }
    }
    let mount_point = work.join("mnt");
    let run_dir = work.join("run");
    let loop_device = command("losetup", &["-f", "--show", image.to_str().unwrap()]);
    // Journal recovery happens here.
    command(
        "mount",
        &["-t", "ext4", &loop_device, mount_point.to_str().unwrap()],
    );
    let mut problems = check_block_map(
        &mount_point
            .join("data/volumes")
            .join(volume_id)
            .join("blockmap"),
        &record.sent,
        &durable,
        &point.why,
    );
    let mut daemon = Daemon::start(&run_dir, &mount_point.join("data"));
    let described = daemon.cli_ok(&["describe-volumes", "--volume-ids", volume_id]);
    assert_eq!(
        described["Volumes"][0]["State"], "in-use",
        "{}: volume after the crash: {described}",
        point.why
    );
    let client = NbdClient::connect(
        &NbdEndpoint::Unix(daemon.nbd_sock.clone()),
        volume_id,
        Some(token),
    )
    .unwrap_or_else(|error| panic!("{}: ebsd does not serve the volume: {error}", point.why));
    assert_eq!(client.size(), VOLUME_GIB << 30);
    let mut region = vec![0u8; REGION as usize];
    client.read_at(0, &mut region).unwrap();
    problems.extend(check_region(&region, &record.sent, &durable));
    if planted_check {
        // The checker must see a lost write: the same data checked as if every
        // acknowledgement of the whole run had come before this crash point.
        let mut everything = vec![0usize; record.sent.len()];
        for event in &record.events {
            for &(slot, index) in event {
                everything[slot as usize] = everything[slot as usize].max(index);
            }
        }
        let planted = check_region(&region, &record.sent, &everything);
        assert!(
            !planted.is_empty(),
            "{}: the checker found no problem although writes acknowledged later are missing",
            point.why
        );
        println!(
            "power-cut: planted violation caught ({} slots would have lost acknowledged writes)",
            planted.len()
        );
    }

    // The block map covers all data: qemu-img skips what BLOCK_STATUS calls holes.
    let copy = work.join("region.raw");
    let _ = std::fs::remove_file(&copy);
    let export = format!("{volume_id}/{token}");
    let source = format!(
        "driver=raw,offset=0,size={REGION},file.driver=nbd,file.server.type=unix,file.server.path={},file.export={export}",
        daemon.nbd_sock.display()
    );
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw", "--image-opts", &source])
            .arg(&copy),
    );
    assert!(
        std::fs::read(&copy).unwrap() == region,
        "{}: BLOCK_STATUS reported a hole where data is",
        point.why
    );
    std::fs::remove_file(&copy).unwrap();
    // Nothing was ever written outside the region: no data may appear there.
    let map = command(
        "qemu-img",
        &[
            "map",
            "--output=json",
            "-f",
            "raw",
            &nbd_uri(&daemon.nbd_sock, &export),
        ],
    );
    let map: serde_json::Value = serde_json::from_str(&map).expect("qemu-img map JSON");
    for extent in map.as_array().unwrap() {
        let start = extent["start"].as_u64().unwrap();
        let length = extent["length"].as_u64().unwrap();
        if start + length > REGION && extent["data"] == true {
            panic!("{}: data outside the written region: {extent}", point.why);
        }
    }
    drop(client);
    daemon.terminate();
    command("umount", &[mount_point.to_str().unwrap()]);
    // The file system itself stayed consistent (ext4's part of the bargain).
    command("e2fsck", &["-fn", &loop_device]);
    command("losetup", &["-d", &loop_device]);
    Checked {
        durable_slots: durable.iter().filter(|&&index| index > 0).count(),
        problems,
    }
}

#[test]
#[ignore = "runs inside the test host, started by acknowledged_writes_survive_a_power_cut_under_ebsd"]
fn power_cut_inside_the_test_host() {
    if std::env::var(INNER_ENV).as_deref() != Ok("1")
        || std::env::var("TESTHOST").as_deref() != Ok("1")
    {
        eprintln!("{INNER} only runs inside the test host; nothing to do here");
        return;
    }
    assert!(
        Path::new("/dev/mapper/control").exists()
            && command("dmsetup", &["targets"]).contains("log-writes"),
        "no dm-log-writes in the test host: scripts/testhost.sh must load dm-mod and dm-log-writes"
    );
    let seed = env_number(
        "EBS_POWER_CUT_SEED",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    let seconds = env_number("EBS_POWER_CUT_SECONDS", 12);
    let wanted_points = env_number("EBS_POWER_CUT_POINTS", 20) as usize;
    println!("power-cut: EBS_POWER_CUT_SEED={seed}, writers for {seconds} s, {wanted_points} crash points");
    let started = Instant::now();
    let mut random = Xorshift(seed | 1);

    let work = PathBuf::from(format!("/tmp/ebs-power-cut-{}", std::process::id()));
    std::fs::create_dir_all(work.join("mnt")).unwrap();
    std::fs::create_dir_all(work.join("run")).unwrap();
    let path = |name: &str| work.join(name).to_str().unwrap().to_string();
    File::create(work.join("fs.img"))
        .unwrap()
        .set_len(FS_BYTES)
        .unwrap();
    File::create(work.join("log.img"))
        .unwrap()
        .set_len(LOG_BYTES)
        .unwrap();
    command(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-b",
            "4096",
            "-E",
            "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
            &path("fs.img"),
        ],
    );
    // The device as the log starts from.
    command(
        "cp",
        &["--sparse=always", &path("fs.img"), &path("base.img")],
    );
    let fs_loop = command("losetup", &["-f", "--show", &path("fs.img")]);
    let log_loop = command("losetup", &["-f", "--show", &path("log.img")]);
    let table = format!("0 {} log-writes {fs_loop} {log_loop}", FS_BYTES / 512);
    // No udev in the test host: dmsetup makes the /dev/mapper node itself.
    command(
        "dmsetup",
        &["create", "--noudevsync", DM_NAME, "--table", &table],
    );
    command("dmsetup", &["mknodes", DM_NAME]);
    let device = format!("/dev/mapper/{DM_NAME}");
    assert!(Path::new(&device).exists(), "dmsetup made no {device}");
    let log = Arc::new(LogWrites::open(DM_NAME).expect("open /dev/mapper/control"));
    let mount_point = work.join("mnt");
    command(
        "mount",
        &["-t", "ext4", &device, mount_point.to_str().unwrap()],
    );

    // ebsd with its data on the logged file system, a volume, an attachment.
    let run_dir = work.join("run");
    let mut daemon = Daemon::start(&run_dir, &mount_point.join("data"));
    let volume = daemon.cli_ok(&[
        "create-volume",
        "--size",
        &VOLUME_GIB.to_string(),
        "--volume-type",
        "gp3",
    ]);
    let volume_id = volume["VolumeId"].as_str().unwrap().to_string();
    let attached = daemon.cli_ok(&[
        "attach-volume",
        "--volume-id",
        &volume_id,
        "--instance-id",
        "i-0123456789abcdef0",
    ]);
    let export_name = attached["NbdExport"]["ExportName"].as_str().unwrap();
    let token = export_name.split_once('/').unwrap().1.to_string();
    log.mark("setup").unwrap();

    // The writers, until the power cut.
    let slots = (REGION / SLOT) as usize;
    let record: Shared = Arc::new(Mutex::new(Record {
        sent: vec![vec![Content::Zero]; slots],
        events: Vec::new(),
    }));
    let client = Arc::new(
        NbdClient::connect(
            &NbdEndpoint::Unix(daemon.nbd_sock.clone()),
            &volume_id,
            Some(&token),
        )
        .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|index| {
            let (client, record, log, stop) = (
                Arc::clone(&client),
                Arc::clone(&record),
                Arc::clone(&log),
                Arc::clone(&stop),
            );
            let writer_seed = random.next();
            thread::spawn(move || writer(client, record, log, index, writer_seed, stop))
        })
        .collect();
    thread::sleep(Duration::from_secs(seconds));
    // Power cut: ebsd dies; nothing after the "cut" mark counts.
    daemon.kill_hard();
    log.mark("cut").unwrap();
    stop.store(true, Ordering::Relaxed);
    let operations: u64 = writers.into_iter().map(|h| h.join().unwrap()).sum();
    drop(client);
    let status = command("dmsetup", &["status", DM_NAME]);
    assert!(
        !status.contains("logging_disabled"),
        "dm-log-writes stopped logging (log device full?): {status}"
    );
    command("umount", &[mount_point.to_str().unwrap()]);
    command("dmsetup", &["remove", "--noudevsync", DM_NAME]);
    command("losetup", &["-d", &fs_loop, &log_loop]);
    std::fs::remove_file(work.join("fs.img")).unwrap();
    let record = Arc::try_unwrap(record)
        .ok()
        .expect("writers are done")
        .into_inner()
        .unwrap();

    // Replay.
    let mut log_file = File::open(work.join("log.img")).unwrap();
    let entries = read_log(&mut log_file);
    let find_mark = |name: &str| {
        entries
            .iter()
            .position(|entry| entry.mark.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no mark {name} in the log"))
    };
    let (setup, cut) = (find_mark("setup"), find_mark("cut"));
    let logged_events = entries[setup..cut]
        .iter()
        .filter(|entry| entry.mark.as_deref().is_some_and(|m| m.starts_with('d')))
        .count();
    let flushes = entries[setup..cut]
        .iter()
        .filter(|entry| entry.flags & LOG_FLUSH != 0)
        .count();
    println!(
        "power-cut: {operations} NBD operations, {} durability acknowledgements ({logged_events} marked before the cut); log: {} entries, {} between setup and cut, {flushes} flushes; {:.0?} so far",
        record.events.len(),
        entries.len(),
        cut - setup,
        started.elapsed()
    );
    assert!(
        logged_events >= 20,
        "too few acknowledged FUA writes/FLUSHes to test anything ({logged_events})"
    );
    let points = choose_crash_points(&entries, setup, cut, wanted_points, &mut random);
    command(
        "cp",
        &["--sparse=always", &path("base.img"), &path("replay.img")],
    );
    let replay = OpenOptions::new()
        .read(true)
        .write(true)
        .open(work.join("replay.img"))
        .unwrap();
    let mut buffer = Vec::new();
    let mut applied = 0usize;
    let mut failures = Vec::new();
    let mut most_durable = 0usize;
    for (number, point) in points.iter().enumerate() {
        for entry in &entries[applied..point.end] {
            apply(entry, &log_file, &replay, &mut buffer);
        }
        applied = point.end;
        replay.sync_all().unwrap();
        command(
            "cp",
            &["--sparse=always", &path("replay.img"), &path("crash.img")],
        );
        let point_started = Instant::now();
        let checked = check_crash_point(
            &work,
            &work.join("crash.img"),
            point,
            &entries,
            &record,
            &volume_id,
            &token,
            number == 0,
        );
        std::fs::remove_file(work.join("crash.img")).unwrap();
        println!(
            "power-cut: crash point {} of {} (entry {}, {}): {} slots durable, {} problems ({:.1?})",
            number + 1,
            points.len(),
            point.end,
            point.why,
            checked.durable_slots,
            checked.problems.len(),
            point_started.elapsed()
        );
        most_durable = most_durable.max(checked.durable_slots);
        if !checked.problems.is_empty() {
            failures.push(format!(
                "{} (entry {}): {} problems, first: {}",
                point.why,
                point.end,
                checked.problems.len(),
                checked.problems[..checked.problems.len().min(3)].join("; ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "acknowledged writes or their block-map bits lost by a power cut (EBS_POWER_CUT_SEED={seed}):\n{}",
        failures.join("\n")
    );
    assert!(
        most_durable > slots / 8,
        "too little was durable to test anything ({most_durable} slots)"
    );
    let _ = std::fs::remove_dir_all(&work);
    println!(
        "POWER-CUT-VERIFIED {} crash points, {} durability acknowledgements, {most_durable} slots durable at most, {:.0?}",
        points.len(),
        record.events.len(),
        started.elapsed()
    );
}
