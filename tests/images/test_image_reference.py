import pytest

from vmm.images.errors import BadReference
from vmm.images.reference import parse

D = "sha256:" + "a" * 64


@pytest.mark.parametrize("text,expected", [
    ("node", "docker.io/library/node:latest"),
    ("node:22.22.3-slim", "docker.io/library/node:22.22.3-slim"),
    ("python:3.12", "docker.io/library/python:3.12"),
    ("library/node", "docker.io/library/node:latest"),
    ("user/app:1", "docker.io/user/app:1"),
    ("docker.io/node", "docker.io/library/node:latest"),
    ("index.docker.io/library/node:1", "docker.io/library/node:1"),
    ("localhost:5000/team/tool:1", "localhost:5000/team/tool:1"),
    ("localhost/tool", "localhost/tool:latest"),
    ("127.0.0.1:5000/a/b/c:v1.2", "127.0.0.1:5000/a/b/c:v1.2"),
    (f"ghcr.io/org/app@{D}", f"ghcr.io/org/app@{D}"),
    (f"node:22@{D}", f"docker.io/library/node:22@{D}"),
    ("my-reg.example.com:443/x_y/z__w:tag_1", "my-reg.example.com:443/x_y/z__w:tag_1"),
])
def test_normalisation(text, expected):
    assert str(parse(text)) == expected


def test_parts():
    r = parse(f"localhost:5000/team/tool:1@{D}")
    assert (r.registry, r.repository, r.tag, r.digest) == ("localhost:5000", "team/tool", "1", D)
    assert r.target == D and r.api_host == "localhost:5000"
    assert parse("node").api_host == "registry-1.docker.io"
    assert parse("node").target == "latest"


@pytest.mark.parametrize("text,problem", [
    ("", "empty"),
    ("Node", "bad repository component 'Node'"),
    ("node:", "bad tag"),
    ("node:-x", "bad tag"),
    ("node:" + "a" * 129, "bad tag"),
    ("node@sha256:abc", "bad digest"),
    ("node@md5:" + "a" * 32, "bad digest"),
    ("a b", "whitespace"),
    ("host:99999/x", "bad port"),
    ("-host.com/x", "bad registry"),
    ("localhost:5000/", "missing repository"),
    ("x//y", "bad repository component ''"),
    ("a/" * 130 + "b", "longer than"),
    ("a/../b", "bad repository component '..'"),
])
def test_malformed(text, problem):
    with pytest.raises(BadReference) as e:
        parse(text)
    assert problem in str(e.value)
