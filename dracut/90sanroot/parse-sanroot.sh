#!/bin/sh
# cmdline hook of dracut/90sanroot: decide whether sanroot acts on this boot
# and queue `sanroot boot` (/sbin/sanroot-boot) in the initqueue.
#
# sanroot acts on dracut's own iSCSI arguments: rd.iscsi.firmware (alias
# iscsi_firmware), rd.iscsi.ibft (old form ip=ibft), netroot=iscsi:…, and
# the same line written as root=iscsi:… is refused with a hint. It does
# nothing with rd.sanroot=0 (then dracut's own iscsi module, if present,
# may take over).

type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh

sanroot_why=
if ! getargbool 1 rd.sanroot; then
    info "sanroot: disabled by rd.sanroot=0"
elif getargbool 0 rd.iscsi.firmware -d -y iscsi_firmware; then
    sanroot_why=rd.iscsi.firmware
elif getargbool 0 rd.iscsi.ibft -d -y "ip=ibft"; then
    sanroot_why=rd.iscsi.ibft
else
    case "$(getarg netroot=)" in
        iscsi:*) sanroot_why=netroot ;;
    esac
fi

case "${root-}" in
    iscsi:*)
        warn "sanroot: root=iscsi:… is not supported; use netroot=iscsi:… together with root=UUID=…/LABEL=…/PARTUUID=…"
        ;;
esac

if [ -n "$sanroot_why" ]; then
    # dracut's own iscsi module acts on the very same arguments; two
    # initiators logging in to one LUN with one initiator name reinstate
    # each other's session. dracut/sanroot.conf omits it; say so if it is
    # in this image anyway.
    for _f in /sbin/iscsiroot /lib/dracut/hooks/cmdline/*parse-iscsiroot.sh; do
        if [ -e "$_f" ]; then
            warn "sanroot: dracut's iscsi module is in this initramfs too ($_f) and may log in to the same target; rebuild with omit_dracutmodules+=\" iscsi \" (dracut/sanroot.conf)"
            break
        fi
    done
    unset _f
    info "sanroot: acting on $sanroot_why; queueing 'sanroot boot'"
    # The root itself is found by root=UUID=…/LABEL=… (rootfs-block).
    [ -n "${root-}" ] && rootok=1
    echo 0 > /tmp/sanroot.attempts
    # From the iBFT, sanroot loads the NIC's driver itself (the table has
    # its PCI address) and waits for udev to be done with that one
    # interface, and sanroot-boot loads the bridges' modules: no need to
    # wait for the whole coldplug to settle, which is most of the
    # initramfs's time on a slow machine. From netroot= the NIC is only
    # named: wait until udev has settled (driver loaded, name final).
    sanroot_when=--settled
    case "$sanroot_why" in rd.iscsi.*) sanroot_when= ;; esac
    echo "$sanroot_when" > /tmp/sanroot.when
    /sbin/initqueue $sanroot_when --onetime --unique --name sanroot /sbin/sanroot-boot
    unset sanroot_when
fi
unset sanroot_why
