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
#
# dracut 059 (Debian 12) and dracut-ng (Debian 13's 106; tested there):
# - the module API used here (inst_*, instmods, inst_hook, need_shutdown,
#   dracut_need_initqueue, $systemdnetwork) is the same in both; dracut-ng
#   keeps the hooks in /var/lib/dracut/hooks with /lib/dracut/hooks a link
#   to it, which the scripts' paths go through.
# - dracut-ng from 108 on has /sbin/initqueue in a module of its own
#   ("initqueue"): depends() asks for it where it exists.
# - instmods of a module the kernel does not have (crc32c_generic is
#   built in or renamed on newer kernels) is optional, never an error.
# - dracut-ng's shell-init images (no systemd module) have no
#   /etc/initrd-release, which sanroot needs to call its daemon '@sanroot':
#   install() links it.
# - power-off comes back only to the image dracut-shutdown.service finds:
#   059 (Debian) unpacks /boot/initrd.img-KVER, dracut-ng
#   /boot/initramfs-KVER.img or else the FIRST /boot/initr*KVER* (so another
#   initrd-*-KVER image in /boot, an initramfs-tools one say, takes the place
#   of dracut's). Under any other name the machine powers off without the
#   logout and nothing says so at that time: install() warns when the image
#   it builds is not the one that comes back (sanroot_restore_check).

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
    local _deps="rootfs-block shutdown"
    # dracut-ng >= 108: /sbin/initqueue is the "initqueue" module's (before,
    # and in 059, it is base's).
    [[ -d $(dracut_module_path initqueue 2> /dev/null) ]] && _deps+=" initqueue"
    echo "$_deps"
    return 0
}

