"""A small Docker Engine API client: what the docker runtime's supervisor asks of the Engine.

`import docker` costs a process ~13 MiB PSS (requests, urllib3, http.client and email, its API
mixins and models); the supervisor runs for months on a small gateway, so it speaks HTTP/1.1 to
the Engine itself: one request per connection at a time, kept alive, over the Unix socket (DOCKER_HOST
`unix://PATH`, by default /var/run/docker.sock) or plain `tcp://HOST:PORT`. The body is JSON;
Content-Length and chunked transfer coding are read (RFC 9112, 6 and 7.1). The API version is
negotiated once, as docker-py's version="auto" asks it (GET /version), but never above the newest
this client knows: the lower of ours and the Engine's.

Its surface is the part of docker-py's that the runtime calls (`client.containers.list/get`,
`Container.attrs/reload/start/stop/kill/remove/rename`, `client.images.get/list/remove`,
`client.api.create_container/create_host_config/stats`, volumes, networks, info, ping, close),
and its errors take the roles of docker.errors' (`APIError` with `.explanation` and
`.status_code`, `NotFound`, `ImageNotFound`), so `gateway.runtime.docker` reads as it did.
`fieldgate images` (build, save, load: CLI verbs, not the supervisor) keeps docker-py
(`gateway.runtime.engine`).

Engine API reference: https://docs.docker.com/engine/api/v1.41/
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterable
from typing import IO, Any
from urllib.parse import quote, urlencode

from collectors.core.errors import FieldgateError

API_VERSION = "1.44"  # the newest this client knows, as docker-py 7.1
MINIMUM_API_VERSION = "1.30"  # HostConfig.Mounts (Docker 17.06)
DEFAULT_HOST = "unix:///var/run/docker.sock"
DEFAULT_TIMEOUT = 60.0  # seconds, docker-py's default
MAX_LINE = 65536  # a status line, header line or chunk-size line longer than this is refused


# ------------------------------------------------------------------------------------------ errors


class EngineError(FieldgateError):
    """The Docker engine is not reachable, or refused what we asked of it."""


class EngineUnreachable(EngineError):
    """No answer: the socket is missing or refused, the Engine closed it, or it did not answer in time."""


class APIError(EngineError):
    """The Engine answered with an error status; `explanation` is its {"message": ...}."""

    def __init__(self, message: str, status_code: int | None = None, explanation: str | None = None) -> None:
        super().__init__(message if explanation is None else f"{message}: {explanation}")
        self.status_code = status_code
        self.explanation = explanation if explanation is not None else message


class NotFound(APIError):
    """404: no such container, volume, network (or image: `ImageNotFound`)."""


class ImageNotFound(NotFound):
    """404 for an image."""


class ImageMissing(EngineError):
    """A service's image is not on this engine (we never pull: a plant PC is often offline)."""

    def __init__(self, image: str) -> None:
        super().__init__(f"image {image} is not on this engine: `fieldgate images build` "
                         "or `fieldgate images load BUNDLE` first")
        self.image = image


class ImageUntrusted(EngineError):
    """`fieldgate up --trusted-images`: no bundle signed by a trusted key loaded this image id."""

    def __init__(self, image: str, image_id: str) -> None:
        super().__init__(f"image {image} ({image_id[:19]}) came from no trusted bundle: "
                         "`fieldgate images load BUNDLE --trust KEY.pub` first")


class RuntimeMissing(EngineError):
    """A `sandbox: gvisor` service names an Engine runtime that dockerd does not declare."""

    def __init__(self, runtime: str, known: list[str]) -> None:
        super().__init__(
            f"the Docker engine has no runtime {runtime!r} (it has: {', '.join(sorted(known)) or 'none'}); "
            f"install gVisor (runsc) and declare it under \"runtimes\" in /etc/docker/daemon.json "
            f"with \"runtimeArgs\": [\"--network=host\", \"--host-uds=all\"], then `kill -HUP $(pidof dockerd)` "
            "(docs/docker.md, \"Sandbox\"), or set sandbox: none")
        self.runtime = runtime


def _api_error(status: int, reason: str, body: bytes, what: str) -> APIError:
    """The Engine's error answer -> our error, classified as docker-py classifies it."""
    try:
        explanation = str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        explanation = body.decode("utf-8", "replace").strip() or reason
    message = f"{status} {reason} for {what}"
    if status == 404:
        lowered = explanation.lower()
        image = "no such image" in lowered or "not found: does not exist or no pull access" in lowered
        return (ImageNotFound if image else NotFound)(message, status, explanation)
    return APIError(message, status, explanation)


