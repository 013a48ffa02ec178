import base64
import json

import pytest

from vmm.images import auth
from vmm.images.errors import AuthError


def test_parse_bearer_challenge():
    ch = auth.parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                              'scope="repository:library/node:pull"')
    assert ch.scheme == "bearer"
    assert ch.params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                         "scope": "repository:library/node:pull"}
    url = auth.token_url(ch, "ignored")
    assert url.startswith("https://auth.docker.io/token?service=registry.docker.io&scope=repository")
    assert auth.parse_challenge('Basic realm="x"').scheme == "basic"
    assert auth.parse_challenge("Negotiate abc") is None


def test_bad_realm_refused():
    with pytest.raises(AuthError):
        auth.token_url(auth.Challenge("bearer", {"realm": "file:///etc/passwd"}), "s")
    with pytest.raises(AuthError):
        auth.token_url(auth.Challenge("bearer", {}), "s")


def test_docker_config_credentials(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw1").decode()},
        "localhost:5000": {"username": "u", "password": "p:w"},
        "http://other.example:8080/v2/": {"auth": base64.b64encode(b"o:x:y").decode()},
    }}))
    assert auth.load_credentials("docker.io", cfg) == auth.Credentials("hub", "pw1")
    assert auth.load_credentials("localhost:5000", cfg) == auth.Credentials("u", "p:w")
    assert auth.load_credentials("other.example:8080", cfg) == auth.Credentials("o", "x:y")
    assert auth.load_credentials("ghcr.io", cfg) is None
    assert auth.load_credentials("x", tmp_path / "missing.json") is None
    cfg.write_text(json.dumps({"auths": {"r.io": {"auth": "!!notbase64"}}}))
    with pytest.raises(AuthError, match="malformed"):
        auth.load_credentials("r.io", cfg)


def test_token_reply():
    assert auth.parse_token_reply(b'{"access_token":"t","expires_in":30}', "r") == ("t", 30)
    with pytest.raises(AuthError):
        auth.parse_token_reply(b'{"nothing":1}', "r")
    with pytest.raises(AuthError):
        auth.parse_token_reply(b"<html>", "r")
