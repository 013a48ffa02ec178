#!/bin/busybox sh
# PID 1 of the Machine-API device tests (tests/devices_guest.py builds the initramfs).
# The host picks a scenario with SCRIPT=<name> on the kernel command line (the kernel hands
# such KEY=value words to init as environment variables); /scripts/<name> runs, printing
# KEY lines the host parses, then the guest powers off (a reset, with reboot=t).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mkdir -p /tmp /mnt/a /mnt/b

# /dev/vdX of the disk whose virtio-blk serial (GET_ID) is $1.
disk_by_serial() {
    for d in /sys/block/vd*; do
        [ "$(cat $d/serial 2>/dev/null)" = "$1" ] && { echo /dev/${d##*/}; return 0; }
    done
    return 1
}

# MARK lines are timestamped by the host on arrival (benchmarks).
mark() { echo "MARK $*"; }

# DHCP from the network back end (passt or QEMU's user network); gateway in /tmp/gateway.
net_up() {
    ip link set lo up
    ip link set eth0 up || { echo "NET_FAIL no eth0"; return 1; }
    echo "NET_MAC $(cat /sys/class/net/eth0/address)"
    udhcpc -i eth0 -n -q -t 5 -s /bin/dhcp.sh >/dev/null 2>&1 || { echo "NET_FAIL dhcp"; return 1; }
    echo "NET_GATEWAY $(cat /tmp/gateway)"
}

if [ -f "/scripts/$SCRIPT" ]; then
    echo "SCRIPT_START $SCRIPT"
    . "/scripts/$SCRIPT"
    echo "SCRIPT_DONE $SCRIPT"
else
    echo "SCRIPT_MISSING '$SCRIPT'"
fi
sync
reboot -f
