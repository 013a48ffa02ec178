"""A small CRI v1 client for tests: the calls the kubelet makes to a container runtime
(containerd's CRI plugin here) to run a pod, over gRPC on the runtime's unix socket.

There is no crictl in Debian 12, and the Kubernetes api.proto is not ours to copy, so the
messages are declared below in a compact notation of our own: only the messages and fields
these tests use, with the CRI v1 field numbers (what goes on the wire). A field the server
sends that is not declared here is kept as an unknown field and ignored. The descriptors are
built at import with google.protobuf's descriptor_pb2 (no protoc, no generated code).

Enum fields are declared int32: an enum is a varint on the wire, and plain ints with the
constants below need no enum descriptors.

The server is a peer process, so every call has a deadline, answers are bounded in size
(grpc's receive limit), and the fields the tests rely on are checked (ids, states, exit
codes) before they are returned.

    cri = CRI("/run/containerd/containerd.sock")
    cri.pull_image("127.0.0.1:5000/pause:1")
    pod = cri.run_pod_sandbox(sandbox_config(...), "vmm")
"""
import re

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "runtime.v1"

# NamespaceMode
POD, CONTAINER, NODE, TARGET = 0, 1, 2, 3
# PodSandboxState
SANDBOX_READY, SANDBOX_NOTREADY = 0, 1
# ContainerState
CONTAINER_CREATED, CONTAINER_RUNNING, CONTAINER_EXITED, CONTAINER_UNKNOWN = 0, 1, 2, 3

# message: fields "name type number", ";"-separated; "*type" is repeated, "map" is
# map<string, string>; a capitalised type is one of these messages.
SCHEMA = """
VersionRequest: version string 1
VersionResponse: version string 1; runtime_name string 2; runtime_version string 3;
    runtime_api_version string 4
PodSandboxMetadata: name string 1; uid string 2; namespace string 3; attempt uint32 4
DNSConfig: servers *string 1; searches *string 2; options *string 3
NamespaceOption: network int32 1; pid int32 2; ipc int32 3; target_id string 4
LinuxSandboxSecurityContext: namespace_options NamespaceOption 1; readonly_rootfs bool 4;
    privileged bool 6
LinuxPodSandboxConfig: cgroup_parent string 1; security_context LinuxSandboxSecurityContext 2
PodSandboxConfig: metadata PodSandboxMetadata 1; hostname string 2; log_directory string 3;
    dns_config DNSConfig 4; labels map 6; annotations map 7; linux LinuxPodSandboxConfig 8
RunPodSandboxRequest: config PodSandboxConfig 1; runtime_handler string 2
RunPodSandboxResponse: pod_sandbox_id string 1
StopPodSandboxRequest: pod_sandbox_id string 1
StopPodSandboxResponse:
RemovePodSandboxRequest: pod_sandbox_id string 1
RemovePodSandboxResponse:
PodIP: ip string 1
PodSandboxNetworkStatus: ip string 1; additional_ips *PodIP 2
PodSandboxStatus: id string 1; metadata PodSandboxMetadata 2; state int32 3;
    created_at int64 4; network PodSandboxNetworkStatus 5; labels map 7; annotations map 8;
    runtime_handler string 9
PodSandboxStatusRequest: pod_sandbox_id string 1; verbose bool 2
PodSandboxStatusResponse: status PodSandboxStatus 1; info map 2
PodSandboxFilter: id string 1; label_selector map 3
ListPodSandboxRequest: filter PodSandboxFilter 1
PodSandbox: id string 1; metadata PodSandboxMetadata 2; state int32 3; created_at int64 4;
    labels map 5; annotations map 6; runtime_handler string 7
ListPodSandboxResponse: items *PodSandbox 1
ImageSpec: image string 1; annotations map 2
KeyValue: key string 1; value string 2
Mount: container_path string 1; host_path string 2; readonly bool 3
ContainerMetadata: name string 1; attempt uint32 2
LinuxContainerResources: cpu_period int64 1; cpu_quota int64 2; cpu_shares int64 3;
    memory_limit_in_bytes int64 4
Int64Value: value int64 1
LinuxContainerSecurityContext: privileged bool 2; namespace_options NamespaceOption 3;
    run_as_user Int64Value 5; readonly_rootfs bool 7
LinuxContainerConfig: resources LinuxContainerResources 1;
    security_context LinuxContainerSecurityContext 2
ContainerConfig: metadata ContainerMetadata 1; image ImageSpec 2; command *string 3;
    args *string 4; working_dir string 5; envs *KeyValue 6; mounts *Mount 7; labels map 9;
    annotations map 10; log_path string 11; stdin bool 12; stdin_once bool 13; tty bool 14;
    linux LinuxContainerConfig 15
CreateContainerRequest: pod_sandbox_id string 1; config ContainerConfig 2;
    sandbox_config PodSandboxConfig 3
CreateContainerResponse: container_id string 1
StartContainerRequest: container_id string 1
StartContainerResponse:
StopContainerRequest: container_id string 1; timeout int64 2
StopContainerResponse:
RemoveContainerRequest: container_id string 1
RemoveContainerResponse:
ContainerStatusRequest: container_id string 1; verbose bool 2
ContainerStatus: id string 1; metadata ContainerMetadata 2; state int32 3; created_at int64 4;
    started_at int64 5; finished_at int64 6; exit_code int32 7; image ImageSpec 8;
    image_ref string 9; reason string 10; message string 11; log_path string 15
ContainerStatusResponse: status ContainerStatus 1; info map 2
ExecSyncRequest: container_id string 1; cmd *string 2; timeout int64 3
ExecSyncResponse: stdout bytes 1; stderr bytes 2; exit_code int32 3
PullImageRequest: image ImageSpec 1; sandbox_config PodSandboxConfig 3
PullImageResponse: image_ref string 1
"""

