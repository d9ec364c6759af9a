# shellcheck shell=bash
# Shared helpers for the QEMU scripts of sanroot (qemu/make-ibft-fixtures,
# qemu/ibft-guest-test, qemu/demo). Source it from a bash script that runs
# with `set -euo pipefail`:
#
#   . "$(dirname "$0")/lib.sh"
#   sr_init                      # work dir + cleanup trap
#   sr_find_kernel               # SR_KERNEL, SR_KVER, SR_MODROOT (SR_GUEST_KERNEL)
#   sr_build_initramfs OUT [SRC:DST ...]
#   sr_tgt_start; sr_tgt_add_target 1 IQN; sr_tgt_add_chap 1 U P
#   sr_tftp_dir DIR SCRIPT_TEXT KERNEL INITRD
#   sr_qemu_ipxe bios|uefi TFTPDIR LOG   /  sr_qemu_direct LOG INITRD APPEND [args]
#   sr_extract_section LOG NAME
#
# Everything runs locally: tgtd listens on 127.0.0.1 only and the guest uses
# QEMU user networking (the host's 127.0.0.1 is 10.0.2.2 inside the guest).
# KVM is not assumed: QEMU always runs with -accel tcg.

SR_QEMU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SR_REPO=$(cd "$SR_QEMU_DIR/.." && pwd)
SR_QEMU_TIMEOUT=${SR_QEMU_TIMEOUT:-240}
SR_OVMF=${SR_OVMF:-/usr/share/ovmf/OVMF.fd}
SR_PXE_ROM_BIOS=${SR_PXE_ROM_BIOS:-/usr/lib/ipxe/qemu/pxe-virtio.rom}
SR_PXE_ROM_UEFI=${SR_PXE_ROM_UEFI:-/usr/lib/ipxe/qemu/efi-virtio.rom}
# MAC of the guest's NIC (so tests can check it); SR_NIC_EXTRA adds -nic
# user options, e.g. hostname=... for the DHCP server.
SR_MAC=${SR_MAC:-52:54:00:12:34:56}
SR_NIC_EXTRA=${SR_NIC_EXTRA:-}
# Packages the scripts need on Debian 12 (qemu/demo installs them).
SR_DEBIAN_PACKAGES=(tgt qemu-system-x86 ipxe-qemu ovmf linux-image-6.12-amd64
    busybox-static cpio python3 xz-utils)

SR_WORK=
SR_TGT_PID=
SR_TGT_CTL=
SR_TGT_PORT=
SR_QEMU_PID=

sr_log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
sr_die() {
    sr_log "error: $*"
    exit 1
}

# Create the work dir (kept with SR_KEEP_WORK=1) and install the cleanup trap.
sr_init() {
    [ "$(id -u)" = 0 ] || sr_die "must run as root (tgtd needs it): use sudo"
    SR_WORK=$(mktemp -d /tmp/sanroot-qemu.XXXXXX)
    trap sr_cleanup EXIT
    trap 'exit 130' INT TERM
}

sr_cleanup() {
    local rc=$?
    if [ -n "$SR_QEMU_PID" ] && kill -0 "$SR_QEMU_PID" 2>/dev/null; then
        kill "$SR_QEMU_PID" 2>/dev/null || true
        wait "$SR_QEMU_PID" 2>/dev/null || true
    fi
    sr_tgt_stop
    if [ -n "$SR_WORK" ] && [ -d "$SR_WORK" ]; then
        if [ "${SR_KEEP_WORK:-0}" = 1 ] || [ "$rc" != 0 ]; then
            sr_log "work dir kept: $SR_WORK"
        else
            rm -rf "$SR_WORK"
        fi
    fi
    return "$rc"
}

sr_need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || sr_die "missing command '$c' (apt-get install ${SR_DEBIAN_PACKAGES[*]})"
    done
}

# Install the Debian packages the scripts need if something is missing.
sr_apt_install_missing() {
    local missing=() p
    for p in "${SR_DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        sr_log "installing: ${missing[*]}"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
    fi
}

# sr_free_port [tcp|udp]: a free port on 127.0.0.1 (default TCP).
sr_free_port() {
    python3 -c 'import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])' "${1:-tcp}"
}

# The guest kernel: sets SR_KERNEL (vmlinuz path), SR_KVER and SR_MODROOT
# (the directory whose lib/modules/$SR_KVER holds its modules: / for the
# host's). SR_GUEST_KERNEL chooses it:
#   (unset), host     the newest Debian 6.12 kernel installed in /boot
#   backports         the newest linux-image of trixie-backports that is
#                     6.16 or newer (sr_fetch_kernel)
#   backports-X.Y     the newest linux-image X.Y.* of trixie-backports
SR_MODROOT=${SR_MODROOT:-/}
sr_find_kernel() {
    case "${SR_GUEST_KERNEL:-host}" in
    host) ;;
    backports)
        sr_fetch_kernel
        return 0
        ;;
    backports-[0-9]*.[0-9]*)
        sr_fetch_kernel "${SR_GUEST_KERNEL#backports-}"
        return 0
        ;;
    *) sr_die "SR_GUEST_KERNEL must be host, backports or backports-X.Y, not '$SR_GUEST_KERNEL'" ;;
    esac
    SR_KERNEL=$(find /boot -maxdepth 1 -name 'vmlinuz-6.12*' | sort -V | tail -n 1)
    [ -n "$SR_KERNEL" ] || sr_die "no /boot/vmlinuz-6.12* (apt-get install linux-image-6.12-amd64)"
    SR_KVER=${SR_KERNEL##*/vmlinuz-}
    SR_MODROOT=/
    [ -d "/lib/modules/$SR_KVER" ] || sr_die "no /lib/modules/$SR_KVER"
}

