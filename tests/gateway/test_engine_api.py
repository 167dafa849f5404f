"""The supervisor's Engine client (gateway.runtime.engine_api) against a real HTTP/1.1 server on
a Unix socket, started in the test: it answers as dockerd does (Content-Length or chunked
bodies, {"message": ...} errors, kept-alive connections), or misbehaves on purpose (closes the
connection, never answers). What the runtime sees is asserted: the value, the error's class and
message. The real Engine runs the client in the docker tier (tests/docker).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from gateway.runtime.engine_api import (
    APIError,
    EngineClient,
    EngineError,
    EngineUnreachable,
    ImageNotFound,
    NotFound,
)

pytestmark = pytest.mark.sim

CLOSE = b"close"  # the server closes the connection without answering
HANG = b"hang"  # the server reads the request and never answers

Answer = Callable[[str, str, bytes], bytes]


def response(status: int, body: bytes = b"", *, chunks: list[bytes] | None = None, close: bool = False) -> bytes:
    """An HTTP/1.1 answer as dockerd writes it: Content-Length, or the body in `chunks`."""
    reason = {200: "OK", 201: "Created", 204: "No Content", 404: "Not Found", 409: "Conflict",
              500: "Internal Server Error"}[status]
    head = [f"HTTP/1.1 {status} {reason}", "Api-Version: 1.41", "Content-Type: application/json"]
    if close:
        head.append("Connection: close")
    if chunks is not None:
        head.append("Transfer-Encoding: chunked")
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    elif status != 204:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def version(api: str = "1.41") -> bytes:
    return response(200, json.dumps({"ApiVersion": api, "MinAPIVersion": "1.12"}).encode())


class Server:
    """A Unix-socket HTTP server; `answer(method, target, body)` scripts each answer. With
    `close_after`, each connection ends after its first answer (a broken answer ends there)."""

    def __init__(self, path: Path, answer: Answer, close_after: bool = False) -> None:
        self.path = path
        self.answer = answer
        self.close_after = close_after
        self.requests: list[tuple[str, str, bytes]] = []
        self.connections = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.stopped = threading.Event()
        self.open: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, name="engine-api-server")]
        self.threads[0].start()

    def _accept(self) -> None:
        self.listener.settimeout(0.1)  # a closed listener does not wake accept(): poll `stopped`
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self.connections += 1
            self.open.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), name="engine-api-conn")
            self.threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        file = conn.makefile("rb")
        try:
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = file.readline()
                    if not line:
                        return
                    head += line
                lines = head.decode().split("\r\n")
                method, target, _ = lines[0].split(" ")
                length = next((int(line.split(":")[1]) for line in lines
                               if line.lower().startswith("content-length:")), 0)
                body = file.read(length)
                self.requests.append((method, target, body))
                answer = self.answer(method, target, body)
                if answer == CLOSE:
                    return
                if answer == HANG:
                    self.stopped.wait(30)
                    return
                conn.sendall(answer)
                if self.close_after:
                    return
        except OSError:
            return
        finally:
            file.close()
            conn.close()

    def stop(self) -> None:
        self.stopped.set()
        self.threads[0].join(10)
        self.listener.close()
        self.path.unlink()
        for conn in self.open:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self.threads:
            thread.join(10)


@contextmanager
def engine(tmp_path: Path, answer: Answer, timeout: float = 5.0,
           close_after: bool = False) -> Iterator[tuple[Server, EngineClient]]:
    server = Server(tmp_path / "docker.sock", answer, close_after)
    client = EngineClient(f"unix://{tmp_path / 'docker.sock'}", timeout=timeout)
    try:
        yield server, client
    finally:
        client.close()
        server.stop()


CONTAINER = {"Id": "c" * 64, "Name": "/fieldgate-line3-modbus-1", "State": {"Status": "running"},
             "Config": {"Labels": {"com.docker.compose.service": "modbus"},
                        "Image": "fieldgate/collector-modbus:0.1.0"}}


def test_a_chunked_listing_and_content_length_inspections_on_one_kept_alive_connection(tmp_path: Path) -> None:
    def answer(method: str, target: str, body: bytes) -> bytes:
        if target == "/version":
            return version()
        if target.startswith("/v1.41/containers/json"):
            listing = json.dumps([{"Id": CONTAINER["Id"]}]).encode()
            return response(200, chunks=[listing[:7], listing[7:]])  # split inside the JSON
        if target == f"/v1.41/containers/{CONTAINER['Id']}/json":
            return response(200, json.dumps(CONTAINER).encode())
        return response(404, b'{"message": "page not found"}')

    with engine(tmp_path, answer) as (server, client):
        found = client.containers.list(all=True, filters={"label": "com.docker.compose.project=fieldgate-line3"})
        assert [(c.name, c.status, c.labels) for c in found] == [
            ("fieldgate-line3-modbus-1", "running", {"com.docker.compose.service": "modbus"})]
        found[0].reload()
        assert server.connections == 1  # /version, the listing and two inspections on one connection
    method, target, _ = server.requests[1]
    assert method == "GET" and target.startswith("/v1.41/containers/json?all=1&filters=")
    assert "com.docker.compose.project%3Dfieldgate-line3" in target


def test_the_api_version_is_the_lower_of_ours_and_the_engines(tmp_path: Path) -> None:
    with engine(tmp_path, lambda m, t, b: version("1.47") if t == "/version" else response(200, b"{}")) as (
            server, client):
        client.info()
    assert server.requests[-1][1] == "/v1.44/info"
    with engine(tmp_path, lambda m, t, b: version("1.25")) as (server, client), \
            pytest.raises(EngineError) as refused:
        client.info()
    assert str(refused.value) == ("the Docker engine speaks API 1.25; fieldgate needs 1.30 or later "
                                  "(Docker 17.06 or later)")


def test_error_answers_become_our_errors_with_the_engines_message(tmp_path: Path) -> None:
    def answer(method: str, target: str, body: bytes) -> bytes:
        if target == "/version":
            return version()
        if "/containers/create" in target:
            return response(409, b'{"message":"Conflict. The container name \\"/x\\" is already in use"}')
        if "/images/" in target:
            return response(404, b'{"message":"No such image: fieldgate/nope:1"}')
        if "/containers/gone/json" in target:
            return response(404, b'{"message":"No such container: gone"}')
        return response(500, b"not json at all")

    with engine(tmp_path, answer) as (_, client):
        with pytest.raises(APIError) as conflict:
            client.api.create_container(image="fieldgate/forwarder:0.1.0", name="x")
        assert conflict.value.status_code == 409
        assert conflict.value.explanation == 'Conflict. The container name "/x" is already in use'
        assert str(conflict.value) == ('409 Conflict for POST /containers/create: Conflict. The container '
                                       'name "/x" is already in use')
        with pytest.raises(ImageNotFound) as image:
            client.images.get("fieldgate/nope:1")
        assert image.value.explanation == "No such image: fieldgate/nope:1"
        with pytest.raises(NotFound) as container:
            client.containers.get("gone")
        assert not isinstance(container.value, ImageNotFound)
        with pytest.raises(APIError) as broken:
            client.info()
        assert broken.value.status_code == 500 and broken.value.explanation == "not json at all"


def test_an_idle_connection_the_engine_closed_is_replaced_and_a_dropped_answer_is_said(tmp_path: Path) -> None:
    answers = iter([version(), response(200, b'{"ID": "one"}'), CLOSE, response(200, b'{"ID": "two"}'), CLOSE])

    with engine(tmp_path, lambda m, t, b: next(answers)) as (server, client):
        assert client.info() == {"ID": "one"}
        # The server dropped the kept-alive connection unanswered: the request goes again on a new one.
        assert client.info() == {"ID": "two"}
        assert server.connections == 2
        # On a new connection, a dropped answer is an error that says so.
        client.close()
        with pytest.raises(EngineUnreachable) as dropped:
            client.info()
    assert str(dropped.value) == (f"the Docker engine at {tmp_path / 'docker.sock'} closed the connection "
                                  "before it answered GET /v1.41/info")


def test_an_engine_that_does_not_answer_times_out(tmp_path: Path) -> None:
    with engine(tmp_path, lambda m, t, b: version() if t == "/version" else HANG, timeout=0.5) as (_, client), \
            pytest.raises(EngineUnreachable) as late:
        client.info()
    assert str(late.value) == (f"the Docker engine at {tmp_path / 'docker.sock'} did not answer GET "
                               "/v1.41/info within 0.5 s")


def test_no_engine_and_an_unsupported_docker_host_are_said(tmp_path: Path) -> None:
    client = EngineClient(f"unix://{tmp_path / 'none.sock'}", version="1.41")
    with pytest.raises(EngineUnreachable) as missing:
        client.ping()
    assert str(missing.value) == (f"cannot reach the Docker engine at {tmp_path / 'none.sock'}: "
                                  "No such file or directory")
    with pytest.raises(EngineError) as ssh:
        EngineClient("ssh://gateway@plc")
    assert "unix://PATH and plain tcp://HOST:PORT" in str(ssh.value)
