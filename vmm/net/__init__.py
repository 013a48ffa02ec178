"""Sandbox networking (issue 10): for now the egress policy (`vmm.net.policy`).

Nothing is imported here, so `import vmm.net` stays free of the C core."""