# sr_fetch_kernel [X.Y]: a Debian kernel from trixie-backports for the
# guests, never installed on the host. The newest linux-image-*-amd64 there
# (the signed one, else -unsigned) of series X.Y, or without X.Y the newest
# that is 6.16 or newer, is fetched with `apt-get download` (with the
# packages it depends on that carry its ABI name: linux-binary-*,
# linux-modules-*, linux-base-* where the kernel is split) and unpacked with
# `dpkg-deb -x` (then depmod) into SR_KERNEL_CACHE (default
# /var/cache/sanroot/kernels), where later runs find it. Sets SR_KERNEL,
# SR_KVER, SR_MODROOT and SR_KERNEL_PKG ("NAME=VERSION").
#
# apt runs with a private configuration under the cache (its own sources
# list with only trixie-backports, package lists and archive cache): the
# host's apt sources, lists and pinning are not touched, whatever suites the
# host has. The mirror is the host's Debian mirror (SR_DEBIAN_MIRROR
# overrides it). The package lists are read again when older than 12 hours
# (SR_KERNEL_REFRESH=1: always); when that fails, the newest kernel already
# unpacked for the same request is used, with a warning. A kernel no run
# has used for 30 days is removed from the cache.
SR_KERNEL_CACHE=${SR_KERNEL_CACHE:-/var/cache/sanroot/kernels}
sr_fetch_kernel() {
    local series=${1:-} min=6.16 cache=$SR_KERNEL_CACHE mirror keyring lockfd
    local -a apt
    local pkg='' ver='' abi='' name n v want dir tmp deb vmlinuz kver deps d q fresh=0 err
    cache=${cache%/}
    mkdir -p "$cache/apt/lists/partial" "$cache/apt/cache/archives/partial" "$cache/apt/none.d" "$cache/debs"
    exec {lockfd}>"$cache/lock"
    flock -w 1800 "$lockfd" || sr_die "sr_fetch_kernel: $cache/lock is held by another run"
    mirror=${SR_DEBIAN_MIRROR:-}
    if [ -z "$mirror" ]; then
        # The host's mirror of Debian's main archive ("500 URI SUITE/main ...").
        mirror=$(apt-cache policy 2>/dev/null | awk '$3 ~ /^(bookworm|trixie|trixie-backports|bookworm-backports)\/main$/ && $2 !~ /security/ { print $2; exit }')
        mirror=${mirror:-http://deb.debian.org/debian}
    fi
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -r "$keyring" ] || sr_die "sr_fetch_kernel: no $keyring (apt-get install debian-archive-keyring)"
    printf 'deb [signed-by=%s] %s trixie-backports main\n' "$keyring" "${mirror%/}" >"$cache/apt/sources.list.new"
    if ! cmp -s "$cache/apt/sources.list.new" "$cache/apt/sources.list"; then
        mv "$cache/apt/sources.list.new" "$cache/apt/sources.list"
        rm -f "$cache/apt/lists/"*Packages* "$cache/apt/lists/"*Release*
    else
        rm -f "$cache/apt/sources.list.new"
    fi
    apt=(-o "Dir::Etc::SourceList=$cache/apt/sources.list" -o "Dir::Etc::SourceParts=$cache/apt/none.d"
        -o "Dir::Etc::Preferences=$cache/apt/none" -o "Dir::Etc::PreferencesParts=$cache/apt/none.d"
        -o "Dir::State::Lists=$cache/apt/lists" -o "Dir::Cache=$cache/apt/cache"
        -o "APT::Architecture=amd64" -o "APT::Architectures=amd64" -o "APT::Sandbox::User=root")
    if [ "${SR_KERNEL_REFRESH:-0}" = 1 ] ||
        [ -z "$(find "$cache/apt/lists" -maxdepth 1 -name '*trixie-backports*Packages*' -mmin -720 2>/dev/null)" ]; then
        sr_log "guest kernel: reading trixie-backports' package list from $mirror"
        if err=$(apt-get "${apt[@]}" -qq update 2>&1) &&
            [ -n "$(find "$cache/apt/lists" -maxdepth 1 -name '*trixie-backports*Packages*')" ]; then
            fresh=1
        else
            sr_log "guest kernel: apt-get update of trixie-backports ($mirror) failed: $(printf '%s' "$err" | tail -n 3 | tr '\n' ' ')"
        fi
    else
        fresh=1
    fi
    want=${series:-$min+}
    if [ "$fresh" = 1 ]; then
        # linux-image-ABI-amd64[-unsigned], ABI = X.Y.Z+SUFFIX (no -cloud, -rt, -dbg).
        while read -r name; do
            n=${name#linux-image-}
            n=${n%-amd64-unsigned}
            n=${n%-amd64}
            v=${n%%+*}
            case "$v" in [0-9]*.[0-9]*) ;; *) continue ;; esac
            if [ -n "$series" ]; then
                [ "${v%.*}" = "$series" ] || [ "$v" = "$series" ] || continue
            else
                [ "$(printf '%s\n%s\n' "$min" "$v" | sort -V | head -n 1)" = "$min" ] || continue
            fi
            case "$name" in *-unsigned) echo "$n 1 $name" ;; *) echo "$n 0 $name" ;; esac
        done < <(apt-cache "${apt[@]}" pkgnames linux-image- 2>/dev/null |
            grep -E '^linux-image-[0-9]+\.[0-9]+[.0-9]*\+[^-]*-amd64(-unsigned)?$') >"$cache/candidates"
        # Newest ABI first; for one ABI the signed package first.
        while read -r n _ name; do
            ver=$(apt-cache "${apt[@]}" show --no-all-versions "$name" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)
            [ -n "$ver" ] || continue
            pkg=$name
            abi=${n}-amd64
            break
        done < <(sort -k 1,1Vr -k 2,2n "$cache/candidates")
        [ -n "$pkg" ] || sr_log "guest kernel: trixie-backports ($mirror) offers no linux-image-*-amd64 of $want"
    fi
    if [ -n "$pkg" ]; then
        dir=$cache/$abi
        if [ ! -e "$dir/.complete" ] || [ "$(cat "$dir/.complete")" != "$pkg=$ver" ]; then
            # The package and what it depends on under the same ABI name.
            deps=("$pkg=$ver")
            q=("$pkg")
            while [ "${#q[@]}" -gt 0 ]; do
                name=${q[0]}
                q=("${q[@]:1}")
                for d in $(apt-cache "${apt[@]}" show --no-all-versions "$name" 2>/dev/null |
                    sed -n 's/^\(Pre-\)\?Depends: //p' | tr ',|' '\n\n' | sed 's/(.*//; s/ //g' | grep -F -- "$abi" | sort -u); do
                    case " ${deps[*]} " in *" $d="*) continue ;; esac
                    v=$(apt-cache "${apt[@]}" show --no-all-versions "$d" 2>/dev/null | sed -n 's/^Version: //p' | head -n 1)
                    [ -n "$v" ] || sr_die "guest kernel: $pkg needs $d, which trixie-backports does not offer"
                    deps+=("$d=$v")
                    q+=("$d")
                done
            done
            sr_log "guest kernel: downloading ${deps[*]} from trixie-backports ($mirror)"
            rm -f "$cache/debs/"*.deb
            (cd "$cache/debs" && apt-get "${apt[@]}" -qq download "${deps[@]}") >&2 ||
                sr_die "guest kernel: apt-get download ${deps[*]} failed (mirror $mirror, cache $cache)"
            tmp=$dir.tmp
            rm -rf "$tmp" "$dir"
            mkdir -p "$tmp"
            for deb in "$cache/debs/"*.deb; do
                dpkg-deb -x "$deb" "$tmp" || sr_die "guest kernel: dpkg-deb -x $deb failed"
            done
            rm -f "$cache/debs/"*.deb
            # The modules in /usr/lib/modules/KVER (or /lib/...); the image
            # in /boot/vmlinuz-KVER or, split packages, in the modules' directory.
            if [ ! -e "$tmp/lib" ] && [ -d "$tmp/usr/lib/modules" ]; then ln -s usr/lib "$tmp/lib"; fi
            kver=$(find "$tmp/lib/modules/" -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
            [ -n "$kver" ] || sr_die "guest kernel: no lib/modules/KVER in ${deps[*]}"
            vmlinuz=boot/vmlinuz-$kver
            [ -f "$tmp/$vmlinuz" ] || vmlinuz=lib/modules/$kver/vmlinuz
            [ -f "$tmp/$vmlinuz" ] || sr_die "guest kernel: no boot/vmlinuz-$kver nor lib/modules/$kver/vmlinuz in ${deps[*]}"
            depmod -b "$tmp" "$kver" || sr_die "guest kernel: depmod -b $tmp $kver failed"
            printf '%s\n' "$kver" "$vmlinuz" >"$tmp/.kernel"
            echo "$pkg=$ver" >"$tmp/.complete"
            mv "$tmp" "$dir"
        fi
    else
        # Offline, or nothing fits: the newest kernel unpacked before for this request.
        dir=
        for d in $(find "$cache" -mindepth 2 -maxdepth 2 -name .complete -printf '%h\n' 2>/dev/null | sort -V -r); do
            v=${d##*/}
            v=${v%%+*}
            if [ -n "$series" ]; then
                [ "${v%.*}" = "$series" ] || [ "$v" = "$series" ] || continue
            else
                [ "$(printf '%s\n%s\n' "$min" "$v" | sort -V | head -n 1)" = "$min" ] || continue
            fi
            dir=$d
            break
        done
        [ -n "$dir" ] || sr_die "guest kernel: cannot fetch a linux-image-*-amd64 ($want) from trixie-backports ($mirror) and none is cached in $cache: check the network to the Debian mirror (or set SR_DEBIAN_MIRROR)"
        sr_log "guest kernel: WARNING: using the cached $(cat "$dir/.complete"); trixie-backports could not be read"
    fi
    # Kernels no run asked for in 30 days go.
    touch "$dir/.complete"
    find "$cache" -mindepth 2 -maxdepth 2 -name .complete -mtime +30 -printf '%h\n' 2>/dev/null |
        while read -r d; do [ "$d" = "$dir" ] || rm -rf "$d"; done
    rm -rf "$cache/"*.tmp
    exec {lockfd}>&-
    { read -r SR_KVER && read -r vmlinuz; } <"$dir/.kernel" || sr_die "guest kernel: no $dir/.kernel"
    SR_KERNEL=$dir/$vmlinuz
    SR_MODROOT=$dir
    SR_KERNEL_PKG=$(cat "$dir/.complete")
    [ -d "$SR_MODROOT/lib/modules/$SR_KVER" ] || sr_die "no $SR_MODROOT/lib/modules/$SR_KVER"
    sr_log "guest kernel: $SR_KVER ($SR_KERNEL_PKG from trixie-backports) in $dir"
}

# Copy module NAME of SR_KVER, decompressed, to DIR/NAME.ko.
sr_copy_module() {
    local name=$1 dir=$2 path
    path=$(modinfo -b "${SR_MODROOT:-/}" -k "$SR_KVER" -n "$name") || sr_die "module $name not found for $SR_KVER"
    case "$path" in
    *.ko.xz) xz -dc "$path" >"$dir/$name.ko" ;;
    *.ko.zst) zstd -dc "$path" >"$dir/$name.ko" ;;
    *.ko.gz) gzip -dc "$path" >"$dir/$name.ko" ;;
    *.ko) cp "$path" "$dir/$name.ko" ;;
    *) sr_die "unknown module file $path" ;;
    esac
}

