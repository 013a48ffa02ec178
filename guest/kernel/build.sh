#!/bin/sh
# Build the guest kernel: Debian's linux-source tarball + guest/kernel/config -> vmlinux.
#
#   build.sh TARBALL CONFIG OUTDIR [JOBS]
#
# Leaves OUTDIR/vmlinux, OUTDIR/config (the full .config) and OUTDIR/release on
# success; the source tree is extracted to OUTDIR/src and removed afterwards unless
# VMM_KEEP_KERNEL_TREE=1. Progress lines start with "vmm-kernel: " so a caller can show
# them and keep the rest (the make log) out of sight. vmm/kernel.py calls this with a
# cache directory and a lock; it can also be run by hand.
set -eu

tarball=$1
config=$2
out=$3
jobs=${4:-2}

say() { echo "vmm-kernel: $*"; }
die() { echo "vmm-kernel: error: $*"; exit 1; }

[ -r "$tarball" ] || die "kernel source not found: $tarball (apt-get install linux-source-6.1)"
[ -r "$config" ] || die "kernel config not found: $config"
mkdir -p "$out"
src=$out/src
rm -rf "$src"
mkdir -p "$src"

say "extracting $(basename "$tarball")"
tar -xJf "$tarball" -C "$src" --strip-components=1

say "configuring: tinyconfig + $(basename "$config"), then olddefconfig"
make -C "$src" -s ARCH=x86_64 tinyconfig
"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$config"
make -C "$src" -s ARCH=x86_64 olddefconfig

# Every option the config names must have survived olddefconfig with its value: an
# unmet dependency silently drops an option, and the guest would fail much later.
say "checking that every option in $(basename "$config") survived"
missing=$(grep -E '^(CONFIG_[A-Za-z0-9_]+=|# CONFIG_[A-Za-z0-9_]+ is not set)' "$config" |
    while IFS= read -r line; do
        case $line in
        "# "*)
            opt=${line#"# "}
            opt=${opt%% *}
            if grep -q "^$opt=" "$src/.config"; then echo "$opt (wanted off, is on)"; fi
            ;;
        *)
            if ! grep -qxF "$line" "$src/.config"; then
                opt=${line%%=*}
                got=$(grep "^$opt=" "$src/.config" || echo "not set")
                echo "$line (got: ${got#*=})"
            fi
            ;;
        esac
    done)
if [ -n "$missing" ]; then
    echo "$missing" | sed 's/^/vmm-kernel: dropped: /'
    die "olddefconfig dropped options the config demands (first: $(echo "$missing" | head -n1)); fix their dependencies in $config"
fi

say "compiling vmlinux (make -j$jobs; a few minutes on 2 cores)"
make -C "$src" ARCH=x86_64 -j"$jobs" vmlinux

say "copying vmlinux out"
make -C "$src" -s ARCH=x86_64 kernelrelease > "$out/release.tmp"
cp "$src/.config" "$out/config.tmp"
cp "$src/vmlinux" "$out/vmlinux.tmp"
mv "$out/release.tmp" "$out/release"
mv "$out/config.tmp" "$out/config"
# vmlinux last: its presence is what marks the build complete.
mv "$out/vmlinux.tmp" "$out/vmlinux"

if [ "${VMM_KEEP_KERNEL_TREE:-0}" != 1 ]; then
    say "removing the build tree"
    rm -rf "$src"
fi
say "done: $out/vmlinux"
