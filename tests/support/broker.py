"""A real Mosquitto broker on a free loopback port, which a test can stop and start."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


class Mosquitto:
    """`start()`/`stop()` keep the same port, so clients can reconnect to it."""

    def __init__(
        self, workdir: Path, port: int | None = None, extra_conf: str = "", anonymous: bool = True
    ) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise RuntimeError("mosquitto is not installed: apt-get install -y mosquitto mosquitto-clients")
        self.binary = binary
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous {str(anonymous).lower()}\npersistence false\n"
            f"max_queued_messages 1000000\nmax_inflight_messages 100\n{extra_conf}"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def durable(cls, workdir: Path) -> Mosquitto:
        """One that keeps subscriber sessions across stop()/start() (persistence), so a test's
        persistent Subscriber misses nothing published while everyone reconnects."""
        store = workdir / "mosquitto-store"
        store.mkdir(exist_ok=True)
        # `user root`: run as root, Mosquitto would switch to its own user, which cannot write in workdir
        return cls(workdir, extra_conf=f"persistence true\npersistence_location {store}/\nuser root\n")

    @classmethod
    def secured(cls, workdir: Path, users: dict[str, str], acl: Path) -> Mosquitto:
        """One that admits only `users` (name -> password) and gives each the topics `acl` grants."""
        passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        passwords = workdir / "mosquitto.passwd"
        passwords.unlink(missing_ok=True)
        for user, password in users.items():
            create = ["-c"] if not passwords.exists() else []
            subprocess.run([passwd, *create, "-b", str(passwords), user, password], check=True,
                           capture_output=True)
        # `user root`: as root Mosquitto would switch to its own user, which cannot read workdir
        return cls(workdir, anonymous=False,
                   extra_conf=f"password_file {passwords}\nacl_file {acl}\nuser root\n")

    def start(self) -> Mosquitto:
        if self.process is None:
            with self.log.open("ab") as log:
                self.process = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=log, stderr=log)
            wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def kill(self) -> None:
        """An ungraceful end (no DISCONNECT to clients)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