# sr_build_initramfs OUT [SRC:DST ...]
# A gzip'd newc cpio with static busybox, qemu/guest-init/init as /init, the
# iscsi_boot_sysfs + iscsi_ibft modules (loaded in that order) and extra files.
sr_build_initramfs() {
    local out=$1 root spec
    shift
    [ -n "${SR_KVER:-}" ] || sr_find_kernel
    root=$(mktemp -d "$SR_WORK/initramfs.XXXXXX")
    mkdir -p "$root"/{bin,dev,proc,sys,tmp,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    cp "$SR_QEMU_DIR/guest-init/init" "$root/init"
    chmod 755 "$root/init"
    sr_copy_module iscsi_boot_sysfs "$root/lib/modules"
    sr_copy_module iscsi_ibft "$root/lib/modules"
    # insmod order = glob order; make it explicit.
    mv "$root/lib/modules/iscsi_boot_sysfs.ko" "$root/lib/modules/00-iscsi_boot_sysfs.ko"
    mv "$root/lib/modules/iscsi_ibft.ko" "$root/lib/modules/10-iscsi_ibft.ko"
    mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
    for spec in "$@"; do
        mkdir -p "$root/$(dirname "${spec#*:}")"
        cp "${spec%%:*}" "$root/${spec#*:}"
    done
    (cd "$root" && find . -print0 | sort -z | cpio --quiet -o -0 -H newc -R 0:0) | gzip -1 >"$out"
}

# ---- tgtd ---------------------------------------------------------------

# Start a private tgtd on 127.0.0.1:<free port> with a free control port.
# Sets SR_TGT_PID, SR_TGT_CTL, SR_TGT_PORT. With SR_TGT_NETNS set, tgtd
# runs in that network namespace and listens on SR_TGT_ADDR there (its
# control socket is in the abstract namespace, which is per network
# namespace: sr_tgtadm runs tgtadm there too).
sr_tgt_start() {
    local attempt
    sr_need tgtd tgtadm
    # Runs started at the same time (tests/run boots two guests at once)
    # could pick the same control port before either tgtd has bound it, and
    # then ask the other run's tgtd whether theirs is up: picking and
    # starting are one step under a lock (tgtd does not inherit it). A port
    # taken by anything else makes tgtd exit: it tries again with new ones.
    local lock
    exec {lock}>/run/sanroot-tgtd-start.lock
    flock -w 120 "$lock" || sr_die "sr_tgt_start: /run/sanroot-tgtd-start.lock is held for 120 s"
    for attempt in 1 2 3 4 5; do
        if sr_tgt_try_start "$lock"; then
            exec {lock}>&-
            return 0
        fi
        sr_log "tgtd (attempt $attempt) did not start: $(tail -n 2 "$SR_WORK/tgtd.log" 2>/dev/null | tr '\n' ' ')"
    done
    exec {lock}>&-
    cat "$SR_WORK/tgtd.log" >&2 || true
    sr_die "tgtd did not start"
}

# One try of sr_tgt_start (LOCKFD: the start lock's descriptor, closed for
# tgtd): 1 if tgtd exited or did not answer in 5 s.
sr_tgt_try_start() {
    local i lockfd=$1
    SR_TGT_PORT=$(sr_free_port)
    SR_TGT_CTL=
    for i in $(shuf -i 100-4000 -n 50); do
        if [ ! -e "/var/run/tgtd/socket.$i" ] && [ ! -e "/var/run/tgtd.ipc_abstract_namespace.$i" ]; then
            SR_TGT_CTL=$i
            break
        fi
    done
    [ -n "$SR_TGT_CTL" ] || sr_die "no free tgtd control port"
    # Not through sr_tgt_ns: a function run in the background is a subshell
    # whose child tgtd would be, and $! must be tgtd itself (sr_tgt_stop
    # kills it, bench/bridge-vs-kernel counts its CPU). `ip netns exec`
    # execs its command, so its pid is tgtd's.
    if [ -n "${SR_TGT_NETNS:-}" ]; then
        ip netns exec "$SR_TGT_NETNS" tgtd -f -C "$SR_TGT_CTL" --iscsi "portal=${SR_TGT_ADDR:-127.0.0.1}:$SR_TGT_PORT" >"$SR_WORK/tgtd.log" 2>&1 {lockfd}>&- &
    else
        tgtd -f -C "$SR_TGT_CTL" --iscsi "portal=${SR_TGT_ADDR:-127.0.0.1}:$SR_TGT_PORT" >"$SR_WORK/tgtd.log" 2>&1 {lockfd}>&- &
    fi
    SR_TGT_PID=$!
    for i in $(seq 50); do
        if sr_tgt_ns tgtadm -C "$SR_TGT_CTL" --lld iscsi --mode sys --op show >/dev/null 2>&1; then
            sr_log "tgtd pid $SR_TGT_PID on ${SR_TGT_ADDR:-127.0.0.1}:$SR_TGT_PORT${SR_TGT_NETNS:+ in network namespace $SR_TGT_NETNS} (control $SR_TGT_CTL)"
            return 0
        fi
        kill -0 "$SR_TGT_PID" 2>/dev/null || return 1
        sleep 0.1
    done
    kill "$SR_TGT_PID" 2>/dev/null || true
    wait "$SR_TGT_PID" 2>/dev/null || true
    return 1
}

# sr_tgt_ns CMD...: CMD in tgtd's network namespace (SR_TGT_NETNS, or ours).
sr_tgt_ns() {
    if [ -n "${SR_TGT_NETNS:-}" ]; then
        ip netns exec "$SR_TGT_NETNS" "$@"
    else
        "$@"
    fi
}

sr_tgtadm() { sr_tgt_ns tgtadm -C "$SR_TGT_CTL" --lld iscsi "$@"; }

# sr_tgt_add_target TID IQN [SIZE]: target with a sparse file as LUN 1, open to all.
sr_tgt_add_target() {
    local tid=$1 iqn=$2 size=${3:-64M} backing
    backing="$SR_WORK/lun-$tid.img"
    truncate -s "$size" "$backing"
    sr_tgtadm --mode target --op new --tid "$tid" --targetname "$iqn"
    sr_tgtadm --mode logicalunit --op new --tid "$tid" --lun 1 --backing-store "$backing"
    sr_tgtadm --mode target --op bind --tid "$tid" --initiator-address ALL
}

# sr_tgt_add_chap TID USER SECRET: the initiator must authenticate (CHAP).
sr_tgt_add_chap() {
    sr_tgtadm --mode account --op new --user "$2" --password "$3"
    sr_tgtadm --mode account --op bind --tid "$1" --user "$2"
}

# sr_tgt_add_mutual TID USER SECRET: the target authenticates back (mutual CHAP).
sr_tgt_add_mutual() {
    sr_tgtadm --mode account --op new --user "$2" --password "$3"
    sr_tgtadm --mode account --op bind --tid "$1" --user "$2" --outgoing
}

sr_tgt_stop() {
    if [ -n "$SR_TGT_PID" ] && kill -0 "$SR_TGT_PID" 2>/dev/null; then
        # SIGKILL: tgtd ignores SIGTERM while it has targets, and tgt 1.0.85
        # refuses a system delete ("invalid request"). Nothing is lost: its
        # rdwr backing store writes with pwrite, so whatever it acknowledged
        # is in the backing file's page cache already.
        kill -9 "$SR_TGT_PID" 2>/dev/null || true
        wait "$SR_TGT_PID" 2>/dev/null || true
    fi
    SR_TGT_PID=
}

# ---- iPXE / QEMU ----------------------------------------------------------

# sr_ipxe_script FIRMWARE TARGET_IQN PORT KERNEL_APPEND [IPXE_LINES...]
# Print an iPXE script: the extra lines (settings) come first, then sanhook of
# LUN 1 of TARGET_IQN on 10.0.2.2:PORT and a kernel+initrd boot over tftp.
sr_ipxe_script() {
    local fw=$1 iqn=$2 port=$3 append=$4 line
    shift 4
    echo '#!ipxe'
    echo 'echo sanroot: iPXE script running'
    for line in "$@"; do echo "$line"; done
    echo "sanhook iscsi:10.0.2.2::$port:1:$iqn || goto failed"
    if [ "$fw" = uefi ]; then append="initrd=initrd.img $append"; fi
    echo "kernel tftp://10.0.2.2/vmlinuz $append || goto failed"
    echo 'initrd tftp://10.0.2.2/initrd.img || goto failed'
    echo 'boot || goto failed'
    echo ':failed'
    echo 'echo sanroot: iPXE script failed'
    echo 'reboot'  # QEMU runs with -no-reboot: this ends the run
}

# sr_tftp_dir DIR SCRIPT KERNEL INITRD: DIR with boot.ipxe, vmlinuz, initrd.img.
sr_tftp_dir() {
    local dir=$1
    mkdir -p "$dir"
    printf '%s\n' "$2" >"$dir/boot.ipxe"
    cp "$3" "$dir/vmlinuz"
    cp "$4" "$dir/initrd.img"
}

# Run qemu-system-x86_64 "$@" in the background under a hard timeout and wait.
# Serial output goes to LOG (first arg). With SR_QEMU_SHOW=1 the log is also
# followed on stderr while QEMU runs. Returns QEMU's status.
#
# One TCG thread for all vCPUs (thread=single). Under QEMU 7.2's
# multi-threaded TCG a vCPU now and then runs a stale translated block that
# still holds the int3 the kernel puts in while it patches its own text
# (static keys, alternatives): "Oops: int3" and a panic. We saw it in the
# random code (get_random_u32 a few ms after "random: crng init done",
# urandom_read_iter, crng_make_state) and then in
# sched_clock_idle_wakeup_event as the sched_clock-stable key flipped,
# which no CPU flag avoids. With one thread a vCPU only runs between
# another's translated blocks, and a block is invalidated as soon as its
# code is written, so the race cannot happen. Measured cost: bridge_guest
# 61 s -> 67 s. SR_QEMU_ACCEL overrides it (e.g. "tcg" for MTTCG).
#
# The CPU is QEMU's default model plus RDRAND, so the kernel's CRNG is
# ready at 0.1 s instead of seconds later.
sr_qemu_run() {
    local log=$1 rc=0 tailpid=
    shift
    : >"$log"
    if [ "${SR_QEMU_SHOW:-0}" = 1 ]; then
        tail -n +1 -f "$log" >&2 &
        tailpid=$!
    fi
    timeout -k 5 "$SR_QEMU_TIMEOUT" qemu-system-x86_64 -accel "${SR_QEMU_ACCEL:-tcg,thread=single}" -cpu qemu64,+rdrand -m 512 \
        -display none -no-reboot -serial "file:$log" -monitor none "$@" \
        </dev/null >"$log.qemu" 2>&1 &
    SR_QEMU_PID=$!
    wait "$SR_QEMU_PID" || rc=$?
    SR_QEMU_PID=
    if [ -n "$tailpid" ]; then
        sleep 0.5
        kill "$tailpid" 2>/dev/null || true
        wait "$tailpid" 2>/dev/null || true
    fi
    if [ "$rc" = 124 ]; then sr_log "qemu timed out after ${SR_QEMU_TIMEOUT}s"; fi
    if [ -s "$log.qemu" ]; then sed 's/^/qemu: /' "$log.qemu" >&2; fi
    return "$rc"
}

# sr_qemu_ipxe bios|uefi TFTPDIR LOG [extra qemu args]: network boot via
# Debian's iPXE option ROM, DHCP bootfile boot.ipxe from QEMU's tftp server.
sr_qemu_ipxe() {
    local fw=$1 tftp=$2 log=$3
    shift 3
    local netdev="user,id=n0,tftp=$tftp,bootfile=boot.ipxe${SR_NIC_EXTRA:+,$SR_NIC_EXTRA}"
    local nic="virtio-net-pci,netdev=n0,mac=$SR_MAC"
    case "$fw" in
    bios)
        # Debian's pxe-virtio.rom is built for the modern virtio-net PCI id
        # (0x1041): SeaBIOS only runs it on a modern-only device, and only
        # boots from it with a bootindex. No floppy drive (the pc machine
        # has one by default, empty): initramfs-tools' MODULES=most loads
        # the floppy driver and blkid's search for root=UUID= reads it,
        # an "I/O error, dev fd0" no server would have.
        sr_qemu_run "$log" -machine pc -global isa-fdc.fdtypeA=none -netdev "$netdev" \
            -device "$nic,disable-legacy=on,bootindex=1,romfile=$SR_PXE_ROM_BIOS" "$@"
        ;;
    uefi)
        [ -r "$SR_OVMF" ] || sr_die "no $SR_OVMF (apt-get install ovmf)"
        sr_qemu_run "$log" -machine q35 -bios "$SR_OVMF" -boot n -netdev "$netdev" \
            -device "$nic,romfile=$SR_PXE_ROM_UEFI" "$@"
        ;;
    *) sr_die "firmware must be bios or uefi, not $fw" ;;
    esac
}

