#!/bin/sh
# shutdown hook of dracut/90sanroot (issue 5): log the root disk's session
# out cleanly at power-off and reboot.
#
# At shutdown systemd-shutdown spares the '@sanroot' daemon in its kill
# sweeps, unmounts what it can, remounts / read-only and, when dracut's
# shutdown module left /run/initramfs/shutdown (dracut-shutdown.service
# unpacks the initramfs there; sanroot-boot.sh asks for it with
# need_shutdown), pivots into /run/initramfs and runs it. That script
# unmounts the old root (/oldroot) and then runs the shutdown hooks, this
# one among them. The LUN is no longer mounted now, so the daemon accepts a
# stop: `sanroot detach` has it remove the device, send SYNCHRONIZE CACHE,
# log out and exit.
#
# Bounded: the whole detach gets SANROOT_SHUTDOWN_TIMEOUT seconds
# (rd.sanroot.shutdown_timeout=, default 90: the daemon's final
# SYNCHRONIZE CACHE and logout are bounded at 30 s and 10 s, detach waits
# 60 s for it); a target that does not answer
# must not hold the power-off forever. Returning non-zero makes dracut run
# the hook again (up to 40 times) — only done while the disk is still in use
# (something else may release it, e.g. another hook); any other failure is
# logged once and the shutdown goes on.

type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

# A line on the console and in the kernel log, whatever the log level.
sanroot_say() {
    echo "<5>sanroot-shutdown: $*" > /dev/kmsg 2> /dev/null || echo "sanroot-shutdown: $*" >&2
}

sanroot_shutdown() {
    local _run _dev _target _rc _limit _out
    # /run of the real root: systemd-shutdown binds it into the new root;
    # dracut's /shutdown moves the old root's mounts to /oldsys.
    for _run in /run/sanroot /oldsys/run/sanroot; do
        [ -e "$_run/boot.json" ] && break
    done
    [ -e "$_run/boot.json" ] || return 0
    # The record (sanroot's hand-off, pretty-printed JSON): the top-level
    # "device" and "target" keys.
    _dev=$(sed -n 's|^  "device": "\(/dev/[^"]*\)",\{0,1\}$|\1|p' "$_run/boot.json")
    _target=$(sed -n 's|^  "target": "\([^"]*\)",\{0,1\}$|\1|p' "$_run/boot.json")
    if [ -z "$_dev" ]; then
        sanroot_say "no device in $_run/boot.json; not logging out"
        return 0
    fi
    # Already done in an earlier round.
    [ -e "$_run/devices/${_dev#/dev/}.json" ] || return 0
    _limit=$(getargnum 90 5 600 rd.sanroot.shutdown_timeout)
    _out=$(SANROOT_RUN_DIR="$_run" timeout -s KILL "$_limit" /usr/sbin/sanroot detach "$_dev" 2>&1)
    _rc=$?
    case "$_rc" in
        0)
            sanroot_say "$_dev: cache flushed, logged out of ${_target:-the target}, device removed"
            return 0
            ;;
        137)
            sanroot_say "$_dev: detach did not finish within $_limit s; powering off without a clean logout (rd.sanroot.shutdown_timeout=)"
            return 0
            ;;
    esac
    case "$_out" in
        *"in use"*)
            # Still mounted or held: dracut runs the hook again; on the
            # last round ("final") say so and let the shutdown go on.
            if [ "$1" = final ]; then
                sanroot_say "$_dev is still in use at the end of the shutdown; powering off without a logout: $_out"
                return 0
            fi
            return 1
            ;;
    esac
    sanroot_say "$_dev: detach failed (status $_rc): $_out"
    return 0
}

sanroot_shutdown "$1"
