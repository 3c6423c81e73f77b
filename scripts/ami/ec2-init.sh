#!/bin/sh
# /sbin/ec2-init: the default AMI's first-boot agent (a small cloud-init). Run by busybox
# init at every boot, after /etc/init.d/rcS, before the console shell starts.
# See docs/default-ami.md.
#
# 0. Grows the root file system to the size of its volume (resize2fs, online).
# 1. Brings the first network interface up with DHCP (udhcpc; the VMM answers).
# 2. Asks the metadata service (IMDSv2: PUT a token, then GET with it; IMDSv1 if the PUT
#    is refused) for instance-id, local-hostname and user-data (404 = none).
# 3. Sets the hostname from local-hostname.
# 4. Runs the user data as root ONCE PER INSTANCE (cloud-init's per-instance semantics):
#    state lives in /var/lib/cloud/instances/<instance-id>/, so a reboot or a stop/start
#    of the same instance does not run it again, but an instance launched from an image of
#    this disk (a new instance id) does. A user-data starting with "#!" is executed; any
#    other user data is saved but not run. Output goes to the console and to
#    /var/log/cloud-init-output.log.
# 5. Test hook: ec2init.test_cmd=<base64 shell snippet> on the kernel command line runs
#    the snippet after all of the above, prints "ec2-init: test_cmd exit N" and powers the
#    VM off cleanly (through init). For tests only: a booted image has no other way to run a
#    command without a person at the console.
#
# Console markers (one line each, prefix "ec2-init: "):
#   instance <id> user-data ran (exit <N>)
#   user-data already ran for <id>
#   no user-data
#   instance <id> user-data is not a script (no #!): saved to <path>, not run
#   ... and "error: ..." lines when the network or the metadata service fail.

export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root
umask 022

IMDS=http://169.254.169.254
CLOUD=/var/lib/cloud
OUTPUT_LOG=/var/log/cloud-init-output.log
AGENT_LOG=/var/log/ec2-init.log

say() {
    echo "ec2-init: $*"
    echo "$(date '+%F %T') $*" >> "$AGENT_LOG"
}

# ---- root file system size -----------------------------------------------------------
# Grow the root file system to its volume, as cloud-init's resizefs does at every boot: an
# instance may get a larger root volume than the image's (run-instances --block-device-
# mappings). The volume is unpartitioned, so there is no partition to grow first; ext4
# grows online. resize2fs only reads the superblock when there is nothing to do.
rootdev=$(awk '$2 == "/" && $1 ~ "^/dev/" { dev = $1 } END { print dev }' /proc/mounts)
if [ -b "$rootdev" ] && command -v resize2fs > /dev/null; then
    out=$(resize2fs "$rootdev" 2>&1)
    case "$out" in
        *"Nothing to do"*) ;;
        *"is now "*) say "root file system grown to $(df -h / | awk 'NR == 2 { print $2 }') ($rootdev)" ;;
        *) say "warning: resize2fs $rootdev: $(echo "$out" | tail -n 1)" ;;
    esac
fi

# ---- network -------------------------------------------------------------------------
# The first interface that is not loopback (eth0 with virtio-net; an SR-IOV VF's igbvf
# interface otherwise).
iface=
if [ -e /sys/class/net/eth0 ]; then
    iface=eth0
else
    for d in /sys/class/net/*; do
        n=${d##*/}
        [ "$n" = lo ] || [ ! -e "$d" ] || { iface=$n; break; }
    done
fi

net_up=0
if [ -z "$iface" ]; then
    say "no network interface; skipping the metadata service"
else
    ip link set "$iface" up
    # udhcpc stays in the background to renew the lease (-n: give up when no lease comes;
    # the script configures address, route, MTU and resolv.conf).
    if udhcpc -i "$iface" -s /usr/share/udhcpc/default.script -t 5 -T 2 -n \
            -p "/run/udhcpc.$iface.pid" > /dev/null 2>&1; then
        net_up=1
        say "$iface $(ip -4 -o addr show dev "$iface" | awk '{ print $4; exit }')"
    else
        say "error: no DHCP lease on $iface"
    fi
fi

# ---- metadata service ----------------------------------------------------------------
token=
imds_curl() { # PATH [CURL ARGS...]: GET latest/PATH with the token when there is one.
    p=$1; shift
    if [ -n "$token" ]; then
        curl -s --connect-timeout 2 --max-time 10 -H "X-aws-ec2-metadata-token: $token" \
            "$@" "$IMDS/latest/$p"
    else
        curl -s --connect-timeout 2 --max-time 10 "$@" "$IMDS/latest/$p"
    fi
}
imds_get() { imds_curl "$1" -f; }

