#!/bin/sh
# initqueue timeout hook of dracut/90sanroot: when the root never appears,
# leave sanroot's view in the log before dracut drops to the emergency shell.
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh
if [ -e /tmp/sanroot.attempts ]; then
    warn "sanroot: still no root device after $(cat /tmp/sanroot.attempts) attempt(s) of 'sanroot boot'"
    /usr/sbin/sanroot status 2>&1 | while read -r _l; do warn "sanroot status: $_l"; done
fi
