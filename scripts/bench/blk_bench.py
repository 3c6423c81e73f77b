#!/usr/bin/env python3
"""Block benchmark: the same guest image (tools initramfs, fio) with one
virtio-blk disk under vmm and under QEMU 10 (q35, virtio-blk-pci), on the same
backing, one after another in one session:

  raw   a raw file (the instance-store path): vmm --drive path=, QEMU
        -drive file=,format=raw,cache=writeback,aio=threads (vmm's raw backend
        uses the page cache too)
  ebs   an ebsd volume over NBD (vmm --drive vol=,endpoint=,token=; QEMU
        -blockdev driver=nbd), ebsd started here with a gp3 volume provisioned
        at 16000 IOPS / 1000 MiB/s so QoS does not cap either VMM

fio jobs (direct I/O, libaio): 4k random read and write at queue depth 32,
1 MiB sequential read and write at depth 8. Prints a Markdown table and one
BENCH-JSON line; --json-out writes the JSON.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from guest import guest_cmdline, median, qemu_q35, run_guest, vmm_cmd  # noqa: E402

JOBS = [
    ("randread-4k", "--rw=randread --bs=4k --iodepth=32"),
    ("randwrite-4k", "--rw=randwrite --bs=4k --iodepth=32"),
    ("read-1m", "--rw=read --bs=1M --iodepth=8"),
    ("write-1m", "--rw=write --bs=1M --iodepth=8"),
]

GUEST_SCRIPT = r"""
run() {{
    name=$1; shift
    echo "BENCH-MARK begin $name"
    fio --name=$name --filename=/dev/vda --direct=1 --ioengine=libaio --size={size_mib}M \
        --runtime={seconds} --time_based --ramp_time=1 --output-format=json "$@" > /tmp/o.json 2>/tmp/e.txt
    echo "BENCH-MARK end $name"
    echo "BENCH-JSON $name $(tr -d '\n' < /tmp/o.json)"
}}
{calls}
"""


def fio_numbers(result):
    """(IOPS, MiB/s, p99 completion latency in us) of a fio JSON result."""
    try:
        job = result["jobs"][0]
        side = job["read"] if job["read"]["io_bytes"] > 0 else job["write"]
        p99 = side.get("clat_ns", {}).get("percentile", {}).get("99.000000")
        return side["iops"], side["bw"] / 1024, (p99 / 1000 if p99 else None)
    except (KeyError, IndexError, TypeError):
        return None, None, None


class Ebsd:
    """ebsd in a temporary directory with one attached volume."""

    def __init__(self, ebsd, ebs, size_gib):
        self.dir = tempfile.mkdtemp(prefix="bench-blk-ebsd-")
        self.api = os.path.join(self.dir, "api.sock")
        self.nbd = os.path.join(self.dir, "nbd.sock")
        self.ebs = ebs
        self.proc = subprocess.Popen(
            [ebsd, "serve", "--data-dir", os.path.join(self.dir, "data"),
             "--nbd-listen", f"unix:{self.nbd}", "--api-sock", self.api],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            if os.path.exists(self.api) and os.path.exists(self.nbd):
                break
            time.sleep(0.05)
        vol = self.call("create-volume", "--size", str(size_gib), "--volume-type", "gp3",
                        "--iops", "16000", "--throughput", "1000")
        self.volume = vol["VolumeId"]
        for _ in range(200):
            state = self.call("describe-volumes", "--volume-ids", self.volume)["Volumes"][0]["State"]
            if state == "available":
                break
            time.sleep(0.05)
        att = self.call("attach-volume", "--volume-id", self.volume, "--instance-id",
                        "i-0123456789abcdef0", "--device", "/dev/vda")
        self.export = att["NbdExport"]["ExportName"]

    def call(self, *args):
        out = subprocess.run([self.ebs, *args], env={**os.environ, "EBS_API_SOCK": self.api},
                             check=True, stdout=subprocess.PIPE, text=True).stdout
        return json.loads(out)

    def close(self):
        self.proc.kill()
        self.proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--qemu", required=True)
    ap.add_argument("--ebsd")
    ap.add_argument("--ebs")
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--bzimage", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--backings", default="raw,ebs")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--disk-mib", type=int, default=384)
    ap.add_argument("--mem-mib", type=int, default=512)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json-out")
    args = ap.parse_args()

    calls = "\n".join(f"run {name} {opts}" for name, opts in JOBS)
    script = GUEST_SCRIPT.format(size_mib=args.disk_mib // 2, seconds=args.seconds, calls=calls)
    cmdline = guest_cmdline(script)
    backings = args.backings.split(",")
    raw = os.path.join(tempfile.mkdtemp(prefix="bench-blk-"), "disk.raw")
    with open(raw, "wb") as f:
        f.truncate(args.disk_mib << 20)
    # Written once so reads hit allocated blocks in both VMMs.
    subprocess.run(["dd", "if=/dev/urandom", f"of={raw}", "bs=1M", f"count={args.disk_mib}",
                    "conv=notrunc", "status=none"], check=True)
    # 32 GiB (thin: only written blocks are stored) so gp3 may be provisioned at
    # 16000 IOPS (500 IOPS per GiB at most).
    ebsd = Ebsd(args.ebsd, args.ebs, 32) if "ebs" in backings else None

    configs = {}
    if "raw" in backings:
        configs["vmm raw"] = vmm_cmd(args.vmm, args.kernel, args.initrd, 1, args.mem_mib, cmdline,
                                     ["--drive", f"id=d0,path={raw}"])
        configs["qemu raw"] = qemu_q35(args.qemu, args.bzimage, args.initrd, 1, args.mem_mib, cmdline,
                                       ["-drive", f"file={raw},format=raw,if=none,id=d0,cache=writeback,aio=threads",
                                        "-device", "virtio-blk-pci,drive=d0"])
    if ebsd:
        vol, token = ebsd.export.split("/", 1)
        configs["vmm ebs"] = vmm_cmd(args.vmm, args.kernel, args.initrd, 1, args.mem_mib, cmdline,
                                     ["--drive", f"id=d0,vol={vol},endpoint=unix:{ebsd.nbd},token={token}"])
        configs["qemu ebs"] = qemu_q35(args.qemu, args.bzimage, args.initrd, 1, args.mem_mib, cmdline,
                                       ["-blockdev", f"driver=nbd,server.type=unix,server.path={ebsd.nbd},"
                                        f"export={ebsd.export},node-name=d0,cache.direct=off",
                                        "-device", "virtio-blk-pci,drive=d0"])
    rows = {name: [] for name in configs}
    try:
        for i in range(args.runs):
            for name, cmd in configs.items():
                results, texts, phases, rc = run_guest(cmd, args.timeout)
                row = {"exit": rc}
                for job, _ in JOBS:
                    iops, mibs, p99 = fio_numbers(results.get(job))
                    row[job] = {"iops": iops, "mib_s": mibs, "p99_us": p99}
                    phase = phases.get(job)
                    if phase and iops:
                        vmm_cores = phase.vmm_cores()
                        row[job]["vmm_cores"] = vmm_cores
                if all(row[job]["iops"] is None for job, _ in JOBS):
                    print(f"{name}: no result; the end of its console:")
                    for line in texts["console"][-40:]:
                        print(f"  | {line}")
                print(f"run {i + 1} {name}: {json.dumps(row)}", flush=True)
                rows[name].append(row)
    finally:
        if ebsd:
            ebsd.close()

    summary = {name: {job: {k: median([r[job].get(k) for r in runs]) for k in ("iops", "mib_s", "p99_us", "vmm_cores")}
                      for job, _ in JOBS} for name, runs in rows.items()}

    def fmt(v, digits=0):
        return "n/a" if v is None else f"{v:.{digits}f}"

    print()
    print("| set-up | 4k randread IOPS (p99 us) | 4k randwrite IOPS (p99 us) | 1M read MiB/s | 1M write MiB/s |")
    print("|---|---|---|---|---|")
    for name, m in summary.items():
        print(f"| {name} | {fmt(m['randread-4k']['iops'])} ({fmt(m['randread-4k']['p99_us'])}) "
              f"| {fmt(m['randwrite-4k']['iops'])} ({fmt(m['randwrite-4k']['p99_us'])}) "
              f"| {fmt(m['read-1m']['mib_s'], 1)} | {fmt(m['write-1m']['mib_s'], 1)} |")
    out = {"benchmark": "blk", "seconds": args.seconds, "runs": args.runs, "summary": summary, "all": rows}
    print("BENCH-JSON " + json.dumps(out))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
