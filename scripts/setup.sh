#!/usr/bin/env bash
# Install what vmm needs on a Debian 12 machine: apt packages (only the missing ones, so a
# second run is quick; `--tests` adds what only the tests need), the pinned passt (built once into the cache), and the package
# itself, editable, with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential python3-dev linux-libc-dev   # the C core
  qemu-system-x86 qemu-utils                    # the qemu engine
  linux-source-6.1 flex bison bc libelf-dev libssl-dev cpio xz-utils  # the guest kernel
  musl-tools busybox-static                     # guest init and test guests
  e2fsprogs erofs-utils                         # disks
  passt socat curl                              # networking (Debian's passt: the fallback)
)
# Only for the tests (`scripts/test.sh` passes --tests): a user who runs sandboxes gets no
# container engines, and no dockerd that apt would start on a systemd host.
TEST_PACKAGES=(
  docker-registry skopeo umoci apache2-utils    # image tests and benchmarks
  mmdebstrap                                    # the walkthrough test's image (built once)
  containerd runc podman                        # vmm-runtime: real clients, runc the reference
  docker.io                                     # vmm-runtime under `docker --runtime` (/usr/bin/docker;
                                                # on a systemd host apt starts its dockerd, the tests run their own)
  containernetworking-plugins                   # CNI bridge + host-local for the CRI pod test
)
if [ "${1:-}" = "--tests" ]; then
  APT_PACKAGES+=("${TEST_PACKAGES[@]}")
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The pinned passt sandboxes use (Debian 12's drops frames on a full socket and stalls
# guest servers that speak first): built once into ~/.cache/vmm/passt, see the script.
scripts/build-passt.sh

PY=${PYTHON:-python3}
echo "setup: installing vmm (pip install -e .[test,lab])" >&2
$PY -m pip install -q --disable-pip-version-check -e ".[test,lab]" 2>&1 | grep -v -e "^WARNING: Location" -e "Running pip as the 'root'" >&2 || true
$PY -c "import vmm._core" || { echo "setup: the C core did not build" >&2; exit 1; }
[ -x vmm/bin/vmm-boot ] || { echo "setup: the launcher vmm/bin/vmm-boot did not build" >&2; exit 1; }
