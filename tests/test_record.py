"""vmm.record.Record: what the agent's results and the database row rely on, as @dataclass
gave it them (fields in order with defaults, a fresh factory default, repr, equality)."""
import pytest

from vmm.agent import ExecResult, ReadyInfo
from vmm.record import Factory, Record


class Base(Record):
    a: int
    b: str = "x"


class Child(Base):
    c: list = Factory(list)
    record_hidden = ("c",)


def test_fields_defaults_and_factories():
    assert Child.record_fields == ("a", "b", "c")
    one, two = Child(1), Child(a=1)
    assert (one.a, one.b, one.c) == (1, "x", [])
    one.c.append(5)
    assert two.c == []   # not shared between instances
    assert Child(1, "y", [2]).c == [2]


def test_repr_eq_and_hash():
    assert repr(Child(1, "y", [2])) == "Child(a=1, b='y')"
    assert Base(1) == Base(1, "x") and Base(1) != Base(2)
    assert Base(1) != Child(1)   # another class is never equal
    with pytest.raises(TypeError):
        hash(Base(1))


@pytest.mark.parametrize("args,kwargs", [((), {}), ((1, "x", [], 4), {}), ((1,), {"a": 1}),
                                         ((), {"a": 1, "z": 2})])
def test_bad_arguments_are_type_errors(args, kwargs):
    with pytest.raises(TypeError):
        Child(*args, **kwargs)


def test_agent_results_keep_their_shape():
    r = ExecResult(code=None, signal=9)
    assert (r.stdout, r.stderr, r.pid, r.exit_code) == (b"", b"", 0, 137)
    r.stdout = b"out"   # the process fills it in after the fact
    assert r == ExecResult(None, 9, b"out")
    info = ReadyInfo(1, 2, 3, 4, 5, True, "h", 6, 7)
    assert info.raw == {} and "raw" not in repr(info)
