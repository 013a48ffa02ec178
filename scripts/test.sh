#!/usr/bin/env bash
# Quick start, part 2: set up, build the guest kernel if the cache lacks it, run every test.
# Pass pytest arguments to narrow it, e.g. `scripts/test.sh -m "not slow"` for the fast tier.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
python3 -c "from vmm.guest import kernel; kernel.guest_kernel(); kernel.test_initramfs()"
exec python3 -m pytest "$@"
