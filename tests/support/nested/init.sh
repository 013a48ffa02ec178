#!/bin/sh
# PID 1 of the L1 VM (the nested tier). Loads kvm-amd and the 9p/overlay/virtio modules,
# mounts the host's root read-only over 9p with a tmpfs overlay on top (so tests can write
# anywhere without touching the host), mounts the writable results directory at
# /nested-out, and runs /nested-out/job.sh with that root as its root (switch_root). Every line it prints
# for the host starts with "nested:"; the host reads the job's outcome from /nested-out.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

say() { echo "nested: $*"; }
finish() { sync; say "poweroff"; poweroff -f; sleep 5; echo o > /proc/sysrq-trigger; }

for m in $(cat /lib/modules/order); do
    insmod "/lib/modules/$m" || say "insmod $m failed"
done
if [ ! -c /dev/kvm ]; then
    grep -q svm /proc/cpuinfo || say "no-svm: the L1 CPU has no svm flag"
    say "no-kvm: /dev/kvm did not appear after loading kvm-amd"
    finish
fi

opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$opts,ro,cache=loose" hostroot /lower || { say "no-hostroot: 9p mount failed"; finish; }
mount -t tmpfs -o size=75% rw /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || { say "no-overlay: overlay mount failed"; finish; }
mkdir -p /newroot/nested-out
mount -t 9p -o "$opts" nestedout /newroot/nested-out || { say "no-out: 9p mount failed"; finish; }
mount -t proc proc /newroot/proc
mount -t sysfs sys /newroot/sys
# KVM's own per-VM counters (exits handled inside KVM, by reason) live in debugfs; the
# benchmarks read them. Harmless if it fails.
mount -t debugfs debugfs /newroot/sys/kernel/debug 2>/dev/null || true
# cgroup v2, as a systemd host mounts it: podman and containerd's runc shim put their
# processes (conmon, the shim) into cgroups under it.
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup || say "cgroup2 mount failed"
mount -t devtmpfs dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs shm /newroot/dev/shm
mount -t tmpfs -o size=50% tmp /newroot/tmp
mount -t tmpfs run /newroot/run

# A NIC with a default route, reaching nothing (QEMU's user network with restrict=on):
# passt inside L1 takes its addresses from it.
ip link set lo up
# A machine has a name: Docker gives a --network host container the host's, and "(none)",
# the kernel's default, is not a valid one.
hostname l1
if ip link set eth0 up 2>/dev/null; then
    ip addr add 10.0.2.15/24 dev eth0
    ip route add default via 10.0.2.2
fi

say "ready: $(uname -r), $(grep -c ^processor /proc/cpuinfo) cpu(s)"
# switch_root, not chroot: a chrooted process may not create user namespaces (EPERM), and
# passt, which the device tests start, sandboxes itself in one. After switch_root the new
# root is the namespace's root. The job shell becomes PID 1: it powers L1 off itself.
exec switch_root /newroot /bin/sh -c \
    'sh /nested-out/job.sh; echo "nested: job exited $?"; sync; echo "nested: poweroff";
     echo o > /proc/sysrq-trigger; sleep 10'
