#!/usr/bin/env bash
# The C core built with ASan + UBSan, cached under ~/.cache/vmm/sancore/<key of its inputs>
# (tests/support/sanitized_core.py); prints the path of the built vmm/_core*.so.
#   scripts/build-sanitized-core.sh                 build it, or find it in the cache
#   scripts/build-sanitized-core.sh fuzz 300        the fuzz tier, 300 s per fuzzer (local mode)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHONPATH="$PWD/tests:$PWD${PYTHONPATH:+:$PYTHONPATH}" exec python3 -m support.sanitized_core "$@"
