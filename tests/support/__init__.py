"""Helpers shared by the tests and the benchmarks: guest builders, registry and image
fixtures, test virtio drivers, fuzz runners. pytest puts tests/ on sys.path
(pyproject.toml `pythonpath`), so both import them as `support.<module>`."""
