#!/usr/bin/env bash
# The README's first command, after set-up (run by scripts/launch.sh, directly or inside
# the test host): import the default AMI into the front door's state once, then
# `ec2 run-instances` with no arguments, which boots it and attaches the console.
# Without a terminal: an instance whose user data prints a greeting and powers off
# (terminating it), its console followed to the end.
#
#   front-door-session.sh BIN_DIR AMI_DIR
set -euo pipefail
bin=$1 ami=$2
ec2=$bin/ec2
export NITRO_BIN_DIR=$bin
say() { echo "launch: $*" >&2; }

images=$("$ec2" describe-images --owners self --filters Name=name,Values=nitro-default)
if ! grep -q '"ImageId"' <<< "$images"; then
    say "importing the default AMI from $ami into ${NITRO_STATE_DIR:-/var/lib/nitro}"
    cmdline=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cmdline"])' "$ami/manifest.json")
    "$ec2" import-image --disk-containers "Format=raw,Url=file://$ami/root.img" \
        --kernel-file "$ami/kernel" --ramdisk-file "$ami/ramdisk.cpio.gz" \
        --kernel-parameters "$cmdline" --name nitro-default >/dev/null
fi

if [ -t 0 ]; then
    say "ec2 run-instances (the default AMI, t3.micro); type commands, Ctrl-D detaches"
    "$ec2" run-instances
    say "detached; the instance keeps running: ec2 describe-instances / terminate-instances"
else
    say "stdin is not a terminal: an instance whose user data greets and powers off"
    user_data=$(printf '#!/bin/sh\necho "guest: $(uname -sr), $(nproc) CPUs: hello from the default AMI"\npoweroff\n')
    "$ec2" run-instances --user-data "$user_data" \
        --instance-initiated-shutdown-behavior terminate --attach < /dev/null
fi