# ---------------------------------------------------------------------------------------- HTTP/1.1


def parse_host(host: str) -> str | tuple[str, int]:
    """DOCKER_HOST -> a Unix socket path or (host, port); what else docker supports is refused by name."""
    if host.startswith("unix://"):
        return host[len("unix://"):] or DEFAULT_HOST[len("unix://"):]
    if host.startswith("tcp://"):
        address = host[len("tcp://"):].rstrip("/")
        name, _, port = address.rpartition(":")
        if not name or not port.isdigit():
            raise EngineError(f"DOCKER_HOST={host}: a tcp:// engine needs HOST:PORT")
        return name.strip("[]"), int(port)
    if host.startswith("/"):
        return host
    raise EngineError(f"DOCKER_HOST={host}: the supervisor's Engine client speaks to unix://PATH and plain "
                      "tcp://HOST:PORT (no TLS, ssh:// nor npipe://); use the local socket or one of those")


class _Connection:
    def __init__(self, address: str | tuple[str, int], timeout: float) -> None:
        if isinstance(address, str):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(address)
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection(address, timeout)
        self.sock = sock
        self.file: IO[bytes] = sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class _Dropped(Exception):
    """The connection ended where the answer was due."""


def _line(file: IO[bytes]) -> bytes:
    line = file.readline(MAX_LINE + 1)
    if not line:
        raise _Dropped
    if len(line) > MAX_LINE:
        raise EngineError(f"the Docker engine sent a line longer than {MAX_LINE} bytes")
    return line


def _exactly(file: IO[bytes], size: int) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise _Dropped
    return data


def read_head(file: IO[bytes]) -> tuple[int, str, dict[str, str], bool]:
    """Status line and header fields (names lower-cased); whether the connection stays open."""
    status_line = _line(file).decode("latin-1").rstrip("\r\n")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise EngineError(f"the Docker engine answered something that is not HTTP/1.x: {status_line[:80]!r}")
    headers: dict[str, str] = {}
    while (line := _line(file)) not in (b"\r\n", b"\n"):
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    keep = parts[0] == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers, keep


