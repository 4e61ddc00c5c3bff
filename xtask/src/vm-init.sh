#!/bin/busybox sh
# /init of a `cargo xtask vm-test` guest (xtask/src/vm.rs packs it): mounts what the agent
# needs, loads the virtio disk's modules, runs every privileged test on its own and prints
# one marker line per step for the host to parse. /vm.env (written by xtask) sets
# FILTERS, HOOKS (tests to run again on the per-event hooks), BREAK, COUNTERS (the
# tests' counter path) and the kernel's name.
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin /mnt/disk
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
. /vm.env

marker() { echo; echo "UMBRA-VM-$*"; }

marker "BOOTED kernel=$(uname -r) arch=$(uname -m) uptime=$(cut -d' ' -f1 /proc/uptime)"
for m in /modules/*.ko; do
    [ -e "$m" ] || continue
    insmod "$m" || marker "FACT insmod-failed=$m"
done
ip link set lo up
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
mount -t ext4 /dev/vda /mnt/disk || marker "FACT disk=missing"
mkdir -p /mnt/disk/io /mnt/disk/tmp

export CI=true UMBRA_VM=1 NO_COLOR=1 RUST_BACKTRACE=1
export UMBRA_BIN=/bin/umbra UMBRA_WORKLOAD_BIN=/bin/umbra-workload
export UMBRA_TEST_DISK=/mnt/disk/io TMPDIR=/mnt/disk/tmp
[ -n "$BREAK" ] && export UMBRA_VM_BREAK="$BREAK"
[ -n "$COUNTERS" ] && export UMBRA_CAPTURE_COUNTERS="$COUNTERS"

marker "FACT cgroup2-controllers=$(tr ' ' ',' < /sys/fs/cgroup/cgroup.controllers)"
marker "FACT btf=$([ -e /sys/kernel/btf/vmlinux ] && echo yes || echo no)"
marker "FACT psi=$([ -e /proc/pressure/cpu ] && echo yes || echo no)"
# How each hook attaches on this kernel, from the agent's own start-up report.
cfg=
if [ -n "$COUNTERS" ]; then
    printf '[capture]\ncounters = "%s"\n' "$COUNTERS" > /tmp/counters.toml
    cfg="--config /tmp/counters.toml"
fi
umbra $cfg run --duration 1 --top 0 2>&1 | sed -n 's/.*Hook hook=\([^ ]*\) status=\(.*\)$/UMBRA-VM-HOOK \1 \2/p'

[ "$BREAK" = no-marker ] && exit 1
# run_tests TAG FILTER...: each test matching a filter (all without one) on its own,
# reported as "<binary>TAG <name>".
run_tests() {
    tag=$1
    shift
    for t in /tests/*; do
        bin=${t##*/}$tag
        names=$("$t" --list --format terse "$@") || { marker "LIST-FAILED $bin $?"; continue; }
        for name in $(echo "$names" | sed -n 's/: test$//p'); do
            marker "START $bin $name"
            "$t" --exact "$name" --test-threads=1 --nocapture 2>&1
            marker "END $bin $name $?"
        done
    done
}
run_tests "" $FILTERS
# The tests named by HOOKS again on the per-event hooks.
[ -n "$HOOKS" ] && (export UMBRA_CAPTURE_COUNTERS=hooks; run_tests @hooks $HOOKS)
marker "DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
