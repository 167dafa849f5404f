"""What both runtimes share: the run directory, atomic writes of what they generate, and the
environment of the Python processes they start (services, the config-checking child).

The desired services (`gateway.runtime.services`) and the scraping of a service's /metrics
(`gateway.runtime.metrics`) are shared too, each in its own module.
"""

from __future__ import annotations

import hmac
import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.plan import config_hash

# Linux limits a Unix socket path to 108 bytes (sun_path), with the terminating NUL.
MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class RunDir:
    """Where a runtime keeps what it generates (default `DIR/.fieldgate`; docker adds `compose/`).

    run/<service>.yaml  config slices (generated, do not edit)
    run/status.json     what `fieldgate status` reads, rewritten atomically by `up`
    run/supervisor.lock held by the running supervisor, so two cannot run on one DIR
    state/              collectors' state that must survive restarts
    buffer/             the forwarder's store-and-forward buffer (unless gateway.yaml sets buffer.dir)
    handoff/handoff.sock the hand-off socket, in a 0700 directory (under /tmp when too long)
    """

    root: Path

    @classmethod
    def for_config(cls, config_dir: Path, state: Path | None = None) -> RunDir:
        return cls((state or config_dir / ".fieldgate").absolute())

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def status_file(self) -> Path:
        return self.run / "status.json"

    @property
    def lock_file(self) -> Path:
        return self.run / "supervisor.lock"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def buffer(self) -> Path:
        return self.root / "buffer"

    @property
    def handoff_socket(self) -> Path:
        path = self.root / "handoff" / "handoff.sock"
        if len(str(path)) <= MAX_SOCKET_PATH:
            return path
        short = Path("/tmp") / f"fieldgate-{config_hash(str(self.root))[:12]}"
        return short / "handoff.sock"

    def slice_file(self, service: str) -> Path:
        return self.run / f"{service}.yaml"

    def create(self) -> None:
        for path in (self.run, self.state):
            path.mkdir(parents=True, exist_ok=True)
        # The hand-off socket's folder is private: only our user may reach the socket. The short
        # folder under /tmp has a predictable name: it must be ours too, or another user could put
        # a socket (or a symlink) where our collectors connect.
        folder = self.handoff_socket.parent
        folder.mkdir(mode=0o700, exist_ok=True)
        if folder.parent == self.root:
            folder.chmod(0o700)  # one an older version made with the umask's mode
        st = folder.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise RuntimeError(f"{folder} is not a private directory of this user: remove it, or use --state")


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The supervisor's environment, with the import root of the running `collectors` first on
    PYTHONPATH: children run the very code the supervisor runs, installed or from a checkout."""
    import collectors

    env = dict(os.environ if base is None else base)
    root = str(Path(collectors.__file__).resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root]
    env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    return env


def secrets_digest(key: bytes, passwords: Mapping[str, str], names: Iterable[str]) -> str:
    """A keyed hash of the passwords named `names`: it goes into a service's config hash, so a
    changed password recreates the service, and says nothing of the passwords themselves."""
    own = {name: passwords.get(name) for name in names}
    return hmac.new(key, json.dumps(own, sort_keys=True).encode(), "sha256").hexdigest()


def secrets_key(directory: Path) -> bytes:
    """The key the hashes of passwords are made with (`directory/.secrets.key`, 0600, made on
    first use). It outlives the supervisor, because the hashes do: a container is labelled with
    the hash it was created with, so the same password must hash the same after a restart."""
    path = directory / ".secrets.key"
    try:
        key = path.read_bytes()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = os.urandom(32)
    tmp = path.with_name(f".secrets.key.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)
    os.replace(tmp, path)
    return key


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Write via a temp file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)
