#!/bin/sh
# pre-trigger hook of dracut/90sanroot, dracut's shell init only: start the
# first `sanroot boot` now, in the background, rather than from the
# initqueue. The shell init runs its initqueue only after udev's coldplug
# has settled (seconds on a slow machine); from the iBFT sanroot loads the
# boot NIC's driver itself and waits for udev to be done with just that
# interface, so it can log in while the rest of the coldplug goes on (as
# the initqueue job already does under systemd, whose initqueue starts
# before the settle). The queued job (sanroot-boot.sh) waits for it and
# retries a failure.
#
# Not from netroot= (the NIC is only named: the job waits for the settle),
# not under systemd (this hook runs in a unit of its own, which would take
# the daemon with it when it stops), not without a running udev. Sourced
# by dracut's init: no exit.

sanroot_when=--settled
[ -e /tmp/sanroot.when ] && read -r sanroot_when < /tmp/sanroot.when
if [ -z "$sanroot_when" ] && [ ! -d /run/systemd/system ] && [ -e /run/udev/control ] \
    && [ ! -e /tmp/sanroot.lock ]; then
    # The lock is taken here, before the background job exists, so the
    # queued job cannot miss it; the background job holds it (descriptor
    # 8) until it has a result, and passes it to nothing that stays.
    exec 8> /tmp/sanroot.lock
    if flock -n -x 8; then
        /sbin/sanroot-boot --early > /dev/null 2>&1 &
    else
        rm -f /tmp/sanroot.lock
    fi
    exec 8>&-
fi
unset sanroot_when
