//! Crash test: verifying writers (FUA writes, plain writes + FLUSH, whole-block TRIM +
//! FLUSH) run against a real ebsd that is killed with SIGKILL at random moments, cycle
//! after cycle. After every restart each 4 KiB slot must hold its last acknowledged
//! durable content or something written after it, never anything older or torn, and the
//! block map (seen through BLOCK_STATUS by qemu-img) must agree with the data.
//!
//! EBS_CRASH_CYCLES (default 12) sets the number of cycles; the seed is printed, and
//! EBS_CRASH_SEED replays one.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::daemon::Daemon;
use common::*;
use ebs_blockdev::nbd::{NbdClient, NbdEndpoint};

const SLOT: u64 = 4096;
const BLOCK: u64 = 512 * 1024;
const SLOTS_PER_BLOCK: u64 = BLOCK / SLOT;
const BLOCKS: u64 = 32;
const REGION: u64 = BLOCKS * BLOCK;
const WRITERS: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Zero,
    Written(u64),
}

#[derive(Debug, Clone)]
struct SlotHistory {
    /// Contents in the order they were sent; index 0 is the state at the cycle start.
    sent: Vec<Content>,
    /// Index of the newest content known durable.
    durable: usize,
}

struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
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

type Histories = Arc<Mutex<Vec<SlotHistory>>>;

fn record(histories: &Histories, slot: u64, content: Content) -> usize {
    let mut histories = histories.lock().unwrap();
    let history = &mut histories[slot as usize];
    history.sent.push(content);
    history.sent.len() - 1
}

fn mark_durable(histories: &Histories, acknowledged: &[(u64, usize)]) {
    let mut histories = histories.lock().unwrap();
    for &(slot, index) in acknowledged {
        let history = &mut histories[slot as usize];
        history.durable = history.durable.max(index);
    }
}

/// One writer: owns blocks `writer, writer + WRITERS, ...` and runs until an error
/// (the daemon died) or `stop`.
fn writer(
    client: Arc<NbdClient>,
    histories: Histories,
    writer: u64,
    seed: u64,
    generation_base: u64,
    stop: Arc<AtomicBool>,
) {
    let mut random = Xorshift(seed | 1);
    let mut generation = generation_base;
    let mut acknowledged_not_durable: Vec<(u64, usize)> = Vec::new();
    let own_blocks: Vec<u64> = (0..BLOCKS)
        .filter(|block| block % WRITERS == writer)
        .collect();
    let mut operations = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let block = own_blocks[(random.next() % own_blocks.len() as u64) as usize];
        let choice = random.next() % 100;
        let result = if choice < 4 {
            let slots: Vec<(u64, usize)> = (0..SLOTS_PER_BLOCK)
                .map(|i| {
                    let slot = block * SLOTS_PER_BLOCK + i;
                    (slot, record(&histories, slot, Content::Zero))
                })
                .collect();
            client
                .trim(block * BLOCK, BLOCK)
                .map(|()| acknowledged_not_durable.extend(slots))
        } else {
            let slot = block * SLOTS_PER_BLOCK + random.next() % SLOTS_PER_BLOCK;
            generation += 1;
            let content = Content::Written(generation);
            let index = record(&histories, slot, content);
            let fua = choice < 50;
            client
                .write_at(slot * SLOT, &slot_bytes(slot, content), fua)
                .map(|()| {
                    if fua {
                        mark_durable(&histories, &[(slot, index)]);
                    } else {
                        acknowledged_not_durable.push((slot, index));
                    }
                })
        };
        if result.is_err() {
            return;
        }
        operations += 1;
        if operations & 7 == 0 {
            let covered = std::mem::take(&mut acknowledged_not_durable);
            if client.flush().is_err() {
                return;
            }
            mark_durable(&histories, &covered);
        }
    }
}

