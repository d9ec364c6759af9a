#!/bin/bash
# dracut module "sanroot": root on an iSCSI LUN through sanroot's userspace
# initiator (issue 6). The initramfs reads the iBFT (rd.iscsi.firmware,
# iscsi_firmware, rd.iscsi.ibft, ip=ibft) or dracut's netroot=iscsi:… and
# runs `sanroot boot` from the initqueue; sanroot brings the boot NIC up
# itself (rtnetlink), logs in, serves the LUN as /dev/ublkbN or /dev/nbdN and
# stays resident as '@sanroot'. The root filesystem is then mounted by
# dracut's ordinary block path (root=UUID=…, LABEL=…, /dev/disk/by-…).
# At power-off and reboot dracut's shutdown module brings the machine back
# to this initramfs, and sanroot-shutdown.sh logs the session out once the
# root is unmounted.
#
# Works with and without dracut's systemd module. Installs no network module
# and no open-iscsi: dracut's 95iscsi must stay out (dracut/sanroot.conf
# omits it; parse-sanroot.sh says so if it is in the image anyway).

# The static binary: $SANROOT_BIN, else /usr/sbin/sanroot (inside the
# sysroot dracut builds from, when --sysroot is used).
sanroot_bin() {
    local b
    for b in ${SANROOT_BIN:+"$SANROOT_BIN"} "$dracutsysrootdir/usr/sbin/sanroot" "$dracutsysrootdir/sbin/sanroot"; do
        if [[ -x $b ]]; then
            printf '%s\n' "$b"
            return 0
        fi
    done
    return 1
}

# called by dracut
check() {
    # Without the binary there is nothing to install.
    sanroot_bin > /dev/null || return 1
    # Host-only images: include the module when this machine itself booted
    # through sanroot (its hand-off is in /run), so that rebuilding the
    # initramfs of a SAN-booted machine keeps it bootable.
    if [[ $hostonly ]] && [[ -e /run/sanroot/boot.json ]]; then
        return 0
    fi
    # Otherwise only on request (add_dracutmodules+=" sanroot ", which
    # dracut/sanroot.conf does, or -a sanroot): a generic initramfs must not
    # start a network initiator just because the binary is installed.
    return 255
}

# called by dracut
depends() {
    # Only the block root path; no network module (sanroot configures the
    # NIC itself) and no iscsi module (that is what sanroot replaces).
    # dracut's shutdown module: at power-off systemd-shutdown pivots back
    # into the initramfs, which unmounts the root and then runs our
    # shutdown hook to log the root's session out (issue 5).
    echo rootfs-block shutdown
    return 0
}

# called by dracut
installkernel() {
    # The two bridges: ublk first, NBD as the fallback. Both also in
    # host-only images: sanroot-boot.sh loads nbd only when it may be used,
    # so a machine booted over ublk has no nbd loaded to be detected.
    hostonly='' instmods ublk_drv nbd
    # The kernel's view of the iBFT (sanroot's last-resort source) and
    # /dev/mem is built in; iscsi_ibft is optional.
    instmods iscsi_ibft
    # An entropy source in VMs: mutual CHAP's challenge comes from
    # getrandom(), which waits until the kernel's CRNG is ready; without
    # RDRAND (QEMU's TCG CPU models) and virtio-rng that is not before the
    # real root loads its seed.
    instmods virtio_rng
    # NIC drivers. In host-only mode dracut-install keeps only the drivers of
    # this machine's NICs; a generic image gets every Ethernet driver plus the
    # paravirtual ones. sanroot_net_drivers="…" in dracut.conf replaces the
    # list (small images for a known machine, e.g. the QEMU test image).
    if [[ -n ${sanroot_net_drivers-} ]]; then
        # shellcheck disable=SC2086
        hostonly='' instmods $sanroot_net_drivers
    else
        instmods =drivers/net/ethernet virtio_net vmxnet3 hv_netvsc xen-netfront
    fi
    # The root file system's driver (rootfs-block only adds it in host-only
    # mode) and what ext4 needs.
    hostonly='' instmods ext4 crc32c_generic
}

# called by dracut
install() {
    local bin
    bin=$(sanroot_bin) || {
        derror "sanroot: no static binary (set SANROOT_BIN or install /usr/sbin/sanroot)"
        return 1
    }
    inst_simple "$bin" /usr/sbin/sanroot
    inst_multiple -o modprobe ln sleep udevadm
    # Name NICs here as the real root will (predictable names: udev's
    # 80-net-setup-link.rules is in the image, the .link files are not unless
    # a network module adds them). Otherwise the boot NIC is eth0 here and
    # the real root's udev renames it (ens3, …) under the root's session,
    # and the hand-off written for eth0 no longer matches it.
    inst_multiple -o "$systemdnetwork/99-default.link" "$systemdnetwork/73-usb-net-by-mac.link"
    if [[ $hostonly ]]; then
        inst_multiple -H -o "$systemdnetworkconfdir"/*.link
    fi
    # by-uuid/by-label names for ublk disks (systemd 252's udev lacks them).
    inst_rules "$moddir/61-sanroot-ublk.rules"
    inst_hook cmdline 90 "$moddir/parse-sanroot.sh"
    inst_script "$moddir/sanroot-boot.sh" /sbin/sanroot-boot
    inst_hook initqueue/timeout 95 "$moddir/sanroot-timeout.sh"
    # The real root is mounted: hide the boot target's open-iscsi node
    # records from it (no second login from an installer's record).
    inst_hook pre-pivot 50 "$moddir/sanroot-pre-pivot.sh"
    # After the old root is unmounted: flush, log out, remove the device.
    inst_hook shutdown 30 "$moddir/sanroot-shutdown.sh"
    inst_multiple -o timeout sed
    # CHAP settings kept off the kernel command line (README, Security):
    # the host's /etc/sanroot/secrets, 0600 in the image (dracut writes
    # the image itself 0600).
    if [[ -f $dracutsysrootdir/etc/sanroot/secrets ]]; then
        inst_simple "$dracutsysrootdir/etc/sanroot/secrets" /etc/sanroot/secrets
        chmod 0600 "${initdir}/etc/sanroot/secrets"
    fi
    # dracut-initqueue.service only runs when this exists (systemd mode).
    dracut_need_initqueue
}
