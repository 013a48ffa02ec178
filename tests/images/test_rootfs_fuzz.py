"""Random layer stacks round-trip: a plain model of the layer rules (paths in a dict) must
agree with the image build_root_disk writes, as the reader, fsck.erofs and the kernel see it."""
import os
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from support.erofs_reader import Want, check_image  # noqa: E402
from support.layer_tars import T0, E, write_layer  # noqa: E402

from vmm.images.rootfs import build_root_disk  # noqa: E402

NAMES = ["a", "b", "c", "dd", "e" * 255, "f.g", "-", "\u00e9t\u00e9"]
SIZES = [0, 1, 100, 2047, 2048, 2049, 4095, 4096, 4097, 9000]


class Inode:
    def __init__(self, kind, perm, uid, mtime, data=b"", target=None):
        self.kind, self.perm, self.uid, self.mtime = kind, perm, uid, mtime
        self.data, self.target = data, target


class Model:
    """Paths ("" is the root) -> Inode, with the layer each path was last written in."""

    def __init__(self):
        self.paths = {"": Inode("dir", 0o755, 0, 0)}
        self.born = {"": 0}

    def dirs(self):
        return sorted(p for p, n in self.paths.items() if n.kind == "dir")

    def files(self):
        return sorted(p for p, n in self.paths.items() if n.kind == "file")

    def remove(self, path):
        for other in [p for p in self.paths if p == path or p.startswith(path + "/")]:
            del self.paths[other]
            self.born.pop(other, None)

    def put(self, path, inode, layer):
        existing = self.paths.get(path)
        if existing is not None and not (existing.kind == inode.kind == "dir"):
            self.remove(path)
        if existing is not None and existing.kind == inode.kind == "dir":
            existing.perm, existing.uid, existing.mtime = inode.perm, inode.uid, inode.mtime
        else:
            self.paths[path] = inode
        self.mark(path, layer)

    def mark(self, path, layer):
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            self.born["/".join(parts[:i])] = layer

    def opaque(self, directory, layer):
        self.mark(directory, layer)   # the layer holds the directory it makes opaque
        for path in [p for p in self.paths if p.startswith(directory + "/" if directory else "")]:
            if path and path in self.paths and self.born.get(path) != layer:
                self.remove(path)


@st.composite
def layer_ops(draw, model, layer):
    """Entries of one layer, applied to `model` as they are drawn."""
    entries = []
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["file", "file", "dir", "symlink", "fifo", "hardlink",
                                     "whiteout", "opaque"]))
        parent = draw(st.sampled_from(model.dirs()))
        path = (parent + "/" if parent else "") + draw(st.sampled_from(NAMES))
        perm = draw(st.sampled_from([0o644, 0o755, 0o4755, 0o600, 0o1777]))
        uid = draw(st.sampled_from([0, 1000, 70000]))
        mtime = T0 + draw(st.integers(0, 3))
        if kind == "whiteout":
            victim = draw(st.sampled_from(sorted(model.paths)))
            if not victim:
                continue
            head, _, tail = victim.rpartition("/")
            entries.append(E((head + "/" if head else "") + ".wh." + tail))
            model.remove(victim)
        elif kind == "opaque":
            entries.append(E((parent + "/" if parent else "") + ".wh..wh..opq"))
            model.opaque(parent, layer)
        elif kind == "hardlink":
            if not model.files():
                continue
            target = draw(st.sampled_from(model.files()))
            if target == path:
                continue
            inode = model.paths[target]
            entries.append(E(path, "hardlink", link=target, mode=perm, uid=uid, mtime=mtime))
            inode.perm, inode.uid, inode.mtime = perm, uid, mtime
            model.put(path, inode, layer)
        elif kind == "file":
            size = draw(st.sampled_from(SIZES))
            data = bytes([draw(st.integers(0, 255))]) * (size // 2) + os.urandom(size - size // 2)
            entries.append(E(path, data=data, mode=perm, uid=uid, mtime=mtime))
            model.put(path, Inode("file", perm, uid, mtime, data=data), layer)
        elif kind == "symlink":
            target = draw(st.sampled_from(["/etc/x", "../../up", "a", "é" * 30]))
            entries.append(E(path, "symlink", link=target, uid=uid, mtime=mtime))
            model.put(path, Inode("symlink", 0o777, uid, mtime, target=target), layer)
        else:
            entries.append(E(path, kind, mode=perm & 0o1777 if kind == "dir" else perm,
                             uid=uid, mtime=mtime))
            model.put(path, Inode(kind, perm & 0o1777 if kind == "dir" else perm, uid, mtime),
                      layer)
    return entries


def _want(model):
    want, groups = {}, {}
    for path, inode in model.paths.items():
        names = [p for p, n in model.paths.items() if n is inode]
        group = id(inode) if inode.kind == "file" and len(names) > 1 else None
        want[os.fsencode("/" + path)] = Want(
            inode.kind, inode.perm, uid=inode.uid, mtime=(inode.mtime, 0) if path else None,
            data=inode.data if inode.kind == "file" else None,
            target=os.fsencode(inode.target) if inode.target else None, group=group)
    return want


# MSB_FUZZ_EXAMPLES=500 for a deeper search; no example database in the checkout.
@settings(max_examples=int(os.environ.get("MSB_FUZZ_EXAMPLES", 25)), deadline=None,
          database=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_random_layer_stacks_round_trip(data):
    model = Model()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        layers = []
        for layer in range(1, data.draw(st.integers(1, 3)) + 1):
            entries = data.draw(layer_ops(model, layer))
            compression = data.draw(st.sampled_from(["gzip", "zstd", "none"]))
            layers.append(write_layer(tmp, f"l{layer}", entries, compression))
        out = tmp / "root.erofs"
        build_root_disk(layers, str(out))
        check_image(out, _want(model), tmp)