# sr_qemu_direct LOG INITRD APPEND [extra qemu args]: -kernel/-initrd boot
# (SeaBIOS, no network boot), e.g. with -acpitable file=...
sr_qemu_direct() {
    local log=$1 initrd=$2 append=$3
    shift 3
    [ -n "${SR_KERNEL:-}" ] || sr_find_kernel
    sr_qemu_run "$log" -machine pc -kernel "$SR_KERNEL" -initrd "$initrd" \
        -append "$append" -nic "user,model=virtio-net-pci,mac=$SR_MAC" "$@"
}

# Kernel command line for the guest; ACTIONS as in qemu/guest-init/init.
sr_guest_append() {
    echo "console=ttyS0 quiet panic=-1 sanroot.actions=$1"
}

# sr_extract_section LOG NAME: print the lines between the markers written by
# qemu/guest-init/init (carriage returns removed). Fails if absent.
sr_extract_section() {
    python3 - "$1" "$2" <<'PY'
import sys
log, name = sys.argv[1], sys.argv[2]
text = open(log, "rb").read().decode("utf-8", "replace").replace("\r", "")
begin, end = f"===SANROOT-BEGIN {name}===\n", f"\n===SANROOT-END {name}==="
i = text.find(begin)
if i < 0:
    sys.exit(1)
i += len(begin)
j = text.find(end, i - 1)
if j < 0:
    sys.exit(1)
out = text[i:j + 1] if j >= i else ""
sys.stdout.write(out)
PY
}

# sr_section_rc LOG NAME: the exit code the guest printed for NAME.
sr_section_rc() {
    sed -n "s/^===SANROOT-RC $2=\([0-9]*\)===.*/\1/p" "$1" | tr -d '\r' | head -n 1
}

# ---- composed steps -------------------------------------------------------

SR_GUEST_IP=10.0.2.15
SR_GUEST_PREFIX=24
SR_GUEST_NETMASK=255.255.255.0
SR_GUEST_GATEWAY=10.0.2.2
SR_GUEST_DNS=10.0.2.3
SR_GUEST_HOSTNAME=${SR_GUEST_HOSTNAME:-sanroot-guest}

# sr_boot_sanhook FW LOG INITRD TARGET_IQN INITIATOR_IQN APPEND [IPXE_LINES...]
# Network-boot through iPXE with a static address (SR_GUEST_*), `sanhook`
# LUN 1 of TARGET_IQN on the running tgtd, then boot SR_KERNEL + INITRD with
# APPEND. Extra iPXE lines (e.g. CHAP settings) go before the sanhook.
sr_boot_sanhook() {
    local fw=$1 log=$2 initrd=$3 target=$4 initiator=$5 append=$6 script
    shift 6
    [ -n "${SR_KERNEL:-}" ] || sr_find_kernel
    script=$(sr_ipxe_script "$fw" "$target" "$SR_TGT_PORT" "$append" \
        "set initiator-iqn $initiator" "$@" ifclose \
        "set net0/ip $SR_GUEST_IP" "set net0/netmask $SR_GUEST_NETMASK" \
        "set net0/gateway $SR_GUEST_GATEWAY" "set dns $SR_GUEST_DNS" \
        "set hostname $SR_GUEST_HOSTNAME" ifopen)
    sr_tftp_dir "$SR_WORK/tftp-$fw" "$script" "$SR_KERNEL" "$initrd"
    sr_qemu_ipxe "$fw" "$SR_WORK/tftp-$fw" "$log"
}

# ---- modules with dependencies ---------------------------------------------

# sr_copy_modules_deps DIR NAME...: copy each module NAME of SR_KVER and,
# first, everything it depends on (`modinfo -F depends`, recursively;
# built-in modules are skipped), decompressed, as DIR/NNN-name.ko so that
# the glob order of DIR/*.ko is a valid insmod order. Modules already in DIR
# are not copied twice; numbering continues after the highest present.
# crc32c_generic (which ext4, jbd2 and libiscsi_tcp asked the crypto API
# for) is skipped on kernels that no longer have it: since 6.15 they call
# the crc32c library (the kernels of SR_GUEST_KERNEL=backports).
sr_copy_modules_deps() {
    local dir=$1 name
    shift
    [ -n "${SR_KVER:-}" ] || sr_find_kernel
    mkdir -p "$dir"
    for name in "$@"; do
        if [ "$name" = crc32c_generic ] &&
            ! modinfo -b "${SR_MODROOT:-/}" -k "$SR_KVER" -n crc32c_generic >/dev/null 2>&1; then
            continue
        fi
        _sr_copy_module_rec "$dir" "${name//-/_}" ""
    done
}

_sr_copy_module_rec() {
    local dir=$1 name=$2 stack=$3 path dep deps n
    case " $stack " in *" $name "*) sr_die "module dependency loop: $stack $name" ;; esac
    if compgen -G "$dir/[0-9][0-9][0-9]-$name.ko" >/dev/null; then return 0; fi
    path=$(modinfo -b "${SR_MODROOT:-/}" -k "$SR_KVER" -n "$name" 2>/dev/null) || sr_die "module $name not found for $SR_KVER"
    case "$path" in
    "(builtin)" | "") return 0 ;;
    esac
    deps=$(modinfo -b "${SR_MODROOT:-/}" -k "$SR_KVER" -F depends "$name" 2>/dev/null || true)
    for dep in ${deps//,/ }; do
        _sr_copy_module_rec "$dir" "${dep//-/_}" "$stack $name"
    done
    n=$(find "$dir" -maxdepth 1 -name '[0-9][0-9][0-9]-*.ko' | wc -l)
    n=$(printf '%03d' "$n")
    case "$path" in
    *.ko.xz) xz -dc "$path" >"$dir/$n-$name.ko" ;;
    *.ko.zst) zstd -dc "$path" >"$dir/$n-$name.ko" ;;
    *.ko.gz) gzip -dc "$path" >"$dir/$n-$name.ko" ;;
    *.ko) cp "$path" "$dir/$n-$name.ko" ;;
    *) sr_die "unknown module file $path" ;;
    esac
}

