#!/bin/busybox sh
# PID 1 of the virtio end-to-end test initramfs (busybox). Prints KEY lines the host test
# parses; every step prints a line whether it worked or not, so a failure names itself.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for d in /sys/block/vd*; do
    n=${d##*/}
    s=$(cat $d/serial 2>/dev/null)
    echo "DISK name=$n size=$(cat $d/size) ro=$(cat $d/ro) serial=$s"
    case "$s" in
        rw-disk) RW=/dev/$n ;;
        ro-disk) RO=/dev/$n ;;
    esac
done
mkdir -p /mnt/rw /mnt/ro /tmp
if mount -t ext4 "$RW" /mnt/rw; then
    echo "RW_READ $(cat /mnt/rw/hello.txt)"
    echo "written by the guest" > /mnt/rw/guest.txt
    dd if=/dev/urandom of=/mnt/rw/big.bin bs=64k count=64 2>/dev/null
    echo "RW_BIG $(md5sum /mnt/rw/big.bin | cut -d' ' -f1)"
    umount /mnt/rw && echo "RW_UMOUNT ok"
else
    echo "RW_MOUNT failed"
fi
if mount -t ext4 -o ro "$RO" /mnt/ro; then
    echo "RO_READ $(cat /mnt/ro/hello.txt)"
    umount /mnt/ro
fi
if dd if=/dev/zero of="$RO" bs=512 count=1 2>/dev/null; then echo "RO_WRITE allowed"; else echo "RO_WRITE refused"; fi
if [ -x /bin/vsock_probe ]; then
    /bin/vsock_probe echo 1234 NCONN &
    /bin/vsock_probe send 5000 NCONN NBYTES
    wait
fi
if [ -e /sys/class/net/eth0 ]; then
    ip link set lo up
    ip link set eth0 up
    echo "NET_MAC $(cat /sys/class/net/eth0/address)"
    if udhcpc -i eth0 -n -q -t 5 -s /bin/dhcp.sh; then
        gw=$(cat /tmp/gateway)
        echo "NET_DHCP gateway=$gw"
        # passt maps the gateway address to the host's loopback.
        echo "NET_REPLY $(/bin/vsock_probe http $gw NETPORT)"
    else
        echo "NET_DHCP failed"
    fi
fi
echo "ALL_DONE"
sync
reboot -f
