"""The test CRI client (tests/support/cri_client.py) against a CRI server of this test's
own, in process: requests carry the CRI v1 field numbers, and answers that break the API
(a wrong id, an unknown state, an answer past the size bound) are errors, not data."""
import pytest

grpc = pytest.importorskip("grpc", reason="no grpcio (pip install -e .[test])")
from support import cri_client  # noqa: E402
from support.cri_client import CRI, CRIError, message  # noqa: E402

ID = "ab" * 32


class FakeRuntime:
    """Answers each call with what the test put in self.answers[name]; records requests."""

    def __init__(self):
        self.answers, self.requests = {}, []

    def handler(self):
        def unary(name):
            def handle(request, context):
                self.requests.append((name, request))
                return self.answers[name]
            return grpc.unary_unary_rpc_method_handler(
                handle, request_deserializer=message(f"{name}Request").FromString,
                response_serializer=lambda m: m.SerializeToString())
        return [grpc.method_handlers_generic_handler(
            f"{cri_client.PACKAGE}.{service}", {name: unary(name) for name in names})
            for service, names in cri_client.SERVICES.items()]


@pytest.fixture
def served(tmp_path):
    from concurrent import futures
    fake = FakeRuntime()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(fake.handler())
    sock = tmp_path / "cri.sock"
    server.add_insecure_port(f"unix://{sock}")
    server.start()
    client = CRI(sock, timeout=10)
    yield fake, client
    client.close()
    server.stop(0)


def test_requests_carry_the_cri_field_numbers(served):
    fake, client = served
    fake.answers["RunPodSandbox"] = message("RunPodSandboxResponse")(pod_sandbox_id=ID)
    ns = message("NamespaceOption")(network=cri_client.NODE)
    config = message("PodSandboxConfig")(
        metadata=message("PodSandboxMetadata")(name="p"),
        linux=message("LinuxPodSandboxConfig")(
            security_context=message("LinuxSandboxSecurityContext")(namespace_options=ns)))
    assert client.run_pod_sandbox(config, "vmm") == ID
    _, request = fake.requests[-1]
    # config = 1 {metadata = 1 {name = 1 "p"}, linux = 8 {security_context = 2
    # {namespace_options = 1 {network = 1: 2}}}}, runtime_handler = 2 "vmm"
    assert request.SerializeToString() == (b"\x0a\x0d" b"\x0a\x03\x0a\x01p"
                                           b"\x42\x06\x12\x04\x0a\x02\x08\x02"
                                           b"\x12\x03vmm")


def test_answers_that_break_the_api_are_errors(served):
    fake, client = served
    fake.answers["RunPodSandbox"] = message("RunPodSandboxResponse")(pod_sandbox_id="../x")
    with pytest.raises(CRIError, match="not 64 hex digits"):
        client.run_pod_sandbox(message("PodSandboxConfig")(), "vmm")
    status = message("ContainerStatus")(id="cd" * 32, state=cri_client.CONTAINER_EXITED)
    fake.answers["ContainerStatus"] = message("ContainerStatusResponse")(status=status)
    with pytest.raises(CRIError, match="status of"):
        client.container_status(ID)
    status = message("ContainerStatus")(id=ID, state=9)
    fake.answers["ContainerStatus"] = message("ContainerStatusResponse")(status=status)
    with pytest.raises(CRIError, match="unknown container state 9"):
        client.container_status(ID)
    fake.answers["PullImage"] = message("PullImageResponse")(image_ref="latest")
    with pytest.raises(CRIError, match="not a sha256 digest"):
        client.pull_image("x")


def test_an_answer_past_the_bound_is_refused(served):
    fake, client = served
    fake.answers["ExecSync"] = message("ExecSyncResponse")(stdout=b"x" * (cri_client.MAX_ANSWER + 1))
    with pytest.raises(CRIError) as e:
        client.exec_sync(ID, ["true"], timeout=5)
    assert e.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
