#!/usr/bin/env python3
"""Network benchmark: the same guest image (tools initramfs) under several
network set-ups, one after another in one session, measured with the same
tools:

  vmm-virtio    vmm, virtio-net on a tap (emulated ENI)
  qemu-virtio   QEMU 10 q35, virtio-net-pci on the same tap (vhost off, as
                vmm has no vhost either)
  vmm-vf        vmm with an SR-IOV VF passed through (enhanced networking)

Per set-up: iperf3 TCP guest->host with 1 and 4 streams, host->guest with 1,
UDP with 64-byte datagrams (packets per second received), sockperf TCP
ping-pong latency (its figures are RTT/2), and CPU: the VMM process's own
cores and the whole host's busy cores during the 1-stream TCP run, divided by
its Gbit/s. The peers (iperf3 -s, sockperf server) run on this host: on the
tap's address for virtio-net, on the PF's address for the VF.

Needs root. Prints a Markdown table and one BENCH-JSON line; --json-out
writes the same JSON to a file (scripts/bench-net.sh renders the PNG chart).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from guest import guest_cmdline, median, qemu_q35, run_guest, vmm_cmd  # noqa: E402

TAP = "tap0"
TAP_HOST_IP, TAP_GUEST_IP, TAP_PREFIX = "172.31.16.1", "172.31.16.10", 20
MAC_TAP, MAC_VF = "02:00:ac:1f:10:0a", "02:00:ac:1f:10:0b"

GUEST_SCRIPT = r"""
T={seconds}
SERVER={server}
ip link set eth0 up
for i in $(seq 60); do [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" = 1 ] && break; sleep 0.5; done
ip addr add {guest_ip} dev eth0
echo "BENCH-TEXT setup driver=$(basename $(readlink /sys/class/net/eth0/device/driver)) carrier=$(cat /sys/class/net/eth0/carrier)"
ping -c 2 -W 5 $SERVER >/dev/null 2>&1 || echo "BENCH-TEXT setup ping to $SERVER failed"
iperf() {{
    name=$1; shift
    echo "BENCH-MARK begin $name"
    iperf3 -c $SERVER -J -i 0 -t $T -O 1 "$@" > /tmp/o.json 2>&1
    echo "BENCH-MARK end $name"
    echo "BENCH-JSON $name $(tr -d '\n' < /tmp/o.json)"
}}
iperf tcp-tx-1 -P 1
iperf tcp-tx-4 -P 4
iperf tcp-rx-1 -R
iperf udp64 -u -l 64 -b 0
echo "BENCH-MARK begin tcp-rr"
sockperf ping-pong --tcp -i $SERVER -p 11111 -t $T -m 64 > /tmp/s.txt 2>&1
echo "BENCH-MARK end tcp-rr"
sed 's/^/BENCH-TEXT tcp-rr /' /tmp/s.txt
"""


def sh(cmd, check=True):
    return subprocess.run(cmd, shell=True, check=check, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True).stdout.strip()


class Peers:
    """iperf3 and sockperf servers on every host address."""

    def __enter__(self):
        self.procs = [
            subprocess.Popen(["iperf3", "-s"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            subprocess.Popen(["sockperf", "server", "--tcp", "-i", "0.0.0.0", "-p", "11111"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        ]
        time.sleep(1)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def set_up_tap():
    sh(f"ip link del {TAP}", check=False)
    sh(f"ip tuntap add {TAP} mode tap vnet_hdr")
    sh(f"ip addr add {TAP_HOST_IP}/{TAP_PREFIX} dev {TAP}")
    sh(f"ip link set {TAP} up")


def set_up_vfs(args):
    """PF up with the peers' address; VFs enabled (sriovctl); the pool leases one."""
    sh(f"ip link set {args.pf} up")
    time.sleep(2)  # the PF's link must be up before VFs come (their mailbox reports it)
    if args.pf_ip not in sh(f"ip -4 addr show dev {args.pf}"):
        sh(f"ip addr add {args.pf_ip}/{args.pf_prefix} dev {args.pf}")
    if int(open(f"/sys/class/net/{args.pf}/device/sriov_numvfs").read()) == 0:
        sh(f"{args.sriovctl} enable {args.pf} 2")


def gbps(result):
    try:
        return result["end"]["sum_received"]["bits_per_second"] / 1e9
    except (KeyError, TypeError):
        return None


def udp_pps(result):
    try:
        s = result["end"]["sum"]
        return (s["packets"] - s["lost_packets"]) / s["seconds"]
    except (KeyError, TypeError, ZeroDivisionError):
        return None


def sockperf_latency(lines):
    text = "\n".join(lines or [])
    avg = re.search(r"avg-latency=([\d.]+)", text)
    p99 = re.search(r"percentile 99\.000 =\s+([\d.]+)", text)
    return (float(avg.group(1)) if avg else None, float(p99.group(1)) if p99 else None)


def measure(name, cmd, args, log):
    results, texts, phases, rc = run_guest(cmd, args.timeout, log)
    row = {
        "setup": " ".join(texts.get("setup", [])),
        "exit": rc,
        "tcp_tx_1_gbps": gbps(results.get("tcp-tx-1")),
        "tcp_tx_4_gbps": gbps(results.get("tcp-tx-4")),
        "tcp_rx_1_gbps": gbps(results.get("tcp-rx-1")),
        "udp64_pps": udp_pps(results.get("udp64")),
    }
    row["rr_avg_us"], row["rr_p99_us"] = sockperf_latency(texts.get("tcp-rr"))
    phase = phases.get("tcp-tx-1")
    if phase and row["tcp_tx_1_gbps"]:
        vmm_cores = phase.vmm_cores()
        row["vmm_cores_per_gbps"] = vmm_cores / row["tcp_tx_1_gbps"] if vmm_cores is not None else None
        row["host_cores_per_gbps"] = phase.host_cores() / row["tcp_tx_1_gbps"]
    errors = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    if errors:
        row["errors"] = errors
    if row["tcp_tx_1_gbps"] is None:
        print(f"{name}: no result; the end of its console:", flush=True)
        for line in texts["console"][-60:]:
            print(f"  | {line}")
    print(f"{name}: {json.dumps(row)}", flush=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["vmm-vs-qemu", "enhanced", "all"], default="all")
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--qemu")
    ap.add_argument("--sriovctl")
    ap.add_argument("--kernel", required=True, help="ELF vmlinux (vmm)")
    ap.add_argument("--bzimage", required=True, help="bzImage (QEMU q35)")
    ap.add_argument("--initrd", required=True, help="the tools initramfs")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--mem-mib", type=int, default=768)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--pf", default="eth0", help="SR-IOV PF for the VF set-up")
    ap.add_argument("--pf-ip", default="10.0.2.15")
    ap.add_argument("--pf-prefix", type=int, default=24)
    ap.add_argument("--vf-guest-ip", default="10.0.2.16")
    ap.add_argument("--vf-pool", default="/run/vf-pool-bench")
    ap.add_argument("--json-out")
    ap.add_argument("--log", default="/tmp/bench-net-console.log")
    args = ap.parse_args()

    want = {"vmm-vs-qemu": ["vmm-virtio", "qemu-virtio"],
            "enhanced": ["vmm-vf", "vmm-virtio"],
            "all": ["vmm-virtio", "qemu-virtio", "vmm-vf"]}[args.mode]
    if "qemu-virtio" in want and not args.qemu:
        ap.error("--qemu is needed for qemu-virtio")
    if "vmm-vf" in want and not args.sriovctl:
        ap.error("--sriovctl is needed for vmm-vf")

    set_up_tap()
    if "vmm-vf" in want:
        set_up_vfs(args)

    def script(server, guest_ip):
        return guest_cmdline(GUEST_SCRIPT.format(seconds=args.seconds, server=server, guest_ip=guest_ip))

    tap_cmdline = script(TAP_HOST_IP, f"{TAP_GUEST_IP}/{TAP_PREFIX}")
    vf_cmdline = script(args.pf_ip, f"{args.vf_guest_ip}/{args.pf_prefix}")
    commands = {
        "vmm-virtio": vmm_cmd(args.vmm, args.kernel, args.initrd, args.vcpus, args.mem_mib, tap_cmdline,
                              ["--net", f"tap={TAP},mac={MAC_TAP},ip={TAP_GUEST_IP}/{TAP_PREFIX}"]),
        "qemu-virtio": qemu_q35(args.qemu, args.bzimage, args.initrd, args.vcpus, args.mem_mib, tap_cmdline,
                                ["-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
                                 "-device", f"virtio-net-pci,netdev=n0,mac={MAC_TAP}"])
        if args.qemu else None,
        "vmm-vf": vmm_cmd(args.vmm, args.kernel, args.initrd, args.vcpus, args.mem_mib, vf_cmdline,
                          ["--vf", f"pool={args.vf_pool},mac={MAC_VF},instance=i-0bench000000000000"]),
    }

    rows = {name: [] for name in want}
    with Peers(), open(args.log, "w") as log:
        for i in range(args.runs):
            for name in want:
                log.write(f"==== run {i + 1} {name}\n")
                rows[name].append(measure(name, commands[name], args, log))

    keys = ["tcp_tx_1_gbps", "tcp_tx_4_gbps", "tcp_rx_1_gbps", "udp64_pps", "rr_avg_us", "rr_p99_us",
            "vmm_cores_per_gbps", "host_cores_per_gbps"]
    summary = {name: {k: median([r.get(k) for r in runs]) for k in keys} for name, runs in rows.items()}

    def fmt(v, digits=2):
        return "n/a" if v is None else f"{v:.{digits}f}"

    print()
    print(f"| set-up | TCP tx 1 stream (Gbit/s) | TCP tx 4 streams | TCP rx 1 stream | UDP 64 B (kpps) "
          f"| TCP ping-pong avg / p99 (us, RTT/2) | VMM cores per Gbit/s | host cores per Gbit/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m in summary.items():
        kpps = None if m["udp64_pps"] is None else m["udp64_pps"] / 1000
        print(f"| {name} | {fmt(m['tcp_tx_1_gbps'])} | {fmt(m['tcp_tx_4_gbps'])} | {fmt(m['tcp_rx_1_gbps'])} "
              f"| {fmt(kpps, 1)} | {fmt(m['rr_avg_us'], 0)} / {fmt(m['rr_p99_us'], 0)} "
              f"| {fmt(m['vmm_cores_per_gbps'])} | {fmt(m['host_cores_per_gbps'])} |")
    out = {"benchmark": "net", "mode": args.mode, "seconds": args.seconds, "runs": args.runs,
           "summary": summary, "all": rows}
    print("BENCH-JSON " + json.dumps(out))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
