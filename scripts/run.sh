#!/usr/bin/env bash
# Quick start, part 1: set up, then run a command in a sandbox with `msb run` (the offline
# default image, built on first use from Debian's busybox-static: no registry needed; the
# guest kernel is built and cached on first use). Arguments replace the default command:
#   scripts/run.sh uname -a
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2
if [ "$#" -eq 0 ]; then
    set -- sh -c 'echo "hello from a sandbox: $(uname -sr), $(cat /proc/cpuinfo | grep -c ^processor) vCPU"'
fi
exec python3 -m vmm.cli run -- "$@"
