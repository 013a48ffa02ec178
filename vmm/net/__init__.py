"""Sandbox networking: the Network config (network.py), published ports (ports.py)."""