# service: rpc names; each takes <Name>Request and returns <Name>Response.
SERVICES = {
    "RuntimeService": ["Version", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox",
                       "PodSandboxStatus", "ListPodSandbox", "CreateContainer",
                       "StartContainer", "StopContainer", "RemoveContainer",
                       "ContainerStatus", "ExecSync"],
    "ImageService": ["PullImage"],
}

_SCALARS = {
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "bytes": descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
}
_FD = descriptor_pb2.FieldDescriptorProto


def _parse_schema(text):
    """[(message name, [(field, type, number, repeated)])] from SCHEMA's notation."""
    messages = []
    for m in re.finditer(r"^(\w+):(.*?)(?=^\w+:|\Z)", text, re.S | re.M):
        fields = []
        for part in m.group(2).split(";"):
            words = part.split()
            if not words:
                continue
            name, typ, number = words
            fields.append((name, typ.lstrip("*"), int(number), typ.startswith("*")))
        messages.append((m.group(1), fields))
    return messages


def _file_descriptor():
    f = descriptor_pb2.FileDescriptorProto(name="vmm_tests_cri_v1.proto", package=PACKAGE,
                                           syntax="proto3")
    for name, fields in _parse_schema(SCHEMA):
        msg = f.message_type.add(name=name)
        for field, typ, number, repeated in fields:
            fd = msg.field.add(name=field, number=number,
                               label=_FD.LABEL_REPEATED if repeated else _FD.LABEL_OPTIONAL)
            if typ == "map":
                # A map is a repeated nested entry message marked map_entry, as protoc makes it.
                entry = msg.nested_type.add(name=field.title().replace("_", "") + "Entry")
                entry.options.map_entry = True
                entry.field.add(name="key", number=1, type=_FD.TYPE_STRING, label=_FD.LABEL_OPTIONAL)
                entry.field.add(name="value", number=2, type=_FD.TYPE_STRING, label=_FD.LABEL_OPTIONAL)
                fd.label = _FD.LABEL_REPEATED
                fd.type = _FD.TYPE_MESSAGE
                fd.type_name = f".{PACKAGE}.{name}.{entry.name}"
            elif typ in _SCALARS:
                fd.type = _SCALARS[typ]
            else:
                fd.type = _FD.TYPE_MESSAGE
                fd.type_name = f".{PACKAGE}.{typ}"
    return f


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())


def message(name):
    """The message class runtime.v1.<name>."""
    desc = _POOL.FindMessageTypeByName(f"{PACKAGE}.{name}")
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(_POOL).GetPrototype(desc)   # protobuf < 4.22


# What the tests accept from the server: ids as containerd makes them (64 hex digits), and
# answers no larger than this (a status or exec output; our commands print little).
MAX_ANSWER = 4 << 20
_ID = re.compile(r"^[0-9a-f]{64}$")
CALL_TIMEOUT = 240.0


class CRIError(Exception):
    """The server answered a call with a gRPC error, or with an answer that breaks the API."""

    def __init__(self, call, message, code=None):
        super().__init__(f"{call}: {message}")
        self.code = code


def _check_id(call, value):
    if not _ID.match(value):
        raise CRIError(call, f"the server's id {value[:80]!r} is not 64 hex digits")
    return value


