#!/usr/bin/env bash
# Build the pinned passt (Debian trixie's source, 2025-05-03) into the cache, once.
#
# Why not Debian 12's package: its passt (2023-03) drops the rest of a batch of frames when
# its socket is full and recovers only by go-back-N (a 64 MiB download 10x slower with a
# default-sized send buffer), and it stalls forwarded connections to guest servers that
# speak first. Newer passt rewinds its sequence numbers for frames it could not send.
#
# Result: ${VMM_CACHE:-~/.cache/vmm}/passt/<first 16 hex of the tarball's sha256>/passt
# (and passt.avx2, which passt execs itself into on CPUs with AVX2). vmm/engines/
# net_backend.py looks there (after $VMM_PASST, before `passt` on PATH) and pins the same
# hash: change both together (tests/test_net_ports.py checks they agree).
#
# Present: nothing to do. Otherwise, holding <entry>.lock: download, check the sha256,
# build in a temporary directory beside the entry and rename it into place, so a reader
# never sees a half-built entry and a killed build leaves only a *.tmp.* directory
# (removed by the next build).
set -euo pipefail

PASST_URL='http://deb.debian.org/debian/pool/main/p/passt/passt_0.0~git20250503.587980c.orig.tar.xz'
PASST_SHA256=69d5eb843f7d648c2cc60bfbca6ea7b5014c6b6f07cdee362c2a8cf490515a49
PASST_VERSION=2025_05_03.587980c

root="${VMM_CACHE:-$HOME/.cache/vmm}/passt"
entry="$root/${PASST_SHA256:0:16}"
if [ -x "$entry/passt" ]; then
  exit 0
fi

mkdir -p "$root"
# One builder at a time (parallel setups, CI jobs sharing a cache): the others wait here
# and then find the entry.
exec 9>"$entry.lock"
flock 9
if [ -x "$entry/passt" ]; then
  exit 0
fi
rm -rf "$entry".tmp.*   # leftovers of a killed build (no other builder holds the lock)
tmp=$(mktemp -d "$entry.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "build-passt: downloading passt $PASST_VERSION" >&2
tarball="$tmp/passt.tar.xz"
curl -fsSL --retry 3 -o "$tarball" "$PASST_URL"
echo "$PASST_SHA256  $tarball" | sha256sum -c --quiet - || {
  echo "build-passt: $PASST_URL does not have the pinned sha256 $PASST_SHA256" >&2
  exit 1
}
mkdir "$tmp/src"
tar -xJf "$tarball" -C "$tmp/src" --strip-components=1
echo "build-passt: building passt $PASST_VERSION" >&2
targets=(passt)
[ "$(uname -m)" = x86_64 ] && targets+=(passt.avx2)
# One target per make run: passt.avx2 depends on passt, and make would otherwise build
# passt as its prerequisite with the AVX2 flags (a plain passt that dies on older CPUs).
for t in "${targets[@]}"; do
  if ! make -C "$tmp/src" VERSION="$PASST_VERSION" "$t" >>"$tmp/build.log" 2>&1; then
    tail -20 "$tmp/build.log" >&2
    echo "build-passt: the passt build failed (log above)" >&2
    exit 1
  fi
done
mkdir "$tmp/out"
for t in "${targets[@]}"; do
  install -m 0755 "$tmp/src/$t" "$tmp/out/$t"
done
"$tmp/out/passt" --version >/dev/null   # it runs here

# Publish: one rename of the whole directory.
mv -T "$tmp/out" "$entry"
echo "build-passt: installed $entry/passt" >&2
