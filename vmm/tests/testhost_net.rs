//! virtio-net on a tap end to end in the test host: the Debian guest
//! (virtio_net from its initramfs) gets the configured MAC, pings the
//! host's end of the tap, downloads a 3 MB file over HTTP (host -> guest,
//! RX with checksum offload) and uploads 2 MB over TCP (guest -> host, TX
//! with TSO through the vnet header, through a 1 MB/s TX rate limiter);
//! both sides compare digests.

use std::time::Duration;

use integration_tests::{base64, field, guest_assets, sh_quote, testhost_run};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");

const RECEIVER: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("172.16.0.1", 9000)); s.listen(1)
c, _ = s.accept()
with open("/tmp/up", "wb") as f:
    while True:
        b = c.recv(65536)
        if not b: break
        f.write(b)
"#;

#[test]
fn guest_on_a_tap_pings_and_moves_data_both_ways() {
    let assets = guest_assets();
    let guest = r#"
ip link set eth0 up && ip addr add 172.16.0.2/24 dev eth0
echo "MAC $(cat /sys/class/net/eth0/address)"
echo "PING $(ping -c 3 -W 3 172.16.0.1 | grep -c 'bytes from')"
echo "DOWN $(wget -q -O - http://172.16.0.1:8000/blob | md5sum | cut -d' ' -f1)"
dd if=/dev/urandom of=/tmp/u bs=1k count=2000 2>/dev/null
echo "UPSENT $(md5sum < /tmp/u | cut -d' ' -f1)"
t0=$(cut -d' ' -f1 /proc/uptime)
nc 172.16.0.1 9000 < /tmp/u
t1=$(cut -d' ' -f1 /proc/uptime)
echo "UPSECS $(awk "BEGIN { print $t1 - $t0 }")"
"#;
    let cmdline = format!(
        "console=ttyS0 quiet panic=-1 vmm.run={}",
        base64(guest.as_bytes())
    );
    let script = format!(
        "set -e; ip tuntap add tap0 mode tap vnet_hdr; ip addr add 172.16.0.1/24 dev tap0; ip link set tap0 up; \
         head -c 3000000 /dev/urandom > /tmp/blob; echo BLOB $(md5sum < /tmp/blob | cut -d' ' -f1); \
         (cd /tmp && python3 -m http.server 8000 --bind 172.16.0.1 >/dev/null 2>&1 &); \
         python3 -c {recv} & sleep 1; set +e; \
         {vmm} --kernel {k} --initrd {i} --mem-mib 256 --net tap=tap0,mac=02:00:ac:10:00:02,tx_bw=1000000 --cmdline {c}; \
         echo VMM-EXIT $?; wait %2 2>/dev/null; sleep 1; echo UPRECV $(md5sum < /tmp/up | cut -d' ' -f1)",
        recv = sh_quote(RECEIVER),
        vmm = sh_quote(VMM),
        k = sh_quote(&assets.vmlinux.to_string_lossy()),
        i = sh_quote(&assets.initramfs.to_string_lossy()),
        c = sh_quote(&cmdline),
    );
    let out = testhost_run(&script, Duration::from_secs(600));
    let all = format!("{}\n--- stderr ---\n{}", out.stdout, out.stderr);
    assert_eq!(out.status, 0, "{all}");
    assert_eq!(field(&out.stdout, "VMM-EXIT"), Some("0"), "{all}");
    assert_eq!(
        field(&out.stdout, "MAC"),
        Some("02:00:ac:10:00:02"),
        "{all}"
    );
    assert_eq!(field(&out.stdout, "PING"), Some("3"), "{all}");
    let blob = field(&out.stdout, "BLOB").expect("host blob digest");
    assert_eq!(
        field(&out.stdout, "DOWN"),
        Some(blob),
        "download intact:\n{all}"
    );
    let sent = field(&out.stdout, "UPSENT").expect("guest upload digest");
    assert_eq!(
        field(&out.stdout, "UPRECV"),
        Some(sent),
        "upload intact:\n{all}"
    );
}