# The image dracut-shutdown.service of the real root unpacks to
# /run/initramfs at power-off for kernel $1 (dracut-initramfs-restore, as
# the installed dracut finds it; the image being built, $2, counts as
# present). Prints nothing when it finds none.
#  - dracut-ng (100 and later): /{efi,boot,boot/efi}/MACHINE-ID/KVER/initrd,
#    /lib/modules/KVER/initrd, /boot/initramfs-KVER.img, else the first
#    /boot/initr*KVER* in glob order, else /boot/initramfs-linux.img,
#    /boot/initrd.img, /initrd.img.
#  - dracut 059 and older: a boot loader spec entry directory's
#    MACHINE-ID/KVER/initrd, /lib/modules/KVER/initrd, then the one name its
#    distribution gave it (Debian: /boot/initrd.img-KVER; upstream:
#    /boot/initramfs-KVER.img).
sanroot_restore_image() {
    local _kv=$1 _out=$2 _r=$dracutsysrootdir _script _mid _b _f _name
    local -a _files
    _script=$_r/usr/lib/dracut/dracut-initramfs-restore
    [[ -f $_script ]] || _script=$_r/lib/dracut/dracut-initramfs-restore
    [[ -f $_script ]] || return 0
    _sanroot_present() { [[ $1 == "$_out" || -f $_r$1 ]]; }
    _mid=Default
    if [[ -d $_r/efi/Default || -d $_r/boot/Default || -d $_r/boot/efi/Default ]]; then
        _mid=Default
    elif [[ -s $_r/etc/machine-id ]]; then
        read -r _mid < "$_r/etc/machine-id"
        [[ $_mid == uninitialized ]] && _mid=Default
    fi
    if grep -q find_initrd_for_kernel_version "$_script"; then
        for _b in /efi /boot /boot/efi; do
            _sanroot_present "$_b/$_mid/$_kv/initrd" && echo "$_b/$_mid/$_kv/initrd" && return 0
        done
        for _f in "/lib/modules/$_kv/initrd" "/boot/initramfs-$_kv.img"; do
            _sanroot_present "$_f" && echo "$_f" && return 0
        done
        for _f in "$_r"/boot/initr*"$_kv"*; do
            [[ -e $_f ]] && _files+=("${_f#"$_r"}")
        done
        [[ $_out == /boot/initr*"$_kv"* ]] && _files+=("$_out")
        if ((${#_files[@]})); then
            printf '%s\n' "${_files[@]}" | LC_ALL=C sort | head -n 1
            return 0
        fi
        for _f in /boot/initramfs-linux.img /boot/initrd.img /initrd.img; do
            _sanroot_present "$_f" && echo "$_f" && return 0
        done
        return 0
    fi
    for _b in /efi /boot /boot/efi; do
        if [[ -d $_r$_b/loader/entries || -L $_r$_b/loader/entries ]] \
            && [[ -d $_r$_b/$_mid || -L $_r$_b/$_mid ]]; then
            echo "$_b/$_mid/$_kv/initrd"
            return 0
        fi
    done
    _sanroot_present "/lib/modules/$_kv/initrd" && echo "/lib/modules/$_kv/initrd" && return 0
    # The name the distribution's script looks for, e.g.
    # /boot/initrd.img-${KERNEL_VERSION}.
    _name=$(grep -o -m 1 -E '/boot/initr[a-z.-]*[$][{]KERNEL_VERSION[}][a-z.]*' "$_script" | head -n 1)
    # shellcheck disable=SC2016
    _name=${_name//'${KERNEL_VERSION}'/$_kv}
    [[ $_name ]] && _sanroot_present "$_name" && echo "$_name"
    return 0
}

# Say so when power-off will not come back to the image being built
# ($outfile, dracut's output file, is set by dracut.sh before the modules
# are installed, with $dracutsysrootdir in front).
sanroot_restore_check() {
    local _out _pick _hint
    [[ $outfile ]] && [[ $kernel ]] || return 0
    # A UKI is not unpacked by dracut-shutdown at all.
    [[ $uefi == yes ]] && return 0
    _out=${outfile#"$dracutsysrootdir"}
    _pick=$(sanroot_restore_image "$kernel" "$_out")
    [[ $_pick == "$_out" ]] && return 0
    if [[ -z $_pick ]]; then
        # Where this dracut's restore would find it.
        _hint=$(sanroot_restore_image "$kernel" "/boot/initrd.img-$kernel")
        [[ $_hint ]] || _hint=$(sanroot_restore_image "$kernel" "/boot/initramfs-$kernel.img")
        dwarn "sanroot: at power-off dracut-shutdown.service finds no initramfs for kernel $kernel to come back to (not $_out): the machine will power off without logging the root's iSCSI session out.${_hint:+ Write the image as $_hint.}"
    else
        dwarn "sanroot: at power-off dracut-shutdown.service comes back to $_pick, not to this image ($_out): the root's iSCSI session is logged out only if $_pick has sanroot's module too; otherwise the machine powers off without the logout."
    fi
    return 0
}

# called by dracut
installkernel() {
    # The two bridges: ublk first, NBD as the fallback. Both also in
    # host-only images: sanroot-boot.sh loads nbd only when it may be used,
    # so a machine booted over ublk has no nbd loaded to be detected.
    hostonly='' instmods ublk_drv nbd
    # 802.1Q, for a boot NIC on a VLAN (the iBFT's VLAN id, vlan=): the
    # kernel loads it when sanroot creates the VLAN link, also in host-only
    # images of machines that boot untagged today.
    hostonly='' instmods 8021q
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
    # The same binary as '@sanroot': started through PATH under that name,
    # its argv[0] already starts with '@' (systemd's kill sweeps spare the
    # daemon) and it need not exec itself again to get there.
    ln -sf sanroot "${initdir}/usr/sbin/@sanroot"
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
    # sanroot names its daemon '@sanroot' (spared by systemd's kill sweeps
    # at switch-root and power-off) only where /etc/initrd-release exists.
    # dracut 059's base links it to /usr/lib/initrd-release; dracut-ng's
    # base writes /usr/lib/initrd-release only, and only its systemd-initrd
    # module adds /etc/initrd-release: without systemd in the image the
    # daemon would be killed at power-off before the root is unmounted.
    if [[ ! -e $initdir/etc/initrd-release ]] && [[ ! -L $initdir/etc/initrd-release ]]; then
        mkdir -p "$initdir/etc"
        ln -s ../usr/lib/initrd-release "$initdir/etc/initrd-release"
    fi
    sanroot_restore_check
}