# ---- dynamically linked host tools in an initramfs --------------------------

# sr_copy_dynamic ROOT FILE...: copy each host executable FILE into ROOT at
# the same path, with every shared library and the dynamic loader that ldd
# lists for it, also at the same paths (symlinks resolved: the initramfs gets
# real files). A FILE that is a symlink (fsck.ext4 -> e2fsck) is copied as
# its target and linked under its own name. Prints nothing; dies when ldd
# cannot resolve a library.
sr_copy_dynamic() {
    local root=$1 f real lib
    shift
    for f in "$@"; do
        [ -e "$f" ] || sr_die "no $f on the host"
        real=$(readlink -f "$f")
        mkdir -p "$root$(dirname "$f")" "$root$(dirname "$real")"
        [ -e "$root$real" ] || cp "$real" "$root$real"
        if [ "$real" != "$f" ] && [ ! -e "$root$f" ]; then
            ln -s "$real" "$root$f"
        fi
        ldd "$real" | grep -q 'not found' && sr_die "ldd $real: a library is missing"
        # "libx.so => /path (addr)", "/lib64/ld-linux-x86-64.so.2 (addr)";
        # vdso lines have no path.
        for lib in $(ldd "$real" | sed -n -e 's/.*=> \(\/[^ ]*\) .*/\1/p' -e 's/^[[:space:]]*\(\/[^ ]*\) .*/\1/p'); do
            [ -e "$root$lib" ] && continue
            mkdir -p "$root$(dirname "$lib")"
            cp -L "$lib" "$root$lib"
        done
    done
}

# sr_tgt_add_lun TID LUN SIZE [readonly] [thin] [bs=N] [file=PATH]: add a
# LUN backed by a sparse file (default $SR_WORK/t$TID-lun$LUN.img) to an
# existing target; prints the backing file's path.
sr_tgt_add_lun() {
    local tid=$1 lun=$2 size=$3 opt ro=0 thin=0 bs= backing
    shift 3
    backing="$SR_WORK/t$tid-lun$lun.img"
    for opt in "$@"; do
        case "$opt" in
        readonly) ro=1 ;;
        thin) thin=1 ;;
        bs=*) bs=${opt#bs=} ;;
        file=*) backing=${opt#file=} ;;
        *) sr_die "sr_tgt_add_lun: unknown option $opt" ;;
        esac
    done
    [ -e "$backing" ] || truncate -s "$size" "$backing"
    sr_tgtadm --mode logicalunit --op new --tid "$tid" --lun "$lun" \
        --backing-store "$backing" ${bs:+--blocksize "$bs"} >&2
    if [ "$ro" = 1 ]; then
        sr_tgtadm --mode logicalunit --op update --tid "$tid" --lun "$lun" --params readonly=1 >&2
    fi
    if [ "$thin" = 1 ]; then
        sr_tgtadm --mode logicalunit --op update --tid "$tid" --lun "$lun" --params thin_provisioning=1 >&2
    fi
    echo "$backing"
}

# sr_tgt_sessions TID: number of I_T nexuses (sessions) of target TID.
sr_tgt_sessions() {
    sr_tgtadm --mode target --op show 2>/dev/null | awk -v tid="$1" '
        /^Target [0-9]+:/ { sub(":", "", $2); cur = $2 }
        cur == tid && /I_T nexus:/ { n++ }
        END { print n + 0 }'
}

# ---- benchmark helpers (bench/bridge-vs-kernel) -------------------------------

# sr_tgt_add_null_lun TID LUN: a tgtd "null" LUN (no backing store: reads
# return without touching data, writes are dropped) on an existing target.
sr_tgt_add_null_lun() {
    sr_tgtadm --mode logicalunit --op new --tid "$1" --lun "$2" \
        --bstype null --backing-store /dev/null >&2
}

# sr_copy_open_iscsi ROOT: the kernel's initiator tools from the Debian
# package open-iscsi (iscsid, iscsiadm and their libraries) and the modules
# of the kernel side (iscsi_tcp and what it needs, sd_mod for the disks)
# into ROOT; the modules go to ROOT/lib/modules in insmod order.
sr_copy_open_iscsi() {
    local root=$1 f
    for f in iscsid iscsiadm; do
        command -v "$f" >/dev/null 2>&1 || sr_die "no $f (apt-get install open-iscsi)"
    done
    sr_copy_dynamic "$root" "$(command -v iscsid)" "$(command -v iscsiadm)"
    # libiscsi_tcp asks the crypto API for "crc32c" even without digests.
    sr_copy_modules_deps "$root/lib/modules" crc32c_generic scsi_transport_iscsi libiscsi \
        libiscsi_tcp iscsi_tcp sd_mod
}

# sr_host_ticks PID: utime+stime of a host process and its threads, clock ticks.
sr_host_ticks() {
    if [ -r "/proc/$1/stat" ]; then
        sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
    else
        echo 0
    fi
}

# ---- the SAN-boot disk (qemu/make-root-image) --------------------------------

