#!/usr/bin/env python3
"""Boot-time and memory benchmark: vmm vs QEMU -M microvm, same kernel,
initramfs and command line, run back to back (alternating) in one session.

For each boot it records
  * wall time from spawning the VMM process to the guest init's first line
    on the serial console ("VMM-GUEST-MARKER booted"): the same measure for
    both VMMs;
  * for vmm, its own boot-timer reading (VMM start -> the guest's write to
    port 0x3f0, the first thing /init does);
  * the VMM process's peak RSS (VmHWM) and its file-backed / anonymous RSS
    when the marker appears.
It prints a Markdown table of medians and one JSON line ("BENCH-JSON ...").
Meant to run inside the test host (scripts/bench-boot.sh), but works on any
host with KVM.
"""
import argparse
import json
import re
import statistics
import subprocess
import time

MARKER = b"VMM-GUEST-MARKER booted"
BOOT_TIMER = re.compile(rb"Guest-boot-time = +(\d+) us")


def proc_status(pid):
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                    fields[key] = int(value.split()[0])  # kB
    except OSError:
        pass
    return fields


def boot_once(cmd, timeout):
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    marker_s = None
    status = {}
    boot_timer_us = None
    for line in proc.stdout:
        if marker_s is None and MARKER in line:
            marker_s = time.monotonic() - start
            status = proc_status(proc.pid)
        m = BOOT_TIMER.search(line)
        if m:
            boot_timer_us = int(m.group(1))
        if time.monotonic() - start > timeout:
            proc.kill()
            break
    rc = proc.wait()
    if marker_s is None:
        raise SystemExit(f"no marker from {cmd[0]} (exit {rc})")
    return {"marker_s": marker_s, "boot_timer_us": boot_timer_us, "exit": rc, **status}


def median(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm", required=True)
    ap.add_argument("--qemu", required=True)
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--mem-mib", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=180)
    args = ap.parse_args()

    cmdline = "console=ttyS0 quiet panic=-1 vmm.test=boot"
    vmm = [args.vmm, "--kernel", args.kernel, "--initrd", args.initrd,
           "--vcpus", str(args.vcpus), "--mem-mib", str(args.mem_mib), "--cmdline", cmdline]
    qemu = [args.qemu, "-M", "microvm", "-enable-kvm", "-cpu", "host",
            "-smp", str(args.vcpus), "-m", str(args.mem_mib),
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", "stdio", "-kernel", args.kernel, "-initrd", args.initrd,
            "-append", cmdline]

    results = {"vmm": [], "qemu-microvm": []}
    for i in range(args.runs):
        # Alternate so that drift in the machine's load hits both alike.
        for name, cmd in (("vmm", vmm), ("qemu-microvm", qemu)):
            r = boot_once(cmd, args.timeout)
            results[name].append(r)
            print(f"run {i + 1} {name}: marker {r['marker_s']:.2f} s, "
                  f"boot-timer {r['boot_timer_us']} us, VmHWM {r.get('VmHWM')} kB, exit {r['exit']}",
                  flush=True)

    print()
    print(f"| VMM | boot to init marker (s, median of {args.runs}) | vmm boot-timer (ms) "
          f"| peak RSS VmHWM (MiB) | RssFile (MiB) | RssAnon (MiB) |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for name, rows in results.items():
        m = {k: median(rows, k) for k in ("marker_s", "boot_timer_us", "VmHWM", "RssFile", "RssAnon")}
        summary[name] = m
        bt = f"{m['boot_timer_us'] / 1000:.0f}" if m["boot_timer_us"] else "n/a"
        mib = lambda v: f"{v / 1024:.1f}" if v is not None else "n/a"
        print(f"| {name} | {m['marker_s']:.2f} | {bt} | {mib(m['VmHWM'])} | "
              f"{mib(m['RssFile'])} | {mib(m['RssAnon'])} |")
    print("BENCH-JSON " + json.dumps({"summary": summary, "runs": results,
                                      "vcpus": args.vcpus, "mem_mib": args.mem_mib}))


if __name__ == "__main__":
    main()
