#!/bin/busybox sh
# /init of the lab host's initramfs: mount the host's root (read-only 9p + tmpfs overlay),
# chroot into it, run the caller's script, report its status on ttyS3 and power off.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

for m in /modules/*.ko; do
    insmod "$m" || echo "lab: insmod $m failed"
done

dir=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        lab.dir=*) dir="${arg#lab.dir=}" ;;
    esac
done

ctl=/dev/ttyS3
status() {
    stty -F "$ctl" raw -echo 2>/dev/null
    echo "LAB-STATUS $1" >"$ctl"
    poweroff -f
}

nine="trans=virtio,version=9p2000.L,msize=262144"
mkdir -p /host /layer /newroot
mount -t 9p -o "$nine,ro,cache=loose" hostroot /host || status 250
mount -t tmpfs -o mode=0755 tmpfs /layer
mkdir -p /layer/upper /layer/work
mount -t overlay -o lowerdir=/host,upperdir=/layer/upper,workdir=/layer/work overlay /newroot \
    || status 251

# The caller's environment: LAB_CWD (the writable working directory share, if any).
. "/host$dir/lab.env" || status 252

mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t cgroup2 cgroup2 /newroot/sys/fs/cgroup
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mount -o move /dev /newroot/dev
ctl=/newroot/dev/ttyS3
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
if [ -n "$LAB_CWD" ]; then
    mkdir -p "/newroot$LAB_CWD"
    mount -t 9p -o "$nine" labcwd "/newroot$LAB_CWD" || status 253
fi

for t in 1 2 3; do stty -F /newroot/dev/ttyS$t raw -echo; done
chroot /newroot /bin/sh "$dir/run.sh" </newroot/dev/null >/newroot/dev/ttyS1 2>/newroot/dev/ttyS2
rc=$?
sync
status "$rc"