# sr_img_ensure: build (or find in the cache) the root disk image of
# Debian $SR_DISTRO (12, the default, or 13); sets
# SR_IMG_DIR (the cache entry: disk.img, vmlinuz, initrd-systemd.img,
# initrd-shell.img) and SR_IMG_* from its info.env (SR_IMG_KVER,
# SR_IMG_ROOT_UUID, SR_IMG_PART_OFFSET, SR_IMG_CMDLINE, ...), and
# SR_IMG_DISTRO and SR_IMG_EXTRA_INITRD_DIR (where the image keeps its
# initrd-{shell,sanroot,itools}.img-KVER: /boot on 12, /boot/sanroot-test
# on 13, see qemu/make-root-image). SANROOT_BIN
# is the sanroot put in the image. Sets SR_IMG_SECONDS (time taken here).
sr_img_ensure() {
    local t0=$SECONDS k v
    SR_IMG_DIR=$("$SR_QEMU_DIR/make-root-image" --distro "${SR_DISTRO:-12}" --print-dir) || sr_die "qemu/make-root-image failed"
    [ -f "$SR_IMG_DIR/info.env" ] || sr_die "no $SR_IMG_DIR/info.env"
    # The 12 entry's info.env has neither key.
    SR_IMG_DISTRO=12
    SR_IMG_EXTRA_INITRD_DIR=/boot
    while IFS='=' read -r k v; do
        v=${v#\'}
        v=${v%\'}
        printf -v "SR_IMG_$k" '%s' "$v"
    done <"$SR_IMG_DIR/info.env"
    SR_IMG_SECONDS=$((SECONDS - t0))
}

# sr_img_copy DEST: a private, sparse copy of the disk for one boot.
sr_img_copy() {
    cp --sparse=always "$SR_IMG_DIR/disk.img" "$1"
}

# sr_img_set_grubenv IMG EXTRA [INITRD [ISCSI]]: the kernel arguments GRUB
# appends for this boot (grub.cfg: load_env; linux ... $sanroot_extra), the
# initramfs it loads (initrd $sanroot_initrd; default the image's
# /boot/initrd.img-KVER) and the word that asks for the iBFT's root
# ($sanroot_iscsi; default rd.iscsi.firmware, open-iscsi's is iscsi_auto),
# written in place into /boot/grub/grubenv of the copy IMG (a fixed
# 1024-byte block).
sr_img_set_grubenv() {
    local img=$1 extra=$2 initrd=${3:-} iscsi=${4:-} block
    case "$extra$initrd$iscsi" in *$'\n'* | *\\*) sr_die "grubenv: no newlines or backslashes" ;; esac
    block=$(printf '# GRUB Environment Block\nsanroot_extra=%s\n' "$extra")
    [ -z "$initrd" ] || block+=$(printf '\nsanroot_initrd=%s' "$initrd")
    [ -z "$iscsi" ] || block+=$(printf '\nsanroot_iscsi=%s' "$iscsi")
    [ "${#block}" -lt 1023 ] || sr_die "grubenv: too long"
    {
        printf '%s\n' "$block"
        printf '#%.0s' $(seq 1 $((1024 - ${#block} - 1)))
    } | dd of="$img" bs=1024 count=1 seek="$SR_IMG_GRUBENV_OFFSET" iflag=fullblock oflag=seek_bytes conv=notrunc status=none
}

# sr_img_cat IMG PATH: a file of the root file system in IMG (debugfs).
sr_img_cat() {
    debugfs -R "cat $2" "$1?offset=$SR_IMG_PART_OFFSET" 2>/dev/null
}

# sr_img_fsck IMG: e2fsck -fn of the root file system; prints its output,
# returns its status (0: clean).
sr_img_fsck() {
    e2fsck -fn "$1?offset=$SR_IMG_PART_OFFSET" 2>&1
}

# sr_img_fs_state IMG: "state=clean features=..." from the superblock.
sr_img_fs_state() {
    dumpe2fs -h "$1?offset=$SR_IMG_PART_OFFSET" 2>/dev/null | awk -F: '
        /^Filesystem state/ { gsub(/^ +/, "", $2); s = $2 }
        /^Filesystem features/ { gsub(/^ +/, "", $2); f = $2 }
        END { printf "state=%s features=%s\n", s, f }'
}

# ---- end-to-end SAN boots (qemu/sanboot) ---------------------------------------

# sr_sanboot_target TID IQN BACKING AUTH: a target serving BACKING as LUN 1
# on the running tgtd; AUTH none|chap|mutual with the SR_SANBOOT_* accounts.
SR_SANBOOT_USER=sanroot-initiator
SR_SANBOOT_SECRET=initiator-secret-0123
SR_SANBOOT_TUSER=sanroot-target
SR_SANBOOT_TSECRET=target-secret-456789
sr_sanboot_target() {
    local tid=$1 iqn=$2 backing=$3 auth=$4
    sr_tgtadm --mode target --op new --tid "$tid" --targetname "$iqn"
    sr_tgtadm --mode logicalunit --op new --tid "$tid" --lun 1 --backing-store "$backing"
    sr_tgtadm --mode target --op bind --tid "$tid" --initiator-address ALL
    case "$auth" in
    none) ;;
    chap) sr_tgt_add_chap "$tid" "$SR_SANBOOT_USER" "$SR_SANBOOT_SECRET" ;;
    mutual)
        sr_tgt_add_chap "$tid" "$SR_SANBOOT_USER" "$SR_SANBOOT_SECRET"
        sr_tgt_add_mutual "$tid" "$SR_SANBOOT_TUSER" "$SR_SANBOOT_TSECRET"
        ;;
    *) sr_die "auth must be none, chap or mutual" ;;
    esac
}

# sr_img_put IMG PATH [MODE]: write standard input to PATH in the image's
# root file system (debugfs, the machine off; parent directories made as
# needed), mode MODE (default 0600), owned by root. Fails unless the file
# reads back the same.
sr_img_put() {
    local img=$1 dest=$2 mode=${3:-0600} src cmds d= i parts
    src=$(mktemp "$SR_WORK/put.XXXXXX")
    cmds=$(mktemp "$SR_WORK/debugfs.XXXXXX")
    cat >"$src"
    chmod "$mode" "$src"
    IFS=/ read -ra parts <<<"${dest#/}"
    for ((i = 0; i < ${#parts[@]} - 1; i++)); do
        d+=/${parts[$i]}
        echo "mkdir $d" >>"$cmds"
    done
    printf 'rm %s\nwrite %s %s\n' "$dest" "$src" "$dest" >>"$cmds"
    debugfs -w -f "$cmds" "$img?offset=$SR_IMG_PART_OFFSET" >/dev/null 2>&1 || true
    cmp -s "$src" <(sr_img_cat "$img" "$dest") || sr_die "could not write $dest into $img"
    rm -f "$src" "$cmds"
}

# sr_img_rm_tree IMG DIR: remove DIR and everything under it from the
# image's root file system (debugfs; nothing when it is not there).
sr_img_rm_tree() {
    local img=$1 dir=$2 ino mode name
    while IFS=/ read -r _ ino mode _ _ name _; do
        case "$name" in "" | . | ..) continue ;; esac
        if [ "${mode:0:2}" = 04 ]; then
            sr_img_rm_tree "$img" "$dir/$name"
        else
            debugfs -w -R "rm $dir/$name" "$img?offset=$SR_IMG_PART_OFFSET" >/dev/null 2>&1
        fi
    done < <(debugfs -R "ls -p $dir" "$img?offset=$SR_IMG_PART_OFFSET" 2>/dev/null)
    debugfs -w -R "rmdir $dir" "$img?offset=$SR_IMG_PART_OFFSET" >/dev/null 2>&1 || true
}

# sr_sanboot_node_records IMG BOOT_IQN OTHER_IQN PORT AUTH INITIATOR [HOST]: what an
# installer leaves on a SAN-booted root (issue 13): the initiator name, and
# open-iscsi node records with node.startup = automatic for the boot target
# (with its CHAP credentials, as `iscsiadm -m discovery … -l` during the
# installation saves them) and for a second, unrelated target, in the
# database of the image's open-iscsi (SR_IMG_DISTRO): Debian 12's 2.1.8
# reads /etc/iscsi/nodes, Debian 13's 2.1.11 /var/lib/iscsi/nodes. The boot
# target's record is also put in the other one (13: as an upgraded
# machine's old /etc/iscsi/nodes keeps it), which that open-iscsi does not
# read but sanroot must hide as well. HOST is the portal's address in the
# guest (default 10.0.2.2; an IPv6 address without brackets, as
# open-iscsi writes it).
sr_sanboot_node_records() {
    local img=$1 boot=$2 other=$3 port=$4 auth=$5 initiator=$6 host=${7:-10.0.2.2} t rec db=/etc/iscsi/nodes old=/var/lib/iscsi/nodes ver=2.1.8
    if [ "${SR_IMG_DISTRO:-12}" != 12 ]; then
        db=/var/lib/iscsi/nodes old=/etc/iscsi/nodes ver=2.1.11
    fi
    # A disk booted before (qemu/sanboot --disk) has records of another port.
    sr_img_rm_tree "$img" /etc/iscsi/nodes
    sr_img_rm_tree "$img" /var/lib/iscsi/nodes
    printf 'InitiatorName=%s\n' "$initiator" | sr_img_put "$img" /etc/iscsi/initiatorname.iscsi 0600
    for t in "$boot" "$other"; do
        rec="# BEGIN RECORD $ver
node.name = $t
node.tpgt = 1
node.startup = automatic
node.leading_login = No
iface.iscsi_ifacename = default
iface.transport_name = tcp
node.discovery_address = $host
node.discovery_port = $port
node.discovery_type = send_targets"
        if [ "$t" = "$boot" ] && [ "$auth" != none ]; then
            rec+="
node.session.auth.authmethod = CHAP
node.session.auth.username = $SR_SANBOOT_USER
node.session.auth.password = $SR_SANBOOT_SECRET"
            [ "$auth" != mutual ] || rec+="
node.session.auth.username_in = $SR_SANBOOT_TUSER
node.session.auth.password_in = $SR_SANBOOT_TSECRET"
        else
            rec+="
node.session.auth.authmethod = None"
        fi
        rec+="
node.conn[0].address = $host
node.conn[0].port = $port
node.conn[0].startup = automatic
# END RECORD"
        printf '%s\n' "$rec" | sr_img_put "$img" "$db/$t/$host,$port,1/default"
        [ "$t" != "$boot" ] || printf '%s\n' "$rec" | sr_img_put "$img" "$old/$t/$host,$port,1/default"
    done
}

# sr_sanboot_ipxe_script MODE IQN PORT AUTH NET INITIATOR [APPEND]: the iPXE
# script. MODE sanboot: boot the disk (its MBR, GRUB) from the SAN drive;
# MODE sanhook: hook the drive (iBFT) and boot kernel+initrd over TFTP with
# APPEND (UEFI: initrd= is added). NET dhcp keeps iPXE's DHCP lease (iBFT
# origin dhcp), static sets the same address by hand (origin manual).
sr_sanboot_ipxe_script() {
    local mode=$1 iqn=$2 port=$3 auth=$4 net=$5 initiator=$6 append=${7:-}
    echo '#!ipxe'
    echo 'echo sanroot: iPXE script running'
    echo "set initiator-iqn $initiator"
    case "$auth" in
    chap | mutual)
        echo "set username $SR_SANBOOT_USER"
        echo "set password $SR_SANBOOT_SECRET"
        ;;
    esac
    if [ "$auth" = mutual ]; then
        echo "set reverse-username $SR_SANBOOT_TUSER"
        echo "set reverse-password $SR_SANBOOT_TSECRET"
    fi
    if [ "$net" = static ]; then
        echo ifclose
        echo "set net0/ip $SR_GUEST_IP"
        echo "set net0/netmask $SR_GUEST_NETMASK"
        echo "set net0/gateway $SR_GUEST_GATEWAY"
        echo "set dns $SR_GUEST_DNS"
        echo "set hostname $SR_GUEST_HOSTNAME"
        echo ifopen
    fi
    case "$mode" in
    sanboot)
        echo "echo sanroot: iPXE sanboot iscsi:10.0.2.2::$port:1:$iqn"
        echo "sanboot iscsi:10.0.2.2::$port:1:$iqn || goto failed"
        ;;
    sanhook-bios | sanhook-uefi)
        [ "$mode" = sanhook-uefi ] && append="initrd=initrd.img $append"
        echo "echo sanroot: iPXE sanhook iscsi:10.0.2.2::$port:1:$iqn"
        echo "sanhook iscsi:10.0.2.2::$port:1:$iqn || goto failed"
        echo "kernel tftp://10.0.2.2/vmlinuz $append || goto failed"
        echo 'initrd tftp://10.0.2.2/initrd.img || goto failed'
        echo 'boot || goto failed'
        ;;
    *) sr_die "unknown iPXE mode $mode" ;;
    esac
    echo ':failed'
    echo 'echo sanroot: iPXE script failed'
    echo 'reboot' # QEMU runs with -no-reboot: this ends the run
}

