#!/bin/sh
# Smoke test of sriovctl against the test host's real igb PF and VFs (see docs/sriov.md).
# Run from the repository after building:
#   cargo build -p sriov && scripts/testhost.sh run -- sh sriov/scripts/testhost-smoke.sh target/debug/sriovctl
# Prints one line per check and "sriov-smoke: N passed, M failed"; exits 1 if any failed.
SRIOVCTL=${1:-target/debug/sriovctl}
STATE=/run/sriov-smoke
PF_IF=eth0
passed=0
failed=0

check() { # check DESCRIPTION COMMAND...
    description=$1; shift
    if "$@" >/dev/null 2>&1; then
        passed=$((passed + 1)); echo "ok: $description"
    else
        failed=$((failed + 1)); echo "FAILED: $description"
    fi
}
contains() { case "$1" in *"$2"*) return 0 ;; esac; return 1; }
lacks() { ! contains "$1" "$2"; }
driver_of() { basename "$(readlink "/sys/bus/pci/devices/$1/driver")" 2>/dev/null; }
pool() { "$SRIOVCTL" pool --state-dir "$STATE" "$@"; }
json_field() { sed -n "s/.*\"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" | head -1; }

ip link set "$PF_IF" down
out=$("$SRIOVCTL" enable "$PF_IF" 2 2>&1)
check "enable with the PF down is refused with the fix" contains "$out" "ip link set $PF_IF up"

ip link set "$PF_IF" up
sleep 1
check "enable 2 VFs with the PF up" "$SRIOVCTL" enable "$PF_IF" 2
list=$("$SRIOVCTL" list --json)
check "list shows 2 VFs on igbvf" test "$(echo "$list" | grep -c '"driver": "igbvf"')" = 2

lease=$(pool lease --instance i-smoke1 --mac 02:00:00:00:00:11 --holder-pid $$ 2>/dev/null)
vf=$(echo "$lease" | json_field bdf)
group=$(echo "$lease" | json_field iommu_group)
check "lease names a VF and a group" test -n "$vf" -a -n "$group"
check "leased VF is on vfio-pci" test "$(driver_of "$vf")" = vfio-pci
check "/dev/vfio/$group exists" test -c "/dev/vfio/$group"
check "PF shows the lease's MAC on the VF" contains "$(ip link show "$PF_IF")" "link/ether 02:00:00:00:00:11"
out=$(pool lease --vf "$vf" --instance i-smoke2 --mac 02:00:00:00:00:12 --holder-pid $$ 2>&1)
check "a second lease of the same VF is refused" contains "$out" "$vf is already leased to instance i-smoke1"
out=$(pool lease --instance i-smoke2 --mac 02:00:00:00:00:11 --holder-pid $$ 2>&1)
check "a second lease of the same MAC is refused" contains "$out" "MAC 02:00:00:00:00:11 is already in use"

out=$("$SRIOVCTL" enable "$PF_IF" 0 --state-dir "$STATE" 2>&1)
check "disabling VFs while one is leased is refused" contains "$out" "$vf (i-smoke1); release them first"
check "release" pool release --vf "$vf" --instance i-smoke1
check "released VF is back on igbvf" test "$(driver_of "$vf")" = igbvf
check "released VF's MAC is cleared" lacks "$(ip link show "$PF_IF")" "link/ether 02:00:00:00:00:11"

sleep 600 &
holder=$!
crashed=$(pool lease --instance i-smoke3 --mac 02:00:00:00:00:13 --holder-pid $holder 2>/dev/null | json_field bdf)
check "lease for a holder that will die" test "$(driver_of "$crashed")" = vfio-pci
kill $holder
wait $holder 2>/dev/null
check "reconcile releases the dead holder's lease" contains "$(pool reconcile 2>&1)" "released $crashed"
check "its VF is back on igbvf" test "$(driver_of "$crashed")" = igbvf
status=$(pool status 2>/dev/null)
check "the pool lists both VFs" test "$(echo "$status" | grep -c ': free$')" = 2

check "disable VFs" "$SRIOVCTL" enable "$PF_IF" 0 --state-dir "$STATE"
echo "sriov-smoke: $passed passed, $failed failed"
test "$failed" = 0
