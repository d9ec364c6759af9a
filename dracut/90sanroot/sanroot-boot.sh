#!/bin/sh
# initqueue job of dracut/90sanroot: run `sanroot boot` once; on a failure
# that may pass (network, login, I/O) queue itself again, up to
# rd.sanroot.retries times (default 5), 3 s apart.
#
# The daemon `sanroot boot` leaves behind ('@sanroot') outlives the
# initramfs:
#  - with systemd, it is a child of dracut-initqueue.service, whose
#    KillMode=process stops only the queue's shell when the unit is stopped
#    at the isolate to initrd-switch-root.target; the kill sweep systemd does
#    at switch-root (and systemd-shutdown's at power-off) skips processes
#    whose argv[0] starts with '@'.
#  - without systemd, dracut's init execs switch_root, which kills nothing.
# At power-off it is stopped last, from this initramfs (need_shutdown below,
# sanroot-shutdown.sh).
#
# Under a slow CPU every process costs: the common path (the first attempt,
# ublk) forks nothing but modprobe and sanroot, and reads the command line
# only when it has to.

type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

# Load the bridges' modules and run `sanroot boot` (attempt $1); its
# status.
sanroot_run() {
    # ublk first, NBD as the fallback; sanroot picks (rd.sanroot.bridge=).
    # nbd only when it may be used: a second attempt, ublk not usable here
    # (no /dev/ublk-control, io_uring disabled), or asked for. Loading it
    # makes 16 idle /dev/nbdN for udev to process here and again in the
    # real root's coldplug, for nothing when the root goes over ublk.
    modprobe -q ublk_drv 2> /dev/null
    _iou=0 _cl= _nbd=
    read -r _iou 2> /dev/null < /proc/sys/kernel/io_uring_disabled
    # sanroot itself reads rd.sanroot.bridge= from /proc/cmdline.
    read -r _cl 2> /dev/null < /proc/cmdline
    case " $_cl " in
        *" rd.sanroot.bridge=nbd "*) _nbd=1 ;;
    esac
    if [ "$1" -gt 1 ] || [ ! -e /dev/ublk-control ] || [ "$_iou" = 2 ]; then
        _nbd=1
    fi
    [ -n "$_nbd" ] && modprobe -q nbd 2> /dev/null
    unset _iou _cl _nbd
    # sanroot reads the iBFT or netroot=/ip= and rd.sanroot.bridge= itself
    # and logs to /dev/kmsg; it prints the device on stdout. Into a file,
    # not a pipe: the resident daemon must not hold up a command
    # substitution.
    # Started as '@sanroot' (module-setup.sh's link, found through PATH),
    # the daemon's name is what systemd's kill sweeps spare, without the
    # exec of itself sanroot does otherwise.
    PATH=/usr/sbin:$PATH @sanroot boot > /tmp/sanroot.out 2> /tmp/sanroot.err
}

# The root disk is there (attempt $1).
sanroot_ready() {
    _dev=
    read -r _dev 2> /dev/null < /tmp/sanroot.out
    info "sanroot: root LUN is ${_dev} (attempt $1)"
    echo "${_dev}" > /tmp/sanroot.dev
    # The disk and its partitions exist; udev still has to make root='s
    # link (/dev/disk/by-uuid/…). Wait for just that here (settle returns
    # as soon as it exists, or when udev's queue is empty): the initqueue
    # checks for the root right after this job and then ends. Without it,
    # the check comes too early, and the initqueue goes round its loop
    # once more: a full settle and a 0.5 s sleep before it sees the root.
    case "${root-}" in
        block:/dev/*) udevadm settle --timeout=30 --exit-if-exists="${root#block:}" 2> /dev/null ;;
    esac
    # Power-off and reboot come back to this initramfs (dracut's shutdown
    # module: dracut-shutdown.service unpacks it to /run/initramfs only
    # when asked), where sanroot-shutdown.sh logs the session out once
    # the root is unmounted.
    mkdir -p /run/initramfs
    need_shutdown
    # dracut's shell init mounts /run noexec, and the real root's systemd
    # keeps that mount: systemd-shutdown would then find
    # /run/initramfs/shutdown not executable and power off with the root
    # still logged in. systemd's own /run is exec (nosuid, nodev).
    while read -r _src _mp _type _opts _rest; do
        if [ "$_mp" = /run ]; then
            case ",$_opts," in
                *,noexec,*) mount -o remount,exec /run || warn "sanroot: cannot remount /run exec: power-off will not log out" ;;
            esac
            break
        fi
    done < /proc/mounts
    unset _dev _src _mp _type _opts _rest
}

# `sanroot boot` failed with status $2 (attempt $1): say what it said, and
# queue the job again when trying again may help.
sanroot_failed() {
    # What it said on stderr (usage errors, before its kmsg logging is up).
    while read -r _l; do warn "sanroot: $_l"; done < /tmp/sanroot.err
    case "$2" in
        2 | 3 | 4)
            # usage, nothing to boot from, invalid iBFT: trying again will
            # not help.
            warn "sanroot: 'sanroot boot' failed with status $2 (attempt $1); not retrying"
            ;;
        *)
            _max=$(getargnum 5 1 100 rd.sanroot.retries)
            if [ "$1" -lt "$_max" ]; then
                warn "sanroot: 'sanroot boot' failed with status $2 (attempt $1 of $_max); trying again"
                sleep 3
                # shellcheck disable=SC2046
                /sbin/initqueue $(cat /tmp/sanroot.when 2> /dev/null) --onetime --unique --name sanroot /sbin/sanroot-boot
            else
                warn "sanroot: 'sanroot boot' failed with status $2; giving up after $1 attempts"
            fi
            ;;
    esac
    unset _l _max
}

_n=0
read -r _n 2> /dev/null < /tmp/sanroot.attempts
_n=$((_n + 1))
echo "$_n" > /tmp/sanroot.attempts
sanroot_run "$_n"
_rc=$?
if [ "$_rc" = 0 ]; then
    sanroot_ready "$_n"
else
    sanroot_failed "$_n" "$_rc"
fi
unset _rc _n
