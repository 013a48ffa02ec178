"""The kernel command line builder (vmm.cmdline): Linux's capacity, checked once over every
part, with an error naming the parts and the overflow. (Machine() applying it with the
engines' own parts: test_machine_limits.py.)"""
import pytest

from vmm.cmdline import KernelCmdline, caller_parts, command_line_size
from vmm.errors import ConfigError

LIMIT = command_line_size() - 1  # bytes, the NUL not counted


def test_parts_are_kept_verbatim_in_order():
    line = KernelCmdline().append("a=1 ", "first").append("", "nothing").append("b=2", "second")
    assert line.text() == "a=1 b=2"
    assert [what for what, _ in line.parts] == ["first", "second"]  # empty parts are dropped
    assert len(line) == 7


def test_exactly_full_fits_one_more_byte_does_not():
    full = KernelCmdline().append("p ", "the prefix").append("x" * (LIMIT - 2), "yours")
    assert len(full.text()) == LIMIT
    over = KernelCmdline().append("p ", "the prefix").append("x" * (LIMIT - 1), "yours")
    with pytest.raises(ConfigError, match=r"by 1 byte: at most 2045 bytes are left for yours$"):
        over.text()


def test_the_error_names_the_part_that_crossed_and_what_came_before():
    line = (KernelCmdline().append("p" * 30, "the engine's {n}-byte prefix")
            .append("d" * 70, "{n} bytes of device arguments (vda, vdb)")
            .append("u" * 2000, "your command line"))
    with pytest.raises(ConfigError) as e:
        line.check()
    msg = str(e.value)
    for part in ("your command line is 2000 bytes", "the engine's 30-byte prefix",
                 "70 bytes of device arguments (vda, vdb)", "that is 2100",
                 "over the limit of 2047 (2048 with the terminating NUL) by 53 bytes",
                 "at most 1947 bytes are left for your command line"):
        assert part in msg, (part, msg)


def test_parts_after_the_crossing_one_are_named_and_counted():
    line = (KernelCmdline().append("p" * 2040, "the prefix").append("d" * 10, "the devices")
            .append("u" * 5, "yours"))
    with pytest.raises(ConfigError) as e:
        line.check()
    msg = str(e.value)
    assert "the devices is 10 bytes" in msg and "by 8 bytes" in msg and "(after it: yours)" in msg


def test_capacity_counts_bytes_not_characters():
    with pytest.raises(ConfigError, match="is 2048 bytes"):
        KernelCmdline().append("é" * 1024, "yours").check()


def test_a_caller_builder_keeps_its_part_names():
    sandbox = KernelCmdline().append("vmm.root=/dev/vda ", "the sandbox's options").append("x=1", "your options")
    assert caller_parts(sandbox).parts == sandbox.parts
    assert caller_parts("quiet").parts == (("your command line", "quiet"),)