def read_body(file: IO[bytes], status: int, headers: dict[str, str], method: str) -> tuple[bytes, bool]:
    """The message body (RFC 9112, 6.3); False when only the end of the connection ends it."""
    if method == "HEAD" or status in (204, 304) or status < 200:
        return b"", True
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts: list[bytes] = []
        while True:
            size_text = _line(file).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise EngineError(f"the Docker engine sent a bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while _line(file) not in (b"\r\n", b"\n"):  # trailer fields, unused
                    pass
                return b"".join(parts), True
            parts.append(_exactly(file, size))
            _line(file)  # the CRLF after the chunk
    if "content-length" in headers:
        length = headers["content-length"]
        if not length.isdigit():
            raise EngineError(f"the Docker engine sent a bad Content-Length {length[:20]!r}")
        return _exactly(file, int(length)), True
    return file.read(), False


class Transport:
    """HTTP/1.1 requests to one Engine; idle connections are kept and reused, one request each at a time."""

    def __init__(self, address: str | tuple[str, int], timeout: float = DEFAULT_TIMEOUT) -> None:
        self.address = address
        self.timeout = timeout
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()

    def where(self) -> str:
        return self.address if isinstance(self.address, str) else f"{self.address[0]}:{self.address[1]}"

    def request(self, method: str, target: str, body: bytes | None = None,
                timeout: float | None = None) -> tuple[int, str, bytes]:
        """(status, reason, body). A reused connection the Engine closed while idle is replaced once."""
        timeout = self.timeout if timeout is None else timeout
        head = [f"{method} {target} HTTP/1.1", "Host: docker", "User-Agent: fieldgate"]
        if body is not None:
            head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
        elif method in ("POST", "PUT"):
            head.append("Content-Length: 0")
        message = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")
        what = f"{method} {target.split('?', 1)[0]}"
        for attempt in (1, 2):
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            reused, answered = connection is not None, False
            try:
                if connection is None:
                    connection = _Connection(self.address, timeout)
                connection.sock.settimeout(timeout)
                connection.sock.sendall(message)
                status, reason, headers, keep = read_head(connection.file)
                answered = True
                data, complete = read_body(connection.file, status, headers, method)
            except (_Dropped, BrokenPipeError, ConnectionResetError) as exc:
                if connection is not None:
                    connection.close()
                if reused and not answered and attempt == 1:  # closed while idle: nothing was done
                    continue
                raise EngineUnreachable(f"the Docker engine at {self.where()} closed the connection before "
                                        f"it answered {what}") from (None if isinstance(exc, _Dropped) else exc)
            except TimeoutError:
                if connection is not None:
                    connection.close()
                raise EngineUnreachable(f"the Docker engine at {self.where()} did not answer {what} "
                                        f"within {timeout:g} s") from None
            except OSError as exc:
                if connection is not None:
                    connection.close()
                raise EngineUnreachable(f"cannot reach the Docker engine at {self.where()}: "
                                        f"{exc.strerror or exc}") from exc
            except BaseException:
                if connection is not None:
                    connection.close()
                raise
            if keep and complete:
                with self._lock:
                    self._idle.append(connection)
            else:
                connection.close()
            return status, reason, data
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


# -------------------------------------------------------------------------------------- the API


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def _filters(filters: dict[str, Any]) -> str:
    """docker-py's convert_filters: every value a list of strings, booleans as true/false."""
    result = {}
    for key, value in filters.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        result[key] = [item if isinstance(item, str) else str(item)
                       for item in (value if isinstance(value, list) else [value])]
    return json.dumps(result)


def _bytes(value: str | int | float) -> int:
    """docker-py's parse_bytes: `128m`, `1g`, `512k`, `100b`, a plain number (bytes)."""
    if isinstance(value, int | float):
        return int(value)
    text = value.strip()
    if not text:
        return 0
    if len(text) > 1 and text[-2:-1].isalpha() and text[-1] in "bB":
        text = text[:-1]
    units = {"b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    suffix = text[-1].lower()
    digits = text if suffix.isdigit() else text[:-1]
    if not suffix.isdigit() and suffix not in units:
        raise EngineError(f"memory {value!r}: a number with b, k, m or g")
    try:
        return int(float(digits) * units.get(suffix, 1))
    except ValueError:
        raise EngineError(f"memory {value!r}: a number with b, k, m or g") from None


def _devices(devices: Iterable[str | dict[str, str]]) -> list[dict[str, str]]:
    """`HOST[:CONTAINER[:PERMISSIONS]]` -> HostConfig.Devices entries (docker-py's parse_devices)."""
    result = []
    for device in devices:
        if isinstance(device, dict):
            result.append(device)
            continue
        parts = device.split(":")
        result.append({"PathOnHost": parts[0], "PathInContainer": parts[1] if len(parts) > 1 else parts[0],
                       "CgroupPermissions": parts[2] if len(parts) > 2 else "rwm"})
    return result


class APIClient:
    """The Engine's endpoints the runtime calls (docker-py APIClient's role)."""

    def __init__(self, transport: Transport, version: str | None = None) -> None:
        self.transport = transport
        self._version = version

    @property
    def timeout(self) -> float:
        return self.transport.timeout

    @property
    def api_version(self) -> str:
        """min(ours, the Engine's); asked once, on first use."""
        if self._version is None:
            server = str(self.call("GET", "/version", versioned=False)["ApiVersion"])
            if _version_tuple(server) < _version_tuple(MINIMUM_API_VERSION):
                raise EngineError(f"the Docker engine speaks API {server}; fieldgate needs {MINIMUM_API_VERSION} "
                                  "or later (Docker 17.06 or later)")
            self._version = min(server, API_VERSION, key=_version_tuple)
        return self._version

    def raw(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None,
            timeout: float | None = None, versioned: bool = True) -> bytes:
        """One request; the answer's body, or our error for an error status."""
        target = f"/v{self.api_version}{path}" if versioned else path
        query = {key: ("1" if value else "0") if isinstance(value, bool) else value
                 for key, value in (params or {}).items() if value is not None}
        if query:
            target += "?" + urlencode(query)
        if isinstance(body, dict):  # docker-py leaves out the top-level nulls (old Go refused them)
            body = {key: value for key, value in body.items() if value is not None}
        data = None if body is None else json.dumps(body).encode()
        status, reason, answer = self.transport.request(method, target, data, timeout)
        if status >= 400:
            raise _api_error(status, reason, answer, f"{method} {path}")
        return answer

    def call(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None,
             timeout: float | None = None, versioned: bool = True) -> Any:
        """One request; its JSON answer (None for an empty one)."""
        answer = self.raw(method, path, params, body, timeout, versioned)
        try:
            return json.loads(answer) if answer.strip() else None
        except ValueError:  # UnicodeDecodeError too
            raise EngineError(f"the Docker engine answered {method} {path} with no JSON: {answer[:80]!r}") from None

    # ---------------------------------------------------------------------------- system

    def ping(self) -> bool:
        return self.raw("GET", "/_ping", versioned=False).strip() == b"OK"

    def version(self) -> dict[str, Any]:
        return dict(self.call("GET", "/version"))

    def info(self) -> dict[str, Any]:
        return dict(self.call("GET", "/info"))

    # ---------------------------------------------------------------------------- containers

    def containers(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        params = {"all": all, "filters": _filters(filters) if filters else None}
        return list(self.call("GET", "/containers/json", params))

    def inspect_container(self, container: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/containers/{_quote(container)}/json"))

    def create_host_config(
        self, *, restart_policy: dict[str, Any] | None = None, init: bool | None = None,
        group_add: list[str | int] | None = None, network_mode: str | None = None,
        extra_hosts: dict[str, str] | list[str] | None = None, mounts: list[dict[str, Any]] | None = None,
        tmpfs: dict[str, str] | None = None, read_only: bool | None = None, cap_drop: list[str] | None = None,
        security_opt: list[str] | None = None, devices: list[str | dict[str, str]] | None = None,
        device_cgroup_rules: list[str] | None = None, nano_cpus: int | None = None,
        mem_limit: str | int | None = None, memswap_limit: str | int | None = None,
        pids_limit: int | None = None, log_config: dict[str, Any] | None = None, runtime: str | None = None,
    ) -> dict[str, Any]:
        """HostConfig of POST /containers/create: the fields `gateway.runtime.containers` passes,
        translated as docker-py's create_host_config translates them (the same keys, set under
        the same conditions)."""
        # docker-py sets these when given (not None)...
        given = {"ReadonlyRootfs": read_only, "SecurityOpt": security_opt, "Init": init, "Mounts": mounts,
                 "DeviceCgroupRules": device_cgroup_rules}
        # ...and these when not empty (nor 0)
        truthy = {"RestartPolicy": restart_policy, "CapDrop": cap_drop, "Tmpfs": tmpfs, "PidsLimit": pids_limit,
                  "NanoCpus": nano_cpus, "Runtime": runtime}
        host: dict[str, Any] = {key: value for key, value in given.items() if value is not None}
        host.update((key, value) for key, value in truthy.items() if value)
        host["NetworkMode"] = network_mode or "default"
        if mem_limit is not None:
            host["Memory"] = _bytes(mem_limit)
        if memswap_limit is not None:
            host["MemorySwap"] = _bytes(memswap_limit)
        if devices:
            host["Devices"] = _devices(devices)
        if group_add:
            host["GroupAdd"] = [str(group) for group in group_add]
        if extra_hosts is not None:
            host["ExtraHosts"] = ([f"{k}:{v}" for k, v in sorted(extra_hosts.items())]
                                  if isinstance(extra_hosts, dict) else extra_hosts)
        if log_config is not None:
            host["LogConfig"] = {"Type": log_config.get("type"), "Config": log_config.get("config") or {}}
        return host

    @staticmethod
    def container_config(
        image: str, command: list[str] | str | None = None, user: str | int | None = None,
        environment: dict[str, str | None] | list[str] | None = None, labels: dict[str, str] | None = None,
        healthcheck: dict[str, Any] | None = None, stop_timeout: int | None = None,
        host_config: dict[str, Any] | None = None, entrypoint: list[str] | str | None = None,
    ) -> dict[str, Any]:
        """The body of POST /containers/create, as docker-py's ContainerConfig writes it (not
        detached: stdout and stderr attached, the Engine's default for `docker create`)."""
        if isinstance(command, str) or isinstance(entrypoint, str):
            import shlex  # lazily: only a command given as one string needs it

            command = shlex.split(command) if isinstance(command, str) else command
            entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else entrypoint
        if isinstance(environment, dict):
            environment = [key if value is None else f"{key}={value}" for key, value in environment.items()]
        if healthcheck is not None:
            test = healthcheck.get("test")
            healthcheck = {"Test": ["CMD-SHELL", test] if isinstance(test, str) else test,
                           "Interval": healthcheck.get("interval"), "Timeout": healthcheck.get("timeout"),
                           "Retries": healthcheck.get("retries"), "StartPeriod": healthcheck.get("start_period")}
        return {
            "Hostname": None, "Domainname": None, "ExposedPorts": None,
            "User": str(user) if user is not None else None,
            "Tty": False, "OpenStdin": False, "StdinOnce": False,
            "AttachStdin": False, "AttachStdout": True, "AttachStderr": True,
            "Env": environment, "Cmd": command, "Image": image, "Volumes": None, "NetworkDisabled": False,
            "Entrypoint": entrypoint, "WorkingDir": None, "HostConfig": host_config, "NetworkingConfig": None,
            "MacAddress": None, "Labels": labels, "StopSignal": None, "Healthcheck": healthcheck,
            "StopTimeout": stop_timeout, "Runtime": None,
        }

    def create_container(self, image: str, name: str | None = None, **args: Any) -> dict[str, Any]:
        """POST /containers/create; {"Id": ..., "Warnings": [...]}. A missing image is ImageNotFound."""
        return dict(self.call("POST", "/containers/create", {"name": name},
                              self.container_config(image, **args)))

    def stats(self, container: str, stream: bool = False, one_shot: bool | None = None) -> dict[str, Any]:
        """One sample (`stream` must be False: the supervisor samples on its own clock)."""
        if stream:
            raise ValueError("this client reads one stats sample at a time (stream=False)")
        params: dict[str, Any] = {"stream": False}
        if one_shot is not None and _version_tuple(self.api_version) >= (1, 41):
            params["one-shot"] = one_shot
        return dict(self.call("GET", f"/containers/{_quote(container)}/stats", params))

    # ---------------------------------------------------------------------------- images

    def images(self, name: str | None = None, filters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        filters = dict(filters or {})
        if name:
            filters["reference"] = name
        return list(self.call("GET", "/images/json", {"filters": _filters(filters) if filters else None}))

    def inspect_image(self, image: str) -> dict[str, Any]:
        try:
            return dict(self.call("GET", f"/images/{_quote(image)}/json"))
        except ImageNotFound:
            raise
        except NotFound as exc:
            raise ImageNotFound(f"no image {image}", exc.status_code, exc.explanation) from None


def _quote(name: str) -> str:
    return quote(name, safe="/:")


# ------------------------------------------------------------------------------------ the models


class Model:
    def __init__(self, api: APIClient, attrs: dict[str, Any]) -> None:
        self.api = api
        self.attrs = attrs

    @property
    def id(self) -> str:
        return str(self.attrs.get("Id") or self.attrs.get("ID") or "")

    @property
    def short_id(self) -> str:
        return self.id[:19] if self.id.startswith("sha256:") else self.id[:12]

    @property
    def name(self) -> str:
        return str(self.attrs.get("Name") or "").lstrip("/")

    @property
    def labels(self) -> dict[str, str]:
        config = self.attrs.get("Config") or {}
        return dict(config.get("Labels") or self.attrs.get("Labels") or {})


class Container(Model):
    @property
    def status(self) -> str:
        return str(self.attrs["State"]["Status"])

    def _path(self, action: str) -> str:
        return f"/containers/{_quote(self.id)}/{action}"

    def reload(self) -> None:
        self.attrs = self.api.inspect_container(self.id)

    def start(self) -> None:
        self.api.call("POST", self._path("start"))

    def stop(self, timeout: int | None = None) -> None:
        self._stopping("stop", timeout)

    def restart(self, timeout: int | None = None) -> None:
        self._stopping("restart", timeout)

    def _stopping(self, action: str, timeout: int | None) -> None:
        """The Engine answers once the container stopped: up to `timeout` s more than any call."""
        self.api.call("POST", self._path(action), {"t": timeout}, timeout=self.api.timeout + (timeout or 0))

    def kill(self, signal: str | int | None = None) -> None:
        self.api.call("POST", self._path("kill"), {"signal": signal})

    def remove(self, force: bool = False, v: bool = False) -> None:
        self.api.call("DELETE", f"/containers/{_quote(self.id)}", {"v": v, "link": False, "force": force})

    def rename(self, name: str) -> None:
        self.api.call("POST", self._path("rename"), {"name": name})

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        total = None if timeout is None else self.api.timeout + timeout
        return dict(self.api.call("POST", self._path("wait"), timeout=total))


class Image(Model):
    @property
    def tags(self) -> list[str]:
        return [tag for tag in self.attrs.get("RepoTags") or [] if tag != "<none>:<none>"]


class Containers:
    def __init__(self, api: APIClient) -> None:
        self.api = api

    def get(self, container: str) -> Container:
        return Container(self.api, self.api.inspect_container(container))

    def list(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[Container]:
        """Each container inspected, as docker-py's list; one removed meanwhile is left out."""
        found = []
        for summary in self.api.containers(all=all, filters=filters):
            try:
                found.append(self.get(summary["Id"]))
            except NotFound:
                continue
        return found


class Images:
    def __init__(self, api: APIClient) -> None:
        self.api = api

    def get(self, name: str) -> Image:
        return Image(self.api, self.api.inspect_image(name))

    def list(self, name: str | None = None, filters: dict[str, Any] | None = None) -> list[Image]:
        found = []
        for summary in self.api.images(name, filters):
            try:
                found.append(self.get(summary["Id"]))
            except NotFound:
                continue
        return found

    def remove(self, image: str, force: bool = False, noprune: bool = False) -> None:
        self.api.call("DELETE", f"/images/{_quote(image)}", {"force": force, "noprune": noprune})


class Volumes:
    def __init__(self, api: APIClient) -> None:
        self.api = api

    def get(self, name: str) -> Model:
        return Model(self.api, dict(self.api.call("GET", f"/volumes/{_quote(name)}")))

    def create(self, name: str, driver: str | None = None, labels: dict[str, str] | None = None) -> Model:
        return Model(self.api, dict(self.api.call("POST", "/volumes/create",
                                                  body={"Name": name, "Driver": driver, "Labels": labels})))


class Networks:
    def __init__(self, api: APIClient) -> None:
        self.api = api

    def list(self, names: list[str] | None = None, filters: dict[str, Any] | None = None) -> list[Model]:
        filters = dict(filters or {})
        if names:
            filters["name"] = names
        answer = self.api.call("GET", "/networks", {"filters": _filters(filters) if filters else None})
        return [Model(self.api, attrs) for attrs in answer or []]

    def create(self, name: str, driver: str | None = None, labels: dict[str, str] | None = None) -> Model:
        answer = self.api.call("POST", "/networks/create", body={"Name": name, "Driver": driver, "Labels": labels})
        return Model(self.api, {"Id": answer.get("Id"), "Name": name})


class EngineClient:
    """One Engine (docker-py DockerClient's role): `containers`, `images`, `volumes`, `networks`, `api`."""

    def __init__(self, base_url: str | None = None, *, version: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        host = base_url or os.environ.get("DOCKER_HOST") or DEFAULT_HOST
        if os.environ.get("DOCKER_TLS_VERIFY") and host.startswith("tcp://"):
            raise EngineError(f"DOCKER_HOST={host} with DOCKER_TLS_VERIFY: the supervisor's Engine client "
                              "speaks no TLS; use the local socket (unix://) or a plain tcp:// engine")
        self.api = APIClient(Transport(parse_host(host), timeout), version)
        self.containers = Containers(self.api)
        self.images = Images(self.api)
        self.volumes = Volumes(self.api)
        self.networks = Networks(self.api)

    def ping(self) -> bool:
        return self.api.ping()

    def info(self) -> dict[str, Any]:
        return self.api.info()

    def version(self) -> dict[str, Any]:
        return self.api.version()

    def close(self) -> None:
        self.api.transport.close()


def connect(timeout: float = DEFAULT_TIMEOUT) -> EngineClient:
    """A client for the engine named by DOCKER_HOST (default: the local socket), API version negotiated."""
    client = EngineClient(timeout=timeout)
    try:
        client.ping()
        client.api.api_version  # noqa: B018 - negotiated now, so a too-old Engine is said at start
    except EngineError as exc:
        client.close()
        raise EngineError(f"no Docker engine answers ({exc}); start dockerd or set DOCKER_HOST") from exc
    return client
