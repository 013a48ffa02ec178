"""The real-guest tests' kernel lookup (support/guest_kernel.py): only "never built here"
is a skip; a broken lookup fails the tests instead of skipping them all."""
import pytest

from support.guest_kernel import built_guest_kernel
from vmm.guest import kernel


def raising(exc):
    def lookup(build=True):
        assert build is False, "the tests must not build the kernel behind the user's back"
        raise exc
    return lookup


def outcome(lookup=built_guest_kernel):
    """What the lookup did, as a value: a skip or failure raised straight out of a test
    would end that test as skipped instead of letting it fail."""
    try:
        return "returned", lookup()
    except BaseException as e:  # pytest's Skipped/Failed are BaseExceptions
        return type(e), str(e)


NOT_BUILT = kernel.KernelError("the guest kernel is not built yet (/c/kernel/k/vmlinux); ...")


def test_a_kernel_never_built_here_is_a_skip(monkeypatch, tmp_path):
    monkeypatch.setenv("VMM_CACHE", str(tmp_path))
    monkeypatch.setattr(kernel, "guest_kernel", raising(NOT_BUILT))
    kind, what = outcome()
    assert kind is pytest.skip.Exception and "not built" in what, (kind, what)


def test_not_built_while_the_cache_holds_a_kernel_fails(monkeypatch, tmp_path):
    built = tmp_path / "kernel" / "0123abcd" / "vmlinux"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"\x7fELF")
    monkeypatch.setenv("VMM_CACHE", str(tmp_path))
    monkeypatch.setattr(kernel, "guest_kernel", raising(NOT_BUILT))
    kind, what = outcome()
    assert kind is pytest.fail.Exception and "0123abcd" in what and "lookup missed" in what, \
        (kind, what)


@pytest.mark.parametrize("exc", [kernel.KernelError("VMM_KERNEL=/nope is not a file"),
                                 OSError("permission denied"), KeyError("config"),
                                 ImportError("no module named vmm.guest.cache")])
def test_any_other_lookup_failure_is_a_failure(monkeypatch, tmp_path, exc):
    monkeypatch.setenv("VMM_CACHE", str(tmp_path))
    monkeypatch.setattr(kernel, "guest_kernel", raising(exc))
    kind, what = outcome()
    assert kind is type(exc), (kind, what)


def test_a_found_kernel_is_returned(monkeypatch, tmp_path):
    path = tmp_path / "vmlinux"
    monkeypatch.setattr(kernel, "guest_kernel", lambda build=True: path)
    assert outcome() == ("returned", path)


def test_the_e2e_helper_uses_the_same_lookup(monkeypatch, tmp_path):
    from support.virtio_e2e import find_kernel
    monkeypatch.setenv("VMM_CACHE", str(tmp_path))
    monkeypatch.setattr(kernel, "guest_kernel", raising(RuntimeError("lookup broke")))
    kind, what = outcome(find_kernel)
    assert kind is RuntimeError and "lookup broke" in what, (kind, what)
