#!/bin/sh
# pre-pivot hook of dracut/90sanroot: the real root is mounted at $NEWROOT.
# Hide the boot target's open-iscsi node records there (an installer's
# node.startup = automatic record would make open-iscsi log in to the root
# LUN a second time): sanroot mounts an empty read-only tmpfs over
# etc/iscsi/nodes/<IQN> and var/lib/iscsi/nodes/<IQN>; nothing is written
# to the disk. Only when sanroot booted this machine (its hand-off record).
# Sourced by dracut: no exit.

type warn > /dev/null 2>&1 || . /lib/dracut-lib.sh

if [ -e /run/sanroot/boot.json ]; then
    if ! /usr/sbin/sanroot boot --pre-pivot "${NEWROOT:-/sysroot}" 2> /tmp/sanroot-pre-pivot.err; then
        while read -r _l; do warn "sanroot: $_l"; done < /tmp/sanroot-pre-pivot.err
        warn "sanroot: the boot target's node records could not all be hidden: open-iscsi may log in to it again"
        unset _l
    fi
fi
