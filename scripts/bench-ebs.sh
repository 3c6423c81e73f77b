#!/usr/bin/env bash
# Benchmarks ebsd's NBD export against qemu-nbd serving a raw file, with the same client
# (fio's nbd engine, libnbd) and the same jobs: 4 KiB random read/write IOPS (depth 32)
# and 1 MiB sequential read/write throughput (depth 8) over a 1 GiB range.
#
#   scripts/bench-ebs.sh [seconds-per-job]      (default 10)
#
# A second table compares clients on ebsd at depth 16: fio's libnbd engine and the
# ebs-blockdev NbdClient the VMM's EBS backend uses (examples/nbd_client_bench.rs).
#
# Needs: scripts/setup/ebs.sh (qemu-nbd, fio), a Rust toolchain. The ebsd volume is an io2
# volume provisioned at 256,000 IOPS so that QoS does not bind. Both servers use the page
# cache (ebsd: buffered I/O, fdatasync on FLUSH/FUA; qemu-nbd: --cache=writeback), so the
# comparison is of the servers, not of O_DIRECT against buffering. The table is printed in
# Markdown (paste into docs/ebs.md).
set -euo pipefail

runtime="${1:-10}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo_root/target}"
for tool in fio qemu-nbd qemu-img python3; do
    command -v "$tool" >/dev/null || { echo "bench-ebs: $tool missing; run scripts/setup/ebs.sh" >&2; exit 1; }
done

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "bench-ebs: building release binaries" >&2
cargo build --release --quiet -p ebs-blockdev --bins --example nbd_client_bench
bin="$CARGO_TARGET_DIR/release"

"$bin/ebsd" serve --data-dir "$work/data" --nbd-listen "unix:$work/ebsd.sock" \
    --api-sock "$work/api.sock" >"$work/ebsd.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do [ -S "$work/api.sock" ] && break; sleep 0.1; done
ebs() { "$bin/ebs" --api-sock "$work/api.sock" "$@"; }
volume_id="$(ebs create-volume --size 256 --volume-type io2 --iops 256000 |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["VolumeId"])')"
export_name="$(ebs attach-volume --volume-id "$volume_id" --instance-id i-0123456789abcdef0 |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["NbdExport"]["ExportName"])')"

qemu-img create -q -f raw "$work/raw.img" 1G
qemu-nbd --format=raw --persistent --shared=8 --export-name=raw --cache=writeback --aio=threads \
    --discard=unmap "--socket=$work/qemu-nbd.sock" "$work/raw.img" &
pids+=("$!")
for _ in $(seq 100); do [ -S "$work/qemu-nbd.sock" ] && break; sleep 0.1; done

# One fio job; prints "iops MiB/s".
run_job() { # uri rw bs depth
    fio --name=bench --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" \
        --size=1g --time_based --runtime="$runtime" --output-format=json 2>/dev/null |
        python3 -c '
import json, sys
text = sys.stdin.read()  # fio prints "connected to NBD server" before its JSON
job = json.loads(text[text.index("{"):])["jobs"][0]
side = job["read"] if job["read"]["io_bytes"] else job["write"]
print("%.0f %.0f" % (side["iops"], side["bw_bytes"] / 1048576))'
}

declare -A results
for target in ebsd qemu-nbd; do
    if [ "$target" = ebsd ]; then
        uri="nbd+unix:///$export_name?socket=$work/ebsd.sock"
    else
        uri="nbd+unix:///raw?socket=$work/qemu-nbd.sock"
    fi
    echo "bench-ebs: $target: filling 1 GiB" >&2
    fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1m --iodepth=8 --size=1g \
        --output-format=json >/dev/null 2>&1
    for job in "randread 4k 32" "randwrite 4k 32" "read 1m 8" "write 1m 8"; do
        set -- $job
        echo "bench-ebs: $target: $1 $2 depth $3 for ${runtime}s" >&2
        results["$target $1"]="$(run_job "$uri" "$1" "$2" "$3")"
    done
done

# The clients on ebsd at the depth the VMM's EBS backend has (16 I/O threads per
# drive): fio's libnbd engine against the ebs-blockdev NbdClient the VMM uses.
uri="nbd+unix:///$export_name?socket=$work/ebsd.sock"
client_rows=()
for rw in randread randwrite; do
    echo "bench-ebs: clients: $rw 4k depth 16 for ${runtime}s" >&2
    read -r libnbd_iops _ <<<"$(run_job "$uri" "$rw" 4k 16)"
    line="$("$bin/examples/nbd_client_bench" "unix:$work/ebsd.sock" "$export_name" \
        "${rw#rand}" 16 "$runtime" 4096 $((1 << 30)))"
    client_rows+=("| $rw 4k, 16 in flight | $libnbd_iops | ${line#*: } |")
done

echo "| job | ebsd IOPS | ebsd MiB/s | qemu-nbd IOPS | qemu-nbd MiB/s |"
echo "|---|---:|---:|---:|---:|"
for job in "randread 4k QD32:randread" "randwrite 4k QD32:randwrite" "read 1M QD8:read" "write 1M QD8:write"; do
    label="${job%%:*}"; key="${job##*:}"
    read -r ebsd_iops ebsd_mibps <<<"${results[ebsd $key]}"
    read -r qemu_iops qemu_mibps <<<"${results[qemu-nbd $key]}"
    echo "| $label | $ebsd_iops | $ebsd_mibps | $qemu_iops | $qemu_mibps |"
done
echo
echo "| ebsd, client | fio libnbd IOPS | ebs-blockdev NbdClient (the VMM's) |"
echo "|---|---:|---|"
printf '%s\n' "${client_rows[@]}"
