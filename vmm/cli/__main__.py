"""`python -m vmm.cli`: the same as the `msb` console script."""
from . import main

main()
