"""`msb` command groups, one module each. Add a module and list it in GROUPS."""
import importlib

GROUPS = ["vmm.commands.images"]


def register_all(cli):
    for name in GROUPS:
        importlib.import_module(name).register(cli)