iid=
if [ "$net_up" = 1 ]; then
    # IMDSv2. --retry: the first packets may race the link coming up.
    token=$(curl -s -f --connect-timeout 2 --max-time 10 --retry 3 --retry-connrefused \
        -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "$IMDS/latest/api/token") || token=
    [ -n "$token" ] || say "IMDSv2 token refused or unreachable; trying IMDSv1"
    iid=$(imds_get meta-data/instance-id) || iid=
    # The id names a directory: only EC2's shape (i- and hex digits) is accepted.
    case "$iid" in
        i-|i-*[!0-9a-f]*) say "error: unexpected instance-id from the metadata service; user data not handled"
           iid= ;;
        i-*) ;;
        *) say "error: metadata service unreachable (no instance-id); user data not handled"
           iid= ;;
    esac
fi

if [ -n "$iid" ]; then
    h=$(imds_get meta-data/local-hostname) || h=
    if [ -n "$h" ]; then
        # As cloud-init: the short name is the hostname, the full name goes to /etc/hosts.
        hostname "${h%%.*}"
        printf '%s\n' "${h%%.*}" > /etc/hostname
        printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s %s\n' "$h" "${h%%.*}" > /etc/hosts
        say "hostname ${h%%.*}"
    fi
fi

# ---- user data, once per instance ----------------------------------------------------
# Layout as cloud-init's: instances/<id>/{user-data.txt,scripts/part-001,sem/user-data},
# instance -> instances/<id>, data/{instance-id,previous-instance-id}.
if [ -n "$iid" ]; then
    dir=$CLOUD/instances/$iid
    mkdir -p "$dir/sem" "$dir/scripts" "$CLOUD/data"
    ln -sfn "instances/$iid" "$CLOUD/instance"
    prev=$(cat "$CLOUD/data/instance-id" 2>/dev/null) || prev=
    if [ "$prev" != "$iid" ]; then
        [ -z "$prev" ] || printf '%s\n' "$prev" > "$CLOUD/data/previous-instance-id"
        printf '%s\n' "$iid" > "$CLOUD/data/instance-id"
    fi
    if [ -e "$dir/sem/user-data" ]; then
        case "$(head -n 1 "$dir/sem/user-data")" in
            started*) say "user-data already ran for $iid" ;;
            "no user-data") say "no user-data" ;;
            *) say "user-data of $iid is not a script (no #!); not run" ;;
        esac
    else
        ud=$dir/user-data.txt
        code=$(imds_curl user-data -o "$ud.tmp" -w '%{http_code}') || code=000
        case "$code" in
        200)
            # EC2 passes user data through as given; cloud-init also accepts it gzipped.
            if [ "$(head -c 2 "$ud.tmp" | od -An -tx1 | tr -d ' \n')" = 1f8b ]; then
                gzip -dc < "$ud.tmp" > "$ud.gunzip" && mv "$ud.gunzip" "$ud.tmp"
            fi
            chmod 600 "$ud.tmp"
            mv "$ud.tmp" "$ud"
            if [ "$(head -c 2 "$ud")" = '#!' ]; then
                script=$dir/scripts/part-001
                cp "$ud" "$script"
                chmod 700 "$script"
                # The semaphore is on disk before the script starts: "at most once", even
                # when the script powers the VM off or reboots it without returning.
                echo "started $(date '+%F %T')" > "$dir/sem/user-data"
                sync
                say "instance $iid running user-data"
                {
                    echo "---- ec2-init: user-data of $iid, $(date '+%F %T') ----"
                    (cd / && "$script" < /dev/null 2>&1; echo $? > "$dir/user-data.exit")
                } 2>&1 | tee -a "$OUTPUT_LOG"
                rc=$(cat "$dir/user-data.exit" 2>/dev/null) || rc=unknown
                echo "finished $(date '+%F %T') exit $rc" >> "$dir/sem/user-data"
                sync
                say "instance $iid user-data ran (exit $rc)"
            else
                echo "not a script: saved, not run" > "$dir/sem/user-data"
                say "instance $iid user-data is not a script (no #!): saved to $ud, not run"
            fi
            ;;
        404)
            rm -f "$ud.tmp"
            echo "no user-data" > "$dir/sem/user-data"
            say "no user-data"
            ;;
        *)
            # Not recorded: the next boot asks again.
            rm -f "$ud.tmp"
            say "error: could not fetch user-data (HTTP $code); will retry at next boot"
            ;;
        esac
    fi
    : > "$dir/boot-finished"
else
    say "no user-data (no metadata service)"
fi
sync

# ---- test hook -----------------------------------------------------------------------
test_cmd=
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
    case "$arg" in ec2init.test_cmd=*) test_cmd=${arg#ec2init.test_cmd=} ;; esac
done
if [ -n "$test_cmd" ]; then
    printf '%s' "$test_cmd" | base64 -d > /run/ec2init-test-cmd.sh
    (cd / && sh /run/ec2init-test-cmd.sh < /dev/null 2>&1)
    say "test_cmd exit $?"
    # Through init (not -f): the clean shutdown path (inittab ::shutdown:) runs.
    poweroff
fi
exit 0
