#!/usr/bin/env bash
# Quick start, part 1: set up, then boot the project's guest kernel and test initramfs (built
# and cached on first use) and print the console, the boot timeline and the exit statistics.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Not exec: the timeline counts from the Python process start, not from this script's (setup).
python3 -m vmm boot --timeline "$@"
