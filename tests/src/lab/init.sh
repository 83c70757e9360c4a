#!/bin/busybox sh
# /init of the lab host's initramfs: mount the host's root (read-only 9p + tmpfs overlay),
# chroot into it, run the caller's script with its stdout/stderr on the virtio-serial ports
# lab.stdout/lab.stderr, report its status on lab.status and power off.
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

# The ports appear asynchronously, once the host has announced them.
out= err= ctl=
find_ports() {
    for p in /sys/class/virtio-ports/*; do
        [ -e "$p/name" ] || continue
        case "$(cat "$p/name")" in
            lab.stdout) out="${p##*/}" ;;
            lab.stderr) err="${p##*/}" ;;
            lab.status) ctl="${p##*/}" ;;
        esac
    done
}
devdir=/dev
status() {
    [ -n "$ctl" ] && echo "LAB-STATUS $1" >"$devdir/$ctl"
    poweroff -f
}

nine="trans=virtio,version=9p2000.L,msize=262144"
mkdir -p /host /layer /newroot
# The host's root does not change under the lab: cache it (exec from 9p is slow otherwise).
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
devdir=/newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
if [ -n "$LAB_CWD" ]; then
    mkdir -p "/newroot$LAB_CWD"
    mount -t 9p -o "$nine" labcwd "/newroot$LAB_CWD" || status 253
fi

tries=0
find_ports
while [ ! -c "$devdir/$out" ] || [ ! -c "$devdir/$err" ] || [ ! -c "$devdir/$ctl" ]; do
    tries=$((tries + 1))
    [ "$tries" -gt 500 ] && { echo "lab: virtio-serial ports missing"; poweroff -f; }
    sleep 0.02
    find_ports
done

# Make the overlay the mount namespace's root, as switch_root does (keeping the initramfs):
# after a bare chroot the initramfs stays the namespace's root, and a setns(CLONE_NEWNS)
# into a container's namespace (runc exec) lands there instead of in the container.
cd /newroot || status 254
mount -o move . / || status 254
devdir=./dev
chroot . /bin/sh "$dir/run.sh" <$devdir/null >"$devdir/$out" 2>"$devdir/$err"
rc=$?
sync
status "$rc"
