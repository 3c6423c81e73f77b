//! Hibernation's mechanism end to end in the test host: the Debian guest
//! counts and prints its uptime every ~0.5 s and writes each count to its
//! virtio-blk disk; the test host pauses it and snapshots it through the
//! API, kills the VMM (SIGKILL), restores the snapshot in a new VMM and
//! checks that the count goes on from where it was, uptime keeps
//! increasing, the disk still takes writes and reads, and the guest still
//! reaches the host over its virtio-net tap (reopened by name).

use std::time::Duration;

use integration_tests::{base64, field, guest_assets, sh_quote, testhost_run};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

/// The guest: a counter loop that also round-trips the count through the
/// disk (write sector 0, drop caches, read it back) and pings the host.
const GUEST: &str = r#"
ip link set eth0 up && ip addr add 172.16.0.2/24 dev eth0
i=0
while true; do
  i=$((i+1))
  printf 'DISK-%08d' $i | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null
  echo 3 > /proc/sys/vm/drop_caches
  R=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c 13)
  P=$(ping -c 1 -W 2 172.16.0.1 | grep -c 'bytes from')
  echo "COUNT $i UP $(cut -d' ' -f1 /proc/uptime) READ $R NET $P"
  sleep 0.5
done
"#;

/// (count, uptime, what the disk gave back, pings answered) of each
/// complete COUNT line.
fn counts(text: &str) -> Vec<(u64, f64, String, u32)> {
    text.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.trim_end_matches('\r').split(' ').collect();
            match w.as_slice() {
                ["COUNT", n, "UP", up, "READ", r, "NET", p] => Some((
                    n.parse().ok()?,
                    up.parse().ok()?,
                    r.to_string(),
                    p.parse().ok()?,
                )),
                _ => None,
            }
        })
        .collect()
}

fn section<'a>(out: &'a str, start: &str, end: &str) -> &'a str {
    let a = out
        .find(start)
        .map(|i| i + start.len())
        .unwrap_or(out.len());
    let b = out[a..].find(end).map(|i| a + i).unwrap_or(out.len());
    &out[a..b]
}