# sr_sanboot_controller LOG SOCK RESULTS TID TOKEN PIDFILE: the host side of
# a boot, run in the background before QEMU starts. It listens on the unix
# socket SOCK that the guest's second serial port (ttyS1) connects to,
# follows the console log LOG, samples the number of I_T nexuses (sessions)
# of target TID every 0.25 s, and writes key=value lines to RESULTS:
#   event.NAME.t / event.NAME.sessions   when a console milestone showed up
#                                       and the session count at that moment
#                                       (event.ipxe_login.t: the target's
#                                       first session, iPXE's login)
#   guest.KEY                            the check service's "R KEY=VALUE"
#   sessions_at_check                    the count when the guest said READY
#   sessions_max / sessions_timeline     the highest count, every change
#   initiators_at_* / event.NAME.nexus / nexus_since_kernel
#                                       tgtd's I_T nexus ids ("IQN#ID"):
#                                       which sessions, not only how many
#   initiators_at_logout / qemu_alive_at_logout
#                                       sampled again right when sanroot's
#                                       shutdown hook said it logged out,
#                                       and whether QEMU was still running
#   nexus_last_alive                     the nexus ids of the last sample
#                                       taken while QEMU still ran (checked
#                                       after the sample): a session gone
#                                       there was logged out by the guest,
#                                       not dropped when QEMU's sockets
#                                       closed. With -action shutdown=pause
#                                       (qemu/sanboot) the last sample is
#                                       taken at the power-off, QEMU paused
#                                       with its connections open
#                                       (initiators_at_poweroff); then the
#                                       controller ends QEMU (SIGTERM)
#   initiators_after_exit               a sample once QEMU has exited
#   shutdown_problem                     console lines that say the root was
#                                       not unmounted or logged out cleanly
# When the guest says READY it answers "GO token=TOKEN" (with
# SR_SANBOOT_HOLD_GO=PATH in the environment: once PATH exists, so that the
# host can act on the running machine first; event.go.t says when). It prints the
# milestones on stderr as they happen, and stops QEMU (PIDFILE) 20 s after a
# fatal console line (panic, emergency shell).
sr_sanboot_controller() {
    python3 - "$@" "$SR_TGT_CTL" <<'PY'
import os, re, socket, subprocess, sys, time

log, sock_path, results, tid, token, pidfile, ctl = sys.argv[1:8]
out = open(results, "w", buffering=1)
t0 = time.time()

def emit(k, v):
    out.write(f"{k}={v}\n")

def say(msg):
    sys.stderr.write(f"  [{time.time() - t0:6.1f} s] {msg}\n")
    sys.stderr.flush()

def sessions():
    try:
        text = subprocess.run(["tgtadm", "-C", ctl, "--lld", "iscsi", "--mode", "target",
                               "--op", "show"], capture_output=True, text=True, timeout=10).stdout
    except Exception:
        return -1, []
    cur, n, inits, nexus = None, 0, [], "?"
    for line in text.splitlines():
        m = re.match(r"Target (\d+):", line)
        if m:
            cur = m.group(1)
            continue
        if cur != tid:
            continue
        m = re.match(r"\s+I_T nexus: (\d+)", line)
        if m:
            n += 1
            nexus = m.group(1)
        m = re.match(r"\s+Initiator: (\S+)", line)
        if m:
            inits.append(f"{m.group(1)}#{nexus}")
    return n, inits

EVENTS = [
    ("ipxe", re.compile(r"sanroot: iPXE script running"), "iPXE runs the boot script"),
    ("ipxe_san", re.compile(r"sanroot: iPXE (sanboot|sanhook) "), "iPXE logs in to the target (its own session)"),
    ("grub", re.compile(r"sanroot-grub: "), "GRUB, read from the iSCSI disk, loads Linux and the initramfs"),
    ("kernel", re.compile(r"Linux version \d"), "Linux starts"),
    ("sanroot_queued", re.compile(r"sanroot: acting on "), "dracut's cmdline hook queued 'sanroot boot'"),
    ("sanroot_ready", re.compile(r"sanroot\[\d+\]: root disk (\S+) is ready"), "sanroot: root disk ready"),
    ("root_mounted", re.compile(r"EXT4-fs \((ublkb|nbd)\d+p?\d*\): mounted"), "the root file system is mounted from the LUN"),
    ("switch_root", re.compile(r"Switching root|Reached target.*Switch Root"), "switching to the real root"),
    ("nm", re.compile(r"(Started|Starting).*(NetworkManager\.service|Network Manager)"), "NetworkManager starts in the real root"),
    ("multi_user", re.compile(r"Reached target.*Multi-User System"), "multi-user reached"),
    ("shutdown", re.compile(r"systemd-shutdown\[1\]: |Reached target.*(Power-Off|System Power Off)"), "systemd shuts down"),
    ("remount_ro", re.compile(r"EXT4-fs \((ublkb|nbd)\d+p?\d*\): re-mounted .* ro\b"), "systemd-shutdown remounted / read-only"),
    ("initramfs_shutdown", re.compile(r"Unmounted /oldroot"), "back in the initramfs: the old root is unmounted"),
    ("sanroot_logout", re.compile(r"sanroot-shutdown: (\S+): cache flushed, logged out"), "sanroot flushed, logged out and removed the root disk"),
    ("poweroff", re.compile(r"reboot: Power down"), "powered off"),
]
SHUTDOWN_PROBLEM = re.compile(r"Failed to remount '/'|Cannot umount /oldroot|Unmounting /oldroot timed out|"
                              r"Not all file systems unmounted|sanroot-shutdown: .*(failed|did not finish|without)|"
                              r"Unpacking of .* failed|dracut-shutdown.*failed|"
                              r"sanroot\[\d+\]: .*(final SYNCHRONIZE CACHE|logout: )")
REBOOT = re.compile(r"reboot: (Restarting system|System halted)")
FATAL = re.compile(r"Kernel panic|Entering emergency mode|dracut Warning: Could not boot|"
                   r"Dropping to debug shell|emergency shell|You are in emergency mode|"
                   r"Cannot open access to console|sanroot: iPXE script failed")

srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sock_path)
srv.listen(1)
srv.settimeout(120)
try:
    conn, _ = srv.accept()
except socket.timeout:
    emit("controller_error", "QEMU never connected to the control socket")
    sys.exit(1)
conn.setblocking(False)

seen, last_n, max_n, timeline = {}, None, 0, []
nexus_since_kernel = set()
console_pos, partial, guest_buf = 0, "", b""
fatal_at, eof = None, False
next_sample = 0.0
qemu_pid = None
last_alive = None
go_pending = False
hold_go = os.environ.get("SR_SANBOOT_HOLD_GO", "")

def qemu_alive():
    global qemu_pid
    try:
        if qemu_pid is None:
            qemu_pid = int(open(pidfile).read().strip())
        os.kill(qemu_pid, 0)
        return True
    except Exception:
        return False

def stop_paused_qemu(desc):
    """qemu/sanboot runs QEMU with -action shutdown=pause: at the guest's
    power-off (or reboot) QEMU stops instead of exiting, and its TCP
    connections stay open. A session still on the target now was not
    logged out by the guest; one gone was. Sample, then end QEMU."""
    global last_alive
    time.sleep(0.3)
    n2, i2 = sessions()
    if qemu_alive():
        last_alive = i2
        emit("initiators_at_poweroff", ",".join(i2))
        say(f"{desc} (QEMU paused): target {tid} has {n2} session(s) {'(' + ', '.join(i2) + ')' if i2 else ''}")
        try:
            os.kill(qemu_pid, 15)
        except Exception:
            pass
    else:
        say(desc)

