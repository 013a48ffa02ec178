"""The OCI runtime (`vmm-runtime`): a runc-compatible command line that runs each container as one of our microVMs."""
