"""Run one benchmark guest and collect what it prints.

The guest (the tools initramfs, `vmm.run=<base64 script>`) prints lines the
harness understands:
  BENCH-MARK begin|end NAME     brackets a measured phase; the harness samples
                                CPU time (the VMM process and the whole host)
                                when it sees each line
  BENCH-JSON NAME {...}         a tool's JSON output on one line
  BENCH-TEXT NAME line          a tool's text output, one line at a time
"""
import base64
import json
import os
import subprocess
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid):
    """utime + stime of a whole process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def host_cpu_seconds():
    """(busy, total) CPU seconds of the machine, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])       # guest time is already inside user
    return (total - idle) / CLK_TCK, total / CLK_TCK


class Phase:
    def __init__(self):
        self.start = None
        self.end = None

    def seconds(self):
        return self.end["wall"] - self.start["wall"]

    def vmm_cores(self):
        a, b = self.start["proc"], self.end["proc"]
        if a is None or b is None:
            return None
        return (b - a) / self.seconds()

    def host_cores(self):
        return (self.end["host"] - self.start["host"]) / self.seconds()


def sample(pid):
    busy, _ = host_cpu_seconds()
    return {"wall": time.monotonic(), "proc": proc_cpu_seconds(pid), "host": busy}


def run_guest(cmd, timeout, log=None):
    """Start a VMM, read its console to the end; returns (json, text, phases, rc).

    text["console"] holds every console line (for error reports)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    results, texts, phases = {}, {}, {}
    console = []
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip("\r\n")
        console.append(line)
        if log is not None:
            log.write(line + "\n")
        if line.startswith("BENCH-MARK "):
            parts = line.split()
            if len(parts) == 3:
                phase = phases.setdefault(parts[2], Phase())
                setattr(phase, "start" if parts[1] == "begin" else "end", sample(proc.pid))
        elif line.startswith("BENCH-JSON "):
            parts = line.split(" ", 2)
            if len(parts) == 3:
                try:
                    results[parts[1]] = json.loads(parts[2])
                except json.JSONDecodeError as e:
                    results[parts[1]] = {"error": f"bad JSON from the guest: {e}"}
        elif line.startswith("BENCH-TEXT "):
            parts = line.split(" ", 2)
            if len(parts) >= 2:
                texts.setdefault(parts[1], []).append(parts[2] if len(parts) == 3 else "")
        if time.monotonic() > deadline:
            proc.kill()
            break
    rc = proc.wait()
    texts["console"] = console
    return results, texts, {k: v for k, v in phases.items() if v.start and v.end}, rc


def guest_cmdline(script):
    return "console=ttyS0 quiet panic=-1 vmm.run=" + base64.b64encode(script.encode()).decode()


def qemu_q35(qemu, kernel_bzimage, initrd, vcpus, mem_mib, cmdline, devices):
    """QEMU 10 q35 with KVM: the mainstream QEMU machine for virtio-pci."""
    return [qemu, "-M", "q35", "-enable-kvm", "-cpu", "host",
            "-smp", str(vcpus), "-m", str(mem_mib),
            "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
            "-serial", "stdio", "-kernel", kernel_bzimage, "-initrd", initrd,
            "-append", cmdline] + devices


def vmm_cmd(vmm, kernel_elf, initrd, vcpus, mem_mib, cmdline, devices):
    return [vmm, "--kernel", kernel_elf, "--initrd", initrd, "--vcpus", str(vcpus),
            "--mem-mib", str(mem_mib), "--cmdline", cmdline] + devices


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
