#!/usr/bin/env bash
# The part of scripts/bench-snapshot.sh that runs next to /dev/kvm:
#   snapshot_bench.sh VMM VMLINUX INITRAMFS RUNS MEM_MIB FILL_MIB
set -euo pipefail
vmm=$1 kernel=$2 initrd=$3 runs=$4 mem=$5 fill=$6
work=$(mktemp -d /tmp/snapbench.XXXXXX)
trap 'rm -rf "$work"' EXIT

guest="mkdir -p /mnt; mount -t tmpfs -o size=$((fill + 16))m tmpfs /mnt
dd if=/dev/urandom of=/mnt/fill bs=1M count=$fill 2>/dev/null
i=0; while true; do i=\$((i+1)); echo \"COUNT \$i\"; sleep 0.2; done"
cmdline="console=ttyS0 quiet panic=-1 vmm.run=$(printf '%s' "$guest" | base64 -w0)"

api() { curl -s --unix-socket "$1" -X "$2" "http://localhost$3" -d "$4"; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
wait_for() { # file pattern
    for _ in $(seq 1 3000); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
    echo "timeout waiting for $2 in $1" >&2; return 1
}
json() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

echo "| run | guest MiB | data written (MiB) | memory file allocated (MiB) | snapshot file (KiB) | pause (ms) | create (ms) | restore in vmm (ms) | restore to first guest output (ms) |"
echo "|---|---|---|---|---|---|---|---|---|"
for r in $(seq 1 "$runs"); do
    rm -f "$work"/*
    "$vmm" --kernel "$kernel" --initrd "$initrd" --mem-mib "$mem" --api-sock "$work/s1" \
        --serial "$work/c1" --cmdline "$cmdline" 2>"$work/e1" &
    p=$!
    wait_for "$work/c1" "COUNT 3"
    t0=$(now_ms)
    api "$work/s1" PATCH /vm '{"state":"Paused"}'
    t1=$(now_ms)
    stats=$(api "$work/s1" PUT /snapshot/create \
        "{\"snapshot_path\":\"$work/snap\",\"mem_file_path\":\"$work/mem\"}")
    kill -9 $p; wait $p 2>/dev/null || true
    last=$(grep -c '^COUNT' "$work/c1")
    t2=$(now_ms)
    "$vmm" --restore "$work/snap" --restore-mem "$work/mem" --serial "$work/c2" \
        --api-sock "$work/s2" 2>"$work/e2" &
    p=$!
    wait_for "$work/c2" "COUNT"
    t3=$(now_ms)
    kill $p; wait $p 2>/dev/null || true
    restore_ms=$(sed -n 's/.*restored .* in \([0-9.]*\) ms.*/\1/p' "$work/e2")
    data=$(echo "$stats" | json mem_data_bytes)
    alloc=$(( $(stat -c %b "$work/mem") * 512 ))
    echo "| $r | $mem | $((data >> 20)) | $((alloc >> 20)) | $(( $(stat -c %s "$work/snap") / 1024 )) | $((t1 - t0)) | $(echo "$stats" | json duration_ms) | $restore_ms | $((t3 - t2)) |"
    first=$(grep -m1 '^COUNT' "$work/c2" | tr -d '\r' | cut -d' ' -f2)
    [ "$first" -gt "$last" ] || echo "run $r: counter went from $last to $first" >&2
done