n, inits = sessions()
while True:
    now = time.time() - t0
    if now >= next_sample:
        n, inits = sessions()
        if qemu_alive():
            last_alive = inits
        # From the shutdown on, sample often: when did sanroot's session
        # end, compared with QEMU's exit?
        next_sample = now + (0.05 if "shutdown" in seen else 0.25)
        if "kernel" in seen:
            for i in inits:
                nexus_since_kernel.add(i.split("#")[-1])
        if n > 0 and "ipxe_login" not in seen:
            # BIOS iPXE prints to the screen only; its login shows here.
            seen["ipxe_login"] = now
            emit("event.ipxe_login.t", f"{now:.1f}")
        if n != last_n:
            timeline.append(f"{now:.1f}:{n}[{'+'.join(i.split('#')[-1] for i in inits)}]")
            if last_n is not None:
                say(f"target {tid}: {n} session(s) {'(' + ', '.join(inits) + ')' if inits else ''}")
            last_n = n
            max_n = max(max_n, n)
    # console
    try:
        with open(log, "rb") as f:
            f.seek(console_pos)
            data = f.read()
            console_pos += len(data)
    except FileNotFoundError:
        data = b""
    if data:
        text = partial + data.decode("utf-8", "replace").replace("\r", "")
        lines = text.split("\n")
        partial = lines.pop()
        for line in lines:
            for name, rx, desc in EVENTS:
                if name in seen:
                    continue
                m = rx.search(line)
                if m:
                    seen[name] = now
                    emit(f"event.{name}.t", f"{now:.1f}")
                    emit(f"event.{name}.sessions", n)
                    emit(f"event.{name}.nexus", "+".join(i.split("#")[-1] for i in inits))
                    if name == "sanroot_logout":
                        n2, i2 = sessions()
                        alive = qemu_alive()
                        if alive:
                            last_alive = i2
                        emit("initiators_at_logout", ",".join(i2))
                        emit("logout_dev", m.group(1))
                        emit("qemu_alive_at_logout", int(alive))
                        say(f"{desc}: target {tid} has {n2} session(s) {'(' + ', '.join(i2) + ')' if i2 else ''}{'' if alive else ' (QEMU already gone)'}")
                    elif name == "poweroff":
                        stop_paused_qemu(desc)
                    elif name == "sanroot_ready":
                        # the count right at the ready line, fresh
                        n2, i2 = sessions()
                        emit("sessions_at_ready", n2)
                        emit("initiators_at_ready", ",".join(i2))
                        emit("ready_dev", m.group(1))
                        emit("ready_line", line.strip())
                        say(f"{desc}: {m.group(1)}; target {tid} has {n2} session(s)")
                    else:
                        say(desc)
            if "reboot" not in seen and REBOOT.search(line):
                seen["reboot"] = now
                emit("event.reboot.t", f"{now:.1f}")
                stop_paused_qemu("the guest rebooted or halted")
            if SHUTDOWN_PROBLEM.search(line):
                emit("shutdown_problem", line.strip())
                say(f"shutdown problem: {line.strip()}")
            if fatal_at is None and FATAL.search(line):
                fatal_at = now
                emit("fatal", line.strip())
                say(f"FATAL on the console: {line.strip()}")
    # guest channel (ttyS1)
    try:
        chunk = conn.recv(65536)
        if chunk == b"":
            eof = True
        else:
            guest_buf += chunk
    except BlockingIOError:
        pass
    except OSError:
        eof = True
    while b"\n" in guest_buf:
        raw, guest_buf = guest_buf.split(b"\n", 1)
        line = raw.decode("utf-8", "replace").rstrip("\r")
        if line.startswith("R ") and "=" in line:
            k, v = line[2:].split("=", 1)
            emit(f"guest.{k}", v)
        elif line == "HELLO":
            emit("event.check_started.t", f"{now:.1f}")
            say("the check service runs in the real root")
        elif line == "READY":
            n2, i2 = sessions()
            emit("sessions_at_check", n2)
            emit("initiators_at_check", ",".join(i2))
            emit("event.check_ready.t", f"{now:.1f}")
            say(f"the guest reported (multi-user, NetworkManager, iscsid up): target {tid} has {n2} session(s)")
            go_pending = True
            if hold_go:
                say(f"the go waits for {hold_go}")
        elif line == "DONE":
            emit("guest_done", 1)
            emit("event.check_done.t", f"{now:.1f}")
            say("the guest wrote its token to the root and powers off")
    if go_pending and (not hold_go or os.path.exists(hold_go)):
        go_pending = False
        emit("event.go.t", f"{now:.1f}")
        conn.setblocking(True)
        conn.sendall(f"GO token={token}\n".encode())
        conn.setblocking(False)
    if eof:
        break
    if fatal_at is not None and now - fatal_at > 20:
        try:
            pid = int(open(pidfile).read().strip())
            os.kill(pid, 15)
            emit("killed_after_fatal", 1)
        except Exception:
            pass
        fatal_at = float("inf")
    time.sleep(0.1)

emit("sessions_max", max_n)
emit("nexus_last_alive", "+".join(i.split("#")[-1] for i in (last_alive or [])))
_, i2 = sessions()
emit("initiators_after_exit", ",".join(i2))
emit("nexus_since_kernel", "+".join(sorted(nexus_since_kernel, key=int)))
emit("sessions_timeline", " ".join(timeline))
emit("controller_seconds", f"{time.time() - t0:.1f}")
PY
}

# ---- fault tests (qemu/fault-guest, tests/fault_guest.rs) --------------------

# sr_fault_initramfs OUT BIN INIT: a gzip'd initramfs with static busybox,
# the static sanroot BIN as /sanroot, INIT as /init, the modules for a
# virtio NIC, nbd, ublk and ext4 (with their dependencies, in insmod order)
# and e2fsprogs' mkfs.ext4 and e2fsck (busybox has neither for ext4).
sr_fault_initramfs() {
    local out=$1 bin=$2 init=$3 root
    [ -n "${SR_KVER:-}" ] || sr_find_kernel
    root=$(mktemp -d "$SR_WORK/initramfs.XXXXXX")
    mkdir -p "$root"/{bin,dev,proc,sys,tmp,mnt,etc,run,lib/modules}
    cp /bin/busybox "$root/bin/busybox"
    cp "$bin" "$root/sanroot"
    cp "$init" "$root/init"
    chmod 755 "$root/init" "$root/sanroot"
    # crc32c_generic before ext4/jbd2 (a softdep modinfo does not list).
    sr_copy_modules_deps "$root/lib/modules" virtio_net nbd ublk_drv crc32c_generic ext4
    sr_copy_dynamic "$root" /usr/sbin/mkfs.ext4 /usr/sbin/mke2fs /usr/sbin/e2fsck
    cp /etc/mke2fs.conf "$root/etc/mke2fs.conf"
    rm -f "$root/etc/initrd-release"
    mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
    (cd "$root" && find . -print0 | sort -z | cpio --quiet -o -0 -H newc -R 0:0) | gzip -1 >"$out"
}

# sr_fault_results LOG: every "@key=value" line the guest printed inside a
# "===SANROOT-BEGIN NAME===" section as "NAME.key=value", and each section
# on stderr ("===== guest: NAME =====", "(cut short)" without its end).
sr_fault_results() {
    python3 - "$1" <<'PY'
import re, sys
text = open(sys.argv[1], "rb").read().decode("utf-8", "replace").replace("\r", "")
name, body = None, []
def flush(complete):
    if name is None:
        return
    print(f"===== guest: {name}{'' if complete else ' (cut short)'} =====", file=sys.stderr)
    print("\n".join(body), file=sys.stderr)
for line in text.split("\n"):
    m = re.match(r"^===SANROOT-BEGIN (\S+)===$", line)
    if m:
        flush(False)
        name, body = m.group(1), []
        continue
    if name is not None and line == f"===SANROOT-END {name}===":
        flush(True)
        name = None
        continue
    if name is None:
        continue
    body.append(line)
    m = re.match(r"^@([A-Za-z0-9_]+)=(.*)$", line)
    if m:
        print(f"{name}.{m.group(1)}={m.group(2)}")
flush(False)
PY
}

# sr_fault_manifest LOG OUT: the guest's "manifest" section ("SHA256 NAME"
# lines) into OUT; fails when the section is missing or incomplete.
sr_fault_manifest() {
    sr_extract_section "$1" manifest >"$2"
}

# sr_fault_check_image IMG MANIFEST PREFIX: what is really on the target.
# Extracts /w from the ext4 in IMG (debugfs, read-only) and compares every
# "SHA256 NAME" line of MANIFEST with the file's SHA-256; then e2fsck -fn.
# Prints PREFIX.host_entries, .host_ok, .host_bad, .host_missing and
# .host_fsck_rc (and each bad or missing name on stderr).
sr_fault_check_image() {
    local img=$1 manifest=$2 p=$3 out want name got n=0 ok=0 bad=0 missing=0 frc=0
    out=$(mktemp -d "$SR_WORK/extract.XXXXXX")
    debugfs -R "rdump /w $out" "$img" >"$out.debugfs" 2>&1 || true
    while read -r want name; do
        [ -n "$name" ] || continue
        n=$((n + 1))
        if [ ! -f "$out/w/$name" ]; then
            missing=$((missing + 1))
            sr_log "host check: $name is not in the image"
            continue
        fi
        got=$(sha256sum <"$out/w/$name" | cut -c 1-64)
        if [ "$got" = "$want" ]; then
            ok=$((ok + 1))
        else
            bad=$((bad + 1))
            sr_log "host check: $name has $got on the target, the guest wrote $want"
        fi
    done <"$manifest"
    echo "$p.host_entries=$n"
    echo "$p.host_ok=$ok"
    echo "$p.host_bad=$bad"
    echo "$p.host_missing=$missing"
    e2fsck -fn "$img" >"$out.fsck" 2>&1 || frc=$?
    echo "$p.host_fsck_rc=$frc"
    sed "s/^/host e2fsck -fn: /" "$out.fsck" >&2
    rm -rf "$out"
}