/// Checks every slot; returns the contents found (the next cycle's starting state).
fn verify(client: &NbdClient, histories: &[SlotHistory], cycle: u32) -> Vec<Content> {
    let mut region = vec![0u8; REGION as usize];
    client.read_at(0, &mut region).unwrap();
    let mut found = Vec::with_capacity(histories.len());
    for (slot, history) in histories.iter().enumerate() {
        let slot = slot as u64;
        let actual = &region[(slot * SLOT) as usize..((slot + 1) * SLOT) as usize];
        let candidates = &history.sent[history.durable..];
        let matched = candidates
            .iter()
            .rev()
            .find(|&&content| slot_bytes(slot, content) == actual);
        match matched {
            Some(&content) => found.push(content),
            None => panic!(
                "cycle {cycle}: slot {slot} lost an acknowledged write: durable content {:?}, later sent {:?}, found header {:?}",
                history.sent[history.durable],
                &history.sent[history.durable + 1..],
                &actual[..16]
            ),
        }
    }
    found
}

/// The block map must cover all data: qemu-img skips what BLOCK_STATUS calls holes.
fn verify_block_status(
    daemon: &Daemon,
    export_name: &str,
    directory: &std::path::Path,
    client: &NbdClient,
) {
    let copy = directory.join("region.img");
    let _ = std::fs::remove_file(&copy);
    let source = format!(
        "driver=raw,offset=0,size={REGION},file.driver=nbd,file.server.type=unix,file.server.path={},file.export={export_name}",
        daemon.nbd_sock.display()
    );
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-O", "raw", "--image-opts", &source])
            .arg(&copy),
    );
    let mut direct = vec![0u8; REGION as usize];
    client.read_at(0, &mut direct).unwrap();
    assert!(
        std::fs::read(&copy).unwrap() == direct,
        "BLOCK_STATUS reported a hole where data is"
    );
}

#[test]
fn acknowledged_writes_survive_sigkill_of_the_daemon() {
    require_tool("qemu-img");
    let cycles: u32 = std::env::var("EBS_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("EBS_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test: {cycles} cycles, EBS_CRASH_SEED={seed}");
    let mut random = Xorshift(seed | 1);
    let run = tempfile::tempdir().unwrap();
    let data_dir = run.path().join("data");
    let mut daemon = Daemon::start(run.path(), &data_dir);
    let volume = daemon.cli_ok(&[
        "create-volume",
        "--size",
        "8",
        "--volume-type",
        "gp3",
        "--iops",
        "4000",
    ]);
    let volume_id = volume["VolumeId"].as_str().unwrap().to_string();
    let attached = daemon.cli_ok(&[
        "attach-volume",
        "--volume-id",
        &volume_id,
        "--instance-id",
        "i-0123456789abcdef0",
    ]);
    let export_name = attached["NbdExport"]["ExportName"]
        .as_str()
        .unwrap()
        .to_string();
    let token = export_name.split_once('/').unwrap().1.to_string();
    let slots = (REGION / SLOT) as usize;
    let mut start_state = vec![Content::Zero; slots];
    let mut total_durable = 0usize;
    for cycle in 0..cycles {
        let histories: Histories = Arc::new(Mutex::new(
            start_state
                .iter()
                .map(|&content| SlotHistory {
                    sent: vec![content],
                    durable: 0,
                })
                .collect(),
        ));
        let endpoint = NbdEndpoint::Unix(daemon.nbd_sock.clone());
        let client = Arc::new(NbdClient::connect(&endpoint, &volume_id, Some(&token)).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|index| {
                let (client, histories, stop) = (
                    Arc::clone(&client),
                    Arc::clone(&histories),
                    Arc::clone(&stop),
                );
                let writer_seed = random.next();
                let generation_base = (u64::from(cycle) << 40) | (index << 32);
                thread::spawn(move || {
                    writer(client, histories, index, writer_seed, generation_base, stop)
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(100 + random.next() % 500));
        daemon.kill_hard();
        stop.store(true, Ordering::Relaxed);
        for handle in writers {
            handle.join().unwrap();
        }
        drop(client);
        daemon = Daemon::start(run.path(), &data_dir);
        let client = NbdClient::connect(
            &NbdEndpoint::Unix(daemon.nbd_sock.clone()),
            &volume_id,
            Some(&token),
        )
        .unwrap();
        let histories = histories.lock().unwrap().clone();
        total_durable += histories
            .iter()
            .filter(|history| history.durable > 0)
            .count();
        start_state = verify(&client, &histories, cycle);
        verify_block_status(&daemon, &export_name, run.path(), &client);
        client.flush().unwrap();
    }
    assert!(
        total_durable > slots / 4,
        "writers acknowledged too little to test anything ({total_durable} slots)"
    );
    daemon.terminate();
}
