#!/usr/bin/env bash
# Benchmarks imdsd on loopback with wrk: requests per second and p50/p99 latency for
# IMDSv2 GETs (token validated on every request) and token PUTs.
#
#   scripts/bench-imds.sh [DURATION_SECONDS] [CONNECTIONS]     (defaults 10, 8)
#
# imdsd runs on one core (taskset -c 0, single-threaded runtime); wrk runs on another
# (taskset -c 1, one thread). Needs wrk, curl (scripts/setup/imds.sh installs them).
# Prints a Markdown table for docs/imds.md.
set -euo pipefail

duration="${1:-10}"
connections="${2:-8}"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"

for tool in wrk curl taskset; do
    command -v "$tool" >/dev/null || { echo "bench-imds: $tool missing: run scripts/setup/imds.sh" >&2; exit 1; }
done

(cd "$repo_root" && nice cargo build --release -q -p imds --bin imdsd)
imdsd="$target_dir/release/imdsd"

work_dir="$(mktemp -d)"
daemon_pid=""
cleanup() {
    if [ -n "$daemon_pid" ]; then kill "$daemon_pid" 2>/dev/null || true; wait "$daemon_pid" 2>/dev/null || true; fi
    rm -rf "$work_dir"
}
trap cleanup EXIT

cat > "$work_dir/config.json" <<'JSON'
{"instances": [{
  "instance_id": "i-0123456789abcdef0", "image_id": "ami-0abcdef1234567890",
  "instance_type": "m5.large", "reservation_id": "r-0123456789abcdef0",
  "placement": {"availability_zone": "eu-west-1b"},
  "source_addresses": ["127.0.0.1"],
  "network_interfaces": [{"mac": "02:00:00:00:00:01", "interface_id": "eni-1",
    "private_ipv4s": ["172.31.16.10"], "subnet_id": "subnet-1",
    "subnet_ipv4_cidr_block": "172.31.16.0/20", "vpc_id": "vpc-1",
    "vpc_ipv4_cidr_blocks": ["172.31.0.0/16"]}],
  "metadata_options": {"http_tokens": "required", "requests_per_second": 0}
}]}
JSON

RUST_LOG=warn taskset -c 0 "$imdsd" --config "$work_dir/config.json" --listen 127.0.0.1:0 \
    --watch-interval 0 > "$work_dir/imdsd.out" 2> "$work_dir/imdsd.err" &
daemon_pid=$!
for _ in $(seq 50); do
    grep -q "listening on" "$work_dir/imdsd.out" 2>/dev/null && break
    sleep 0.1
done
port="$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work_dir/imdsd.out")"
[ -n "$port" ] || { echo "bench-imds: imdsd did not start" >&2; cat "$work_dir/imdsd.err" >&2; exit 1; }
base="http://127.0.0.1:$port"
token="$(curl -sf -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600' "$base/latest/api/token")"

cat > "$work_dir/put.lua" <<'LUA'
wrk.method = "PUT"
wrk.headers["X-aws-ec2-metadata-token-ttl-seconds"] = "21600"
LUA

# CPU time (user + system) imdsd has used so far, in clock ticks.
daemon_cpu_ticks() {
    awk '{print $14 + $15}' "/proc/$daemon_pid/stat"
}

# Runs wrk and prints "req/s p50 p99 cpu_us_per_request" (latencies in ms). The CPU cost
# per request does not depend on what else the machine runs, unlike the latency tail.
measure() {
    local output cpu_before cpu_after
    cpu_before="$(daemon_cpu_ticks)"
    output="$(taskset -c 1 wrk -t1 -c"$connections" -d"${duration}s" --latency "$@")"
    cpu_after="$(daemon_cpu_ticks)"
    echo "$output" >> "$work_dir/wrk.log"
    if echo "$output" | grep -q "Non-2xx"; then
        echo "bench-imds: some responses were not 200:" >&2
        echo "$output" >&2
        exit 1
    fi
    local rps p50 p99
    rps="$(echo "$output" | awk '/Requests\/sec/ {print $2}')"
    p50="$(echo "$output" | awk '$1 == "50%" {print $2}')"
    p99="$(echo "$output" | awk '$1 == "99%" {print $2}')"
    local requests cpu_per_request
    requests="$(echo "$output" | awk '/requests in/ {print $1}')"
    cpu_per_request="$(awk -v ticks="$((cpu_after - cpu_before))" -v hz="$(getconf CLK_TCK)" \
        -v n="$requests" 'BEGIN { printf "%.1f", ticks / hz * 1e6 / n }')"
    echo "$rps $(to_ms "$p50") $(to_ms "$p99") $cpu_per_request"
}
to_ms() {
    awk -v value="$1" 'BEGIN {
        unit = value; gsub(/[0-9.]/, "", unit); number = value + 0
        if (unit == "us") number /= 1000; else if (unit == "s") number *= 1000
        printf "%.3f", number }'
}

load_before="$(cut -d' ' -f1 /proc/loadavg)"
cpu_pressure="$(awk '/^some/ {sub("avg10=", "", $2); print $2 "%"}' /proc/pressure/cpu 2>/dev/null || echo n/a)"
get_result="$(measure -H "X-aws-ec2-metadata-token: $token" \
    "$base/latest/meta-data/placement/availability-zone")"
put_result="$(measure -s "$work_dir/put.lua" "$base/latest/api/token")"
read -r get_rps get_p50 get_p99 get_cpu <<< "$get_result"
read -r put_rps put_p50 put_p99 put_cpu <<< "$put_result"

echo
echo "imdsd on 1 core, wrk -t1 -c$connections -d${duration}s --latency, loopback ($(nproc) CPUs, $(uname -r), load average before: $load_before, CPU pressure avg10: $cpu_pressure)"
echo
echo "| request | req/s | p50 (ms) | p99 (ms) | imdsd CPU per request (µs) |"
echo "| --- | ---: | ---: | ---: | ---: |"
echo "| GET meta-data/placement/availability-zone with token | $get_rps | $get_p50 | $get_p99 | $get_cpu |"
echo "| PUT /latest/api/token | $put_rps | $put_p50 | $put_p99 | $put_cpu |"
