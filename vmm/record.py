"""Record: plain data classes with an __init__, __repr__ and __eq__ made from the class's
annotations, as @dataclass makes them, for the types every short-lived `msb exec` builds
(the agent's results, a sandbox database row).

    class Point(Record):
        x: int
        y: int = 0
        tags: list = Factory(list)      # a fresh default per instance
        record_hidden = ("tags",)       # left out of repr()

Why not dataclasses: importing it imports inspect (with ast, dis and tokenize), ~3 ms
that each `msb exec` process would pay before doing anything (docs/lifecycle.md,
"Start-up cost"). Fields are the annotations in definition order, base classes first;
a class attribute of the same name is the default. Instances compare equal when they are
of the same class with equal fields, and are unhashable, as a non-frozen dataclass.
"""


class Factory:
    """A default made fresh for each instance by calling make()."""

    def __init__(self, make):
        self.make = make


class Record:
    record_fields: tuple = ()
    record_defaults: dict = {}
    record_hidden: tuple = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        names = []
        for klass in reversed(cls.__mro__):
            for name in klass.__dict__.get("__annotations__", {}):
                if not name.startswith("record_") and name not in names:
                    names.append(name)
        cls.record_fields = tuple(names)
        cls.record_defaults = {n: getattr(cls, n) for n in names if hasattr(cls, n)}

    def __init__(self, *args, **kwargs):
        fields = self.record_fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__}() takes {len(fields)} fields, "
                            f"{len(args)} given")
        values = dict(zip(fields, args))
        for name, value in kwargs.items():
            if name not in fields:
                raise TypeError(f"{type(self).__name__}() got an unexpected field {name!r}")
            if name in values:
                raise TypeError(f"{type(self).__name__}() got field {name!r} twice")
            values[name] = value
        for name in fields:
            if name not in values:
                if name not in self.record_defaults:
                    raise TypeError(f"{type(self).__name__}() is missing field {name!r}")
                default = self.record_defaults[name]
                values[name] = default.make() if isinstance(default, Factory) else default
            setattr(self, name, values[name])

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.record_fields
                          if n not in self.record_hidden)
        return f"{type(self).__qualname__}({shown})"

    def __eq__(self, other):
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.record_fields)

    __hash__ = None
