//! Load generator for the NBD client the VMM's EBS backend uses: THREADS threads
//! share one `NbdClient` (as the virtio-blk I/O threads do), each issuing blocking
//! BS-byte reads or writes at random aligned offsets for SECONDS, so THREADS requests
//! are in flight. Prints IOPS and latency percentiles; `scripts/bench-ebs.sh` runs it
//! beside fio's libnbd engine to compare clients on the same server.
//!
//!   nbd_client_bench ENDPOINT EXPORT read|write THREADS SECONDS [BS] [REGION_BYTES]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ebs_blockdev::nbd::{NbdClient, NbdEndpoint};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!(
            "usage: {} ENDPOINT EXPORT read|write THREADS SECONDS [BS] [REGION]",
            args[0]
        );
        std::process::exit(2);
    }
    let endpoint: NbdEndpoint = args[1].parse()?;
    let client = Arc::new(NbdClient::connect_export(&endpoint, &args[2])?);
    let write = match args[3].as_str() {
        "read" => false,
        "write" => true,
        other => return Err(format!("read or write, not {other}").into()),
    };
    let threads: usize = args[4].parse()?;
    let seconds: u64 = args[5].parse()?;
    let bs: u64 = args.get(6).map_or(Ok(4096), |s| s.parse())?;
    let region: u64 = args.get(7).map_or(Ok(1 << 30), |s| s.parse())?;
    let blocks = (region.min(client.size()) / bs).max(1);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|index| {
            let client = Arc::clone(&client);
            std::thread::spawn(move || {
                // xorshift: a different, repeatable offset stream per thread.
                let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ (index as u64 + 1);
                let mut buffer = vec![0xa5u8; bs as usize];
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let offset = (state % blocks) * bs;
                    let start = Instant::now();
                    let result = if write {
                        client.write_at(offset, &buffer, false)
                    } else {
                        client.read_at(offset, &mut buffer)
                    };
                    if let Err(e) = result {
                        eprintln!("request at {offset}: {e}");
                        break;
                    }
                    latencies.push(start.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<Duration> = Vec::new();
    for worker in workers {
        all.extend(worker.join().map_err(|_| "worker panicked")?);
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0, |d| d.as_micros())
    };
    println!(
        "{} {} threads={threads} bs={bs}: {:.0} IOPS, p50 {} us, p99 {} us, max {} us",
        if write { "write" } else { "read" },
        args[2],
        all.len() as f64 / seconds as f64,
        pct(0.50),
        pct(0.99),
        all.last().map_or(0, |d| d.as_micros())
    );
    Ok(())
}