#[test]
fn debian_guest_keeps_counting_after_snapshot_kill_and_restore() {
    let assets = guest_assets();
    let cmdline = format!(
        "console=ttyS0 quiet panic=-1 vmm.run={}",
        base64(GUEST.as_bytes())
    );
    let api = |sock: &str, method: &str, path: &str, body: &str, tag: &str| {
        format!(
            "curl -s -w '\\n{tag} %{{http_code}}\\n' --unix-socket {sock} -X {method} \
             http://localhost{path} -d '{body}'"
        )
    };
    let wait_counts = |log: &str, n: u32| {
        format!(
            "for t in $(seq 1 900); do \
             [ \"$(grep -c '^COUNT .* READ DISK-' {log} 2>/dev/null)\" -ge {n} ] && break; \
             sleep 0.5; done"
        )
    };
    let script = [
        "rm -f /tmp/snap.* /tmp/c1.log /tmp/c2.log; truncate -s 64M /tmp/snap.disk".to_string(),
        "ip tuntap add tap0 mode tap vnet_hdr; ip addr add 172.16.0.1/24 dev tap0; ip link set tap0 up"
            .into(),
        format!(
            "{vmm} --kernel {k} --initrd {i} --mem-mib 256 \
             --drive id=data,path=/tmp/snap.disk --net tap=tap0,mac=02:00:ac:10:00:02 \
             --api-sock /tmp/snap.s1 --serial /tmp/c1.log --cmdline {c} 2>/tmp/snap.err1 & P=$!",
            vmm = sh_quote(VMM),
            k = sh_quote(&assets.vmlinux.to_string_lossy()),
            i = sh_quote(&assets.initramfs.to_string_lossy()),
            c = sh_quote(&cmdline),
        ),
        wait_counts("/tmp/c1.log", 6),
        api(
            "/tmp/snap.s1",
            "PATCH",
            "/vm",
            r#"{"state":"Paused"}"#,
            "PAUSE-HTTP",
        ),
        "sleep 2; L1=$(wc -c < /tmp/c1.log)".into(),
        "sleep 2; echo \"PAUSED-GREW $(( $(wc -c < /tmp/c1.log) - L1 ))\"".into(),
        "S=$(date +%s%N)".into(),
        api(
            "/tmp/snap.s1",
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path":"/tmp/snap.state","mem_file_path":"/tmp/snap.mem"}"#,
            "CREATE-HTTP",
        ),
        "echo \"CREATE-WALL-MS $(( ($(date +%s%N) - S) / 1000000 ))\"".into(),
        "kill -9 $P; wait $P 2>/dev/null".into(),
        "echo \"SNAP-BYTES $(stat -c %s /tmp/snap.state)\"".into(),
        "echo \"MEM-BYTES $(stat -c %s /tmp/snap.mem) $(( $(stat -c %b /tmp/snap.mem) * 512 ))\""
            .into(),
        "echo '--- before'; cat /tmp/c1.log; echo '--- end before'".into(),
        "S=$(date +%s%N)".into(),
        format!(
            "{vmm} --restore /tmp/snap.state --restore-mem /tmp/snap.mem \
             --drive id=data,path=/tmp/snap.disk --net tap=tap0,mac=02:00:ac:10:00:02 \
             --serial /tmp/c2.log --api-sock /tmp/snap.s2 2>/tmp/snap.err2 & P=$!",
            vmm = sh_quote(VMM)
        ),
        "for t in $(seq 1 600); do [ -s /tmp/c2.log ] && break; sleep 0.05; done".into(),
        "echo \"FIRST-OUTPUT-MS $(( ($(date +%s%N) - S) / 1000000 ))\"".into(),
        wait_counts("/tmp/c2.log", 4),
        "kill $P; wait $P 2>/dev/null".into(),
        "echo '--- after'; cat /tmp/c2.log; echo '--- end after'".into(),
        "echo '--- vmm logs'; cat /tmp/snap.err1 /tmp/snap.err2".into(),
        "rm -f /tmp/snap.*".into(),
    ]
    .join("\n");
    let out = testhost_run(&script, Duration::from_secs(1200));
    let all = format!("{}\n--- stderr ---\n{}", out.stdout, out.stderr);
    assert_eq!(out.status, 0, "{all}");
    assert_eq!(field(&out.stdout, "PAUSE-HTTP"), Some("204"), "{all}");
    assert_eq!(
        field(&out.stdout, "PAUSED-GREW"),
        Some("0"),
        "the guest printed while paused:\n{all}"
    );
    assert_eq!(field(&out.stdout, "CREATE-HTTP"), Some("200"), "{all}");
    let before_text = section(&out.stdout, "--- before\n", "--- end before");
    let after_text = section(&out.stdout, "--- after\n", "--- end after");
    let before = counts(before_text);
    let after = counts(after_text);
    let (last_n, last_up, _, _) = before.last().cloned().expect("counts before");
    let (first_n, first_up, _, _) = after.first().cloned().expect("counts after restore");
    // The pause may catch the guest mid-line; the restored guest finishes
    // that line, so both consoles together read as one unbroken count.
    let joined = counts(&format!("{before_text}{after_text}"));
    assert!(
        first_n == last_n + 1 || first_n == last_n + 2,
        "the counter goes on from the snapshot ({last_n}), no reset:\n{all}"
    );
    assert!(
        joined.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "one unbroken count across the restore:\n{all}"
    );
    assert!(
        first_up > last_up,
        "uptime keeps increasing ({last_up} -> {first_up}):\n{all}"
    );
    assert!(
        after
            .windows(2)
            .all(|w| w[1].0 == w[0].0 + 1 && w[1].1 > w[0].1),
        "{all}"
    );
    for (n, _, read, _) in &after {
        assert_eq!(
            read,
            &format!("DISK-{n:08}"),
            "the disk took the write and gave it back after restore:\n{all}"
        );
    }
    assert!(
        before.iter().any(|c| c.3 == 1),
        "the guest reached the host over the tap before:\n{all}"
    );
    assert!(
        after.iter().skip(1).any(|c| c.3 == 1),
        "and after the restore:\n{all}"
    );
    // Numbers for docs/benchmarks.md.
    eprintln!(
        "snapshot: create {} ms (wall), snapshot file {} bytes, memory file {:?}; restore: first output after {} ms",
        field(&out.stdout, "CREATE-WALL-MS").unwrap_or("?"),
        field(&out.stdout, "SNAP-BYTES").unwrap_or("?"),
        field(&out.stdout, "MEM-BYTES").unwrap_or("?"),
        field(&out.stdout, "FIRST-OUTPUT-MS").unwrap_or("?"),
    );
    for l in out.stdout.lines().filter(|l| {
        l.contains("snapshot /tmp") || l.contains("restored ") || l.starts_with("{\"snapshot_bytes")
    }) {
        eprintln!("{l}");
    }
}
