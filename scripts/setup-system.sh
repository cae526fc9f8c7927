#!/bin/sh
# System set-up for `memfail conform` (and the tools other parts of memfail use: SPIN, rasdaemon,
# headless Chromium for the report test): installs what
# is missing with apt-get, and unpacks Debian's 6.1 kernel image into .cache/kernels/debian-6.1
# without installing it as the host's kernel (no postinst, initramfs or boot loader changes).
# Idempotent: a second run finds everything present and returns at once.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${MEMFAIL_CACHE:-$ROOT/.cache}
KDIR=$CACHE/kernels/debian-6.1
MODULES="hwpoison-inject crc16 mbcache jbd2 crc32c_generic ext4 brd"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

need=""
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
for p in qemu-system-x86 busybox-static cpio gcc libc6-dev spin rasdaemon chromium chromium-driver; do
    have_pkg "$p" || need="$need $p"
done

updated=""
apt_update() {
    if [ -z "$updated" ]; then
        $SUDO apt-get update -qq
        updated=1
    fi
}

if [ -n "$need" ]; then
    echo "setup-system: installing$need"
    apt_update
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need
fi

if [ ! -f "$KDIR/vmlinuz" ] || [ ! -f "$KDIR/modules/hwpoison-inject.ko" ]; then
    # the exact image package linux-image-amd64 (bookworm: 6.1) depends on
    image=$(apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-6\.1\.[^ ]*-amd64\)$/\1/p' | head -n 1)
    if [ -z "$image" ]; then
        apt_update
        image=$(apt-cache depends linux-image-amd64 |
            sed -n 's/^ *Depends: \(linux-image-6\.1\.[^ ]*-amd64\)$/\1/p' | head -n 1)
    fi
    [ -n "$image" ] || { echo "setup-system: no linux-image-6.1.*-amd64 package found" >&2; exit 1; }
    echo "setup-system: unpacking $image into $KDIR"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    chmod 755 "$tmp"
    (cd "$tmp" && apt-get download -qq "$image" 2>/dev/null || (cd "$tmp" && $SUDO apt-get download -qq "$image"))
    dpkg-deb -x "$tmp"/linux-image-*.deb "$tmp/root"
    mkdir -p "$KDIR/modules"
    cp "$tmp"/root/boot/vmlinuz-* "$KDIR/vmlinuz"
    cp "$tmp"/root/boot/config-* "$KDIR/config"
    for m in $MODULES; do
        f=$(find "$tmp/root/lib/modules" -name "$m.ko*" | head -n 1)
        [ -n "$f" ] || continue
        case "$f" in
            *.xz) xz -dc "$f" > "$KDIR/modules/$m.ko" ;;
            *.zst) zstd -qdc "$f" > "$KDIR/modules/$m.ko" ;;
            *) cp "$f" "$KDIR/modules/$m.ko" ;;
        esac
    done
    echo "$image" > "$KDIR/package"
fi
