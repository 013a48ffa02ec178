"""The runtime's one failure type: a command failed, and its message is what the user (or
the shim, from the JSON log) reads."""


class RuntimeFailure(Exception):
    pass
