"""OCI images: pull, store, turn into root disks (filled in below)."""