class CRI:
    """One connection to a CRI server's unix socket; the RuntimeService and ImageService
    calls these tests make, each with a deadline."""

    def __init__(self, socket_path, timeout=CALL_TIMEOUT):
        self.timeout = timeout
        self.channel = grpc.insecure_channel(
            f"unix://{socket_path}",
            options=[("grpc.max_receive_message_length", MAX_ANSWER),
                     ("grpc.max_send_message_length", MAX_ANSWER)])
        self._calls = {}
        for service, names in SERVICES.items():
            for name in names:
                request, response = message(f"{name}Request"), message(f"{name}Response")
                self._calls[name] = self.channel.unary_unary(
                    f"/{PACKAGE}.{service}/{name}",
                    request_serializer=request.SerializeToString,
                    response_deserializer=response.FromString)

    def close(self):
        self.channel.close()

    def call(self, name, deadline=None, **fields):
        """Call rpc name with a request built from fields, waiting up to deadline seconds
        (else the connection's timeout); the response message."""
        request = message(f"{name}Request")(**fields)
        try:
            return self._calls[name](request, timeout=deadline or self.timeout)
        except grpc.RpcError as e:
            raise CRIError(name, e.details() or str(e), e.code()) from None

    # -- RuntimeService ---------------------------------------------------------------------
    def version(self):
        r = self.call("Version", deadline=10, version="v1")
        if r.runtime_api_version != "v1":
            raise CRIError("Version", f"runtime API {r.runtime_api_version!r}, not v1")
        return r

    def run_pod_sandbox(self, config, runtime_handler):
        r = self.call("RunPodSandbox", config=config, runtime_handler=runtime_handler)
        return _check_id("RunPodSandbox", r.pod_sandbox_id)

    def stop_pod_sandbox(self, pod_id):
        self.call("StopPodSandbox", pod_sandbox_id=pod_id)

    def remove_pod_sandbox(self, pod_id):
        self.call("RemovePodSandbox", pod_sandbox_id=pod_id)

    def pod_sandbox_status(self, pod_id):
        status = self.call("PodSandboxStatus", pod_sandbox_id=pod_id).status
        if status.id != pod_id:
            raise CRIError("PodSandboxStatus", f"status of {status.id!r}, asked for {pod_id!r}")
        if status.state not in (SANDBOX_READY, SANDBOX_NOTREADY):
            raise CRIError("PodSandboxStatus", f"unknown sandbox state {status.state}")
        return status

    def list_pod_sandbox(self, pod_id=""):
        items = self.call("ListPodSandbox", filter=message("PodSandboxFilter")(id=pod_id)).items
        for item in items:
            _check_id("ListPodSandbox", item.id)
        return list(items)

    def create_container(self, pod_id, config, sandbox_config):
        r = self.call("CreateContainer", pod_sandbox_id=pod_id, config=config,
                      sandbox_config=sandbox_config)
        return _check_id("CreateContainer", r.container_id)

    def start_container(self, container_id):
        self.call("StartContainer", container_id=container_id)

    def stop_container(self, container_id, timeout=0):
        self.call("StopContainer", container_id=container_id, timeout=timeout)

    def remove_container(self, container_id):
        self.call("RemoveContainer", container_id=container_id)

    def container_status(self, container_id):
        status = self.call("ContainerStatus", container_id=container_id).status
        if status.id != container_id:
            raise CRIError("ContainerStatus", f"status of {status.id!r}, asked for {container_id!r}")
        if status.state not in (CONTAINER_CREATED, CONTAINER_RUNNING, CONTAINER_EXITED,
                                CONTAINER_UNKNOWN):
            raise CRIError("ContainerStatus", f"unknown container state {status.state}")
        return status

    def exec_sync(self, container_id, cmd, timeout=60):
        """(exit code, stdout, stderr) of cmd run in the container, waited for up to timeout
        seconds by the server (and a little longer by us)."""
        r = self.call("ExecSync", deadline=timeout + 30, container_id=container_id, cmd=cmd,
                      timeout=timeout)
        return r.exit_code, bytes(r.stdout), bytes(r.stderr)

    # -- ImageService -----------------------------------------------------------------------
    def pull_image(self, ref):
        r = self.call("PullImage", image=message("ImageSpec")(image=ref))
        if not r.image_ref.startswith("sha256:") or len(r.image_ref) != 71:
            raise CRIError("PullImage", f"image ref {r.image_ref[:80]!r} is not a sha256 digest")
        return r.image_ref
