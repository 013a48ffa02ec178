"""Fixtures for the image tests: registries (plain, htpasswd), a misbehaving proxy, and a
private MSB_HOME per test. The servers themselves are in regserver.py."""
import pytest

from support.regserver import REGISTRY_BIN, SKOPEO, Proxy, Registry


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """A plain-HTTP registry shared by the tests that do not break it."""
    if not (REGISTRY_BIN and SKOPEO):
        pytest.skip("needs docker-registry and skopeo")
    reg = Registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture
def own_registry(tmp_path):
    """A registry of this test alone (for tests that corrupt its storage)."""
    if not (REGISTRY_BIN and SKOPEO):
        pytest.skip("needs docker-registry and skopeo")
    reg = Registry(tmp_path / "registry")
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory):
    """A registry behind htpasswd basic auth (user 'alice', password 's3cret')."""
    if not (REGISTRY_BIN and SKOPEO):
        pytest.skip("needs docker-registry and skopeo")
    reg = Registry(tmp_path_factory.mktemp("authregistry"), htpasswd=("alice", "s3cret"))
    yield reg
    reg.stop()


@pytest.fixture
def msb_home(tmp_path, monkeypatch):
    """A private MSB_HOME and an empty Docker config for each test."""
    home = tmp_path / "msb-home"
    monkeypatch.setenv("MSB_HOME", str(home))
    docker = tmp_path / "docker-config"
    docker.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(docker))
    monkeypatch.setenv("MSB_REGISTRY_RETRIES", "2")
    return home


@pytest.fixture
def proxy(registry):
    p = Proxy(registry.host)
    yield p
    p.shutdown()
    p.server_close()
