"""The Docker runtime: the one module that talks to the Docker Engine API (docker-py).

It builds, saves and loads images for `fieldgate images`, and executes the supervisor's steps
on containers. It decides nothing itself: what to create, start or remove, when to try again
after a failure and what counts as a crash loop comes from the pure planner; this module turns
the rendered compose model into Engine API calls, executes one step at a time and reports its
`Outcome` (an image not on the engine is `image-missing`, checked before anything is touched),
and turns the Engine's containers back into the planner's observed state.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import yaml
from docker.types import LogConfig, Mount

from collectors.core.errors import FieldgateError
from gateway.compose import HASH_LABEL, PROJECT_LABEL, SERVICE_LABEL, Project
from gateway.plan import (
    BackoffState,
    Handover,
    Observed,
    Outcome,
    Recreate,
    Remove,
    Restart,
    Rollback,
    ServiceSpec,
    Start,
    State,
    Step,
    Stop,
    Wait,
    plan,
)
from gateway.runtime.process import (
    BUFFERED_GAUGES,
    READINGS_COUNTERS,
    RunDir,
    _first,
    http_get,
    parse_metrics,
)

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.retention import LocalImage


class EngineError(FieldgateError):
    """The Docker engine is not reachable, or refused what we asked of it."""


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


@dataclass(frozen=True, slots=True)
class ImageInfo:
    name: str
    id: str  # sha256:... of the image config: what `docker images --no-trunc` shows
    size: int  # bytes, uncompressed, shared layers counted in every image
    labels: dict[str, str]


def connect(timeout: float = 60.0) -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (default: the local socket), API version negotiated."""
    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except docker.errors.DockerException as exc:
        raise EngineError(f"no Docker engine answers ({exc}); start dockerd or set DOCKER_HOST") from exc
    return client


class Engine:
    """Image operations on one engine; a context manager so the HTTP connections are closed."""

    def __init__(self, client: docker.DockerClient | None = None) -> None:
        self.client = client or connect()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()

    # ----------------------------------------------------------------------------- images

    def image(self, name: str) -> ImageInfo | None:
        try:
            image = self.client.images.get(name)
        except docker.errors.ImageNotFound:
            return None
        attrs = image.attrs
        return ImageInfo(name, str(image.id), int(attrs.get("Size") or 0), dict(image.labels or {}))

    def build(
        self, context: Path, dockerfile: str, tag: str, buildargs: dict[str, str], log: Path
    ) -> ImageInfo:
        """Build `tag` from `context` without pulling (the base must be local or reachable)."""
        lines: list[str] = []
        try:
            for chunk in self.client.api.build(
                path=str(context), dockerfile=dockerfile, tag=tag, buildargs=buildargs,
                rm=True, forcerm=True, pull=False, decode=True,
            ):
                if "stream" in chunk:
                    lines.append(str(chunk["stream"]))
                if "error" in chunk:
                    lines.append(str(chunk["error"]))
                    log.write_text("".join(lines))
                    raise EngineError(f"building {tag} failed: {str(chunk['error']).strip()} (log: {log})")
        except docker.errors.APIError as exc:
            log.write_text("".join(lines))
            raise EngineError(f"building {tag} failed: {exc.explanation or exc} (log: {log})") from exc
        log.write_text("".join(lines))
        info = self.image(tag)
        if info is None:
            raise EngineError(f"building {tag} ended without an image (log: {log})")
        return info

    def prune_leftovers(self) -> int:
        """Remove untagged images earlier builds of ours left (old images, build stages); bytes freed."""
        freed = 0
        for label in ("io.fieldgate.stage=build", "io.fieldgate.component"):
            result = self.client.images.prune(filters={"dangling": True, "label": label})
            freed += int(result.get("SpaceReclaimed") or 0)
        return freed

    def save(self, names: list[str], out: Path) -> str:
        """`docker save` of several images into one tar (shared layers stored once); returns its sha256."""
        api = self.client.api
        # docker-py's get_image takes one name; the endpoint takes several (POST-free, GET ?names=).
        response = api._get(api._url("/images/get"), params={"names": names}, stream=True)
        digest = hashlib.sha256()
        with out.open("wb") as file:
            for chunk in api._stream_raw_result(response, 2 * 1024 * 1024, False):
                digest.update(chunk)
                file.write(chunk)
        return digest.hexdigest()

    def load(self, tar: Path) -> list[str]:
        """`docker load`; returns what the engine reports it loaded."""
        loaded: list[str] = []
        with tar.open("rb") as file:
            for message in self.client.api.load_image(file, quiet=True):
                if "error" in message:
                    raise EngineError(f"loading {tar} failed: {message['error']}")
                stream = str(message.get("stream", "")).strip()
                if stream:
                    loaded.append(stream)
        return loaded

    def fieldgate_images(self) -> list[LocalImage]:
        """Every image carrying the fieldgate component label (what retention may consider)."""
        from gateway.retention import COMPONENT_LABEL, LocalImage

        try:
            found = self.client.images.list(filters={"label": COMPONENT_LABEL})
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot list images: {exc}") from exc
        return [LocalImage(str(i.id), tuple(i.tags), (i.labels or {}).get(COMPONENT_LABEL),
                           str(i.attrs.get("Created", "")), int(i.attrs.get("Size") or 0)) for i in found]

    def image_ids_in_use(self) -> set[str]:
        """The image id of every container on the engine, running or not."""
        try:
            return {str(c.attrs["Image"]) for c in self.client.containers.list(all=True)}
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot list containers: {exc}") from exc

    def remove_image(self, reference: str) -> None:
        """Untag (and remove, with the last tag) without force: the Engine refuses an image in use."""
        try:
            self.client.images.remove(reference)
        except docker.errors.DockerException as exc:
            raise EngineError(f"cannot remove {reference}: {getattr(exc, 'explanation', None) or exc}") from exc


# ================================================================================ the runtime
#
# Containers carry the compose labels (project, service, container-number, oneoff) and the
# rendered config hash, and are named `<project>-<service>-1` as `docker compose` names them,
# so `docker compose ps` on the rendered file and `fieldgate status` see the same containers.
#
# Who restarts what: containers keep `restart: unless-stopped`, as the compose file says, so
# the Engine restarts a crashed container at once (with its own capped backoff), also while
# no supervisor runs and after a reboot. The supervisor restarts what the Engine does not: a
# container stopped behind its back (`docker kill` counts as a manual stop, so the Engine
# leaves it down) and one that stays unhealthy, which the Engine only reports. A container
# the Engine is restarting is observed as `restarting`, with its RestartCount: the planner
# counts those restarts as failures and calls the service crash-looping, as for its own.

CONTAINER_NUMBER = "1"
CANDIDATE_SUFFIX = "-next"  # a start-first replacement, renamed once it is healthy
STATS_INTERVAL = 5.0


def parse_time(text: str | None) -> float | None:
    """Docker's RFC 3339 timestamps (nanoseconds, UTC) -> epoch seconds; None for the zero time."""
    if not text or text.startswith("0001-"):
        return None
    head, _, rest = text.removesuffix("Z").partition(".")
    digits = "".join(c for c in rest if c.isdigit())[:6]
    stamp = datetime.fromisoformat(f"{head}.{digits or '0'}+00:00")
    return stamp.timestamp()


def parse_seconds(text: str) -> float:
    """Compose durations (`10s`, `1m30s`, `500ms`) -> seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text))


def _nanos(text: str) -> int:
    return int(parse_seconds(text) * 1e9)


def container_name(project: str, service: str) -> str:
    return f"{project}-{service}-{CONTAINER_NUMBER}"


class ContainerFactory:
    """Turns one service of the rendered compose model into Engine API create arguments.

    It reads only the keys `gateway.compose` renders; a key it does not know is an error, so
    the compose file and the containers cannot drift apart silently.
    """

    KNOWN = frozenset({
        "image", "command", "restart", "init", "user", "group_add", "network_mode", "extra_hosts",
        "volumes", "tmpfs", "read_only", "cap_drop", "security_opt", "devices", "device_cgroup_rules",
        "cpus", "mem_limit", "memswap_limit", "pids_limit", "environment", "healthcheck",
        "stop_grace_period", "logging", "depends_on", "labels", "ports",
    })

    def __init__(self, api: Any, project: Project, base_dir: Path) -> None:
        self.api = api
        self.project = project
        self.base_dir = base_dir  # where ./config/... bind sources are relative to

    def network_name(self) -> str:
        return f"{self.project.name}_default"

    def volume_name(self, volume: str) -> str:
        return f"{self.project.name}_{volume}"

    def _value(self, value: str) -> str:
        """`${NAME}` (a secret the compose file only names) -> its value from the config or environment."""
        match = re.fullmatch(r"\$\{(\w+)\}", value)
        if match is None:
            return value
        name = match.group(1)
        return self.project.secrets.get(name) or os.environ.get(name, "")

    def create_args(self, service: str, name: str, *, image: str | None = None) -> dict[str, Any]:
        svc = self.project.services[service].compose
        unknown = set(svc) - self.KNOWN
        if unknown:
            raise EngineError(f"service {service}: the docker runtime does not know {sorted(unknown)}")
        mounts = []
        for vol in svc.get("volumes", []):
            if vol["type"] == "bind":
                source = Path(vol["source"])
                if not source.is_absolute():
                    source = (self.base_dir / source).resolve()
                mounts.append(Mount(vol["target"], str(source), type="bind",
                                    read_only=bool(vol.get("read_only"))))
            else:
                mounts.append(Mount(vol["target"], self.volume_name(vol["source"]), type="volume",
                                    read_only=bool(vol.get("read_only"))))
        tmpfs = dict(item.split(":", 1) if ":" in item else (item, "") for item in svc.get("tmpfs", []))
        extra_hosts = dict(item.split(":", 1) for item in svc.get("extra_hosts", []))
        logging = svc.get("logging") or {}
        host_config = self.api.create_host_config(
            restart_policy={"Name": svc.get("restart", "no")},
            init=svc.get("init"),
            group_add=svc.get("group_add"),
            network_mode=svc.get("network_mode") or self.network_name(),
            extra_hosts=extra_hosts or None,
            mounts=mounts,
            tmpfs=tmpfs or None,
            read_only=svc.get("read_only"),
            cap_drop=svc.get("cap_drop"),
            security_opt=svc.get("security_opt"),
            devices=svc.get("devices"),
            device_cgroup_rules=svc.get("device_cgroup_rules"),
            nano_cpus=int(float(svc["cpus"]) * 1e9) if "cpus" in svc else None,
            mem_limit=svc.get("mem_limit"),
            memswap_limit=svc.get("memswap_limit"),
            pids_limit=svc.get("pids_limit"),
            log_config=LogConfig(type=logging.get("driver", "json-file"),
                                 config=logging.get("options") or {}),
        )
        health = svc.get("healthcheck") or {}
        if health.get("disable"):
            healthcheck: dict[str, Any] | None = {"test": ["NONE"]}
        elif health:
            healthcheck = {
                "test": health["test"], "interval": _nanos(health.get("interval", "30s")),
                "timeout": _nanos(health.get("timeout", "30s")), "retries": int(health.get("retries", 3)),
                "start_period": _nanos(health.get("start_period", "0s")),
            }
        else:
            healthcheck = None
        labels = dict(svc.get("labels") or {})
        labels.update({
            "com.docker.compose.container-number": CONTAINER_NUMBER,
            "com.docker.compose.oneoff": "False",
            "com.docker.compose.project.working_dir": str(self.base_dir),
            "com.docker.compose.project.config_files": str(self.base_dir / "docker-compose.yml"),
        })
        return {
            "image": image or svc["image"],
            "command": svc.get("command"),
            "name": name,
            "user": svc.get("user"),
            "environment": {key: self._value(value) for key, value in (svc.get("environment") or {}).items()},
            "labels": labels,
            "healthcheck": healthcheck,
            "stop_timeout": int(parse_seconds(svc.get("stop_grace_period", "10s"))),
            "host_config": host_config,
        }


@dataclass
class Track:
    """What the runtime remembers of one service between observations."""

    container: str | None = None  # id
    health: str | None = None
    health_since: float | None = None
    restarts: int = 0  # by the supervisor
    readings: tuple[float, float] | None = None  # (monotonic, counter) of the last scrape
    details: dict[str, Any] = field(default_factory=dict)
    cpu: tuple[float, float] | None = None  # (container total, system total) of the last sample


def _mono(epoch: float) -> float:
    """Epoch seconds -> the monotonic clock the planner uses."""
    return time.monotonic() - (time.time() - epoch)


def _state(attrs: dict[str, Any]) -> State:
    status = attrs["State"].get("Status", "exited")
    if status in ("running", "paused"):
        return "running"
    if status == "created":
        return "created"
    if status == "restarting":
        return "restarting"  # by its restart policy: counted by the planner, left to the Engine
    if status == "removing":
        return "stopping"  # the Engine is already on it: the planner looks again next round
    return "exited"


class DockerRuntime:
    """Executes the planner's steps on the Engine; the Runtime of `fieldgate up --runtime docker`."""

    kind = "docker"

    def __init__(
        self,
        config_dir: Path,
        run_dir: RunDir,
        *,
        client: docker.DockerClient | None = None,
        printer: Callable[[str], None] | None = None,
        stats_interval: float = STATS_INTERVAL,
        trusted_only: bool = False,
    ) -> None:
        self.config_dir = config_dir
        self.trusted_only = trusted_only  # containers only from ids a signed bundle loaded
        self.run_dir = run_dir
        self.out_dir = run_dir.root / "compose"
        self.changed = asyncio.Event()
        self.project: Project | None = None
        self._client = client
        self._print = printer or (lambda line: print(line, file=sys.stderr, flush=True))
        self._tracks: dict[str, Track] = {}
        self._stats_interval = stats_interval
        self._stats_task: asyncio.Task[None] | None = None
        self._image_ids: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()  # docker-py calls from worker threads, one at a time

    # -------------------------------------------------------------- lifecycle

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = connect()
        return self._client

    async def __aenter__(self) -> DockerRuntime:
        try:
            await asyncio.to_thread(lambda: self.client)
        except EngineError as exc:
            raise SystemExit(f"fieldgate: {exc}") from exc
        self._stats_task = asyncio.create_task(self._stats_loop(), name="docker-stats")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stats_task is not None:
            self._stats_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stats_task
        if self._client is not None:
            self._client.close()

    # -------------------------------------------------------------- the Runtime seam

    def desired(self, config: GatewayConfig, config_dir: Path) -> dict[str, ServiceSpec]:
        """Render the project into the run directory and describe its services for the planner."""
        self.project = render_config(config, config_dir)
        for warning in self.project.warnings:
            self._print(f"warning: {warning}")
        write_project(self.project, self.out_dir)
        return specs_of(self.project, self.out_dir)

    async def observe(self) -> dict[str, Observed]:
        return await asyncio.to_thread(self._observe)

    async def execute(self, step: Step) -> Outcome:
        """One step, one outcome; when to try a failed one again is the planner's decision."""
        try:
            await asyncio.to_thread(self._execute, step)
        except ImageMissing as exc:
            return Outcome.failed(step, "image-missing", str(exc))
        except ImageUntrusted as exc:
            return Outcome.failed(step, "image-untrusted", str(exc))
        except docker.errors.ImageNotFound as exc:  # removed between our check and the create
            return Outcome.failed(step, "image-missing", str(exc.explanation or exc))
        except (docker.errors.DockerException, EngineError, OSError) as exc:  # OSError: the socket
            return Outcome.failed(step, "engine", str(getattr(exc, "explanation", None) or exc))
        return Outcome.done(step)

    def details(self) -> dict[str, dict[str, Any]]:
        return {name: dict(track.details) for name, track in self._tracks.items()}

    # -------------------------------------------------------------- observe

    def _track(self, name: str) -> Track:
        return self._tracks.setdefault(name, Track())

    def containers(self) -> dict[str, Any]:
        """The project's containers by service (start-first candidates left out)."""
        return self._listing()[0]

    def _listing(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The project's containers by service, and the start-first candidates beside them."""
        if self.project is None:
            return {}, {}
        with self._lock:
            found = self.client.containers.list(
                all=True, filters={"label": f"{PROJECT_LABEL}={self.project.name}"}
            )
        mains: dict[str, Any] = {}
        candidates: dict[str, Any] = {}
        for container in found:
            service = container.labels.get(SERVICE_LABEL)
            if not service:
                continue
            name = container_name(self.project.name, service)
            if container.name == name:
                mains[service] = container
            elif container.name == name + CANDIDATE_SUFFIX:
                candidates[service] = container
        return mains, candidates

    def _image_id(self, name: str) -> str | None:
        cached = self._image_ids.get(name)
        if cached is not None and time.monotonic() - cached[0] < 5.0:
            return cached[1]
        try:
            with self._lock:
                image_id: str | None = str(self.client.images.get(name).id)
        except docker.errors.ImageNotFound:
            image_id = None
        self._image_ids[name] = (time.monotonic(), image_id)
        return image_id

    def _observe(self) -> dict[str, Observed]:
        observed: dict[str, Observed] = {}
        mains, candidates = self._listing()
        for service, container in mains.items():
            track = self._track(service)
            obs = self._observed(service, container, track)
            if service in candidates:  # a start-first handover is under way
                obs = replace(obs, candidate=self._observed(service, candidates[service], None))
            observed[service] = obs
            self._note(service, track, obs)
        for name in list(self._tracks):
            if name not in observed:
                self._tracks[name].details = {}
        return observed

    def _observed(self, service: str, container: Any, track: Track | None) -> Observed:
        """One container as the planner sees it; `track` keeps health changes of the service's own."""
        attrs = container.attrs
        state = attrs["State"]
        restart_count = int(attrs.get("RestartCount", 0))
        health = (state.get("Health") or {}).get("Status")
        health = health if health in ("starting", "healthy", "unhealthy") else None
        health_since = None
        if track is not None:
            if track.container != container.id:
                track.container, track.health, track.health_since = container.id, None, None
            if health != track.health:
                track.health, track.health_since = health, time.monotonic()
            health_since = track.health_since
        image = attrs["Config"]["Image"]
        current = self._image_id(image)
        if current is not None and current != attrs["Image"]:
            # The tag now names another build: report it so the planner recreates the container.
            image = f"{image}@{attrs['Image'][7:19]}"
        kind = _state(attrs)
        ended = kind in ("exited", "restarting")
        started = parse_time(state.get("StartedAt")) or time.time()
        finished = parse_time(state.get("FinishedAt")) or started
        return Observed(
            name=service,
            state=kind,
            config_hash=container.labels.get(HASH_LABEL),
            since=_mono(finished if ended else started),
            image=image,
            health=health if kind == "running" else None,
            health_since=health_since,
            restarts=(track.restarts if track else 0) + restart_count,
            exit_code=int(state.get("ExitCode", 0)) if ended else None,
            instance=container.short_id,
            restart_count=restart_count,
            oom_killed=bool(state.get("OOMKilled")) and ended,
        )

    def _note(self, service: str, track: Track, obs: Observed) -> None:
        """Status columns only this runtime knows: the container, the limits."""
        details = track.details
        details["container"] = obs.instance
        if self.project is not None and service in self.project.services:
            limits = self.project.services[service].limits
            details["cpu_limit"] = limits.cpus
            details["memory_limit"] = limits.memory

    # -------------------------------------------------------------- execute

    def _require_image(self, spec: ServiceSpec) -> None:
        """Before anything is stopped, removed or created: an old container keeps running."""
        image = spec.image or str(self._project().services[spec.name].compose["image"])
        with self._lock:
            present = self.client.images.list(name=image)
        if not present:
            raise ImageMissing(image)
        if self.trusted_only:
            from gateway.signing import trusted_ids  # lazily: cryptography costs memory

            if str(present[0].id) not in trusted_ids():
                raise ImageUntrusted(image, str(present[0].id))

    def _execute(self, step: Step) -> None:
        if isinstance(step, Wait):
            return
        if isinstance(step, Start | Recreate):
            self._require_image(step.spec)
        mains, candidates = self._listing()
        current, candidate = mains.get(step.name), candidates.get(step.name)
        if isinstance(step, Start):
            if current is not None and current.status == "created":
                self._start(current)
            else:
                self._create_and_start(step.spec)
        elif isinstance(step, Restart):
            self._track(step.name).restarts += 1
            if current is None:
                self._require_image(step.spec)
                self._create_and_start(step.spec)
            else:
                with self._lock:
                    current.restart(timeout=self._stop_timeout(step.name))
        elif isinstance(step, Recreate) and step.order == "start-first":
            self._start_candidate(step.spec, candidate)
        elif isinstance(step, Recreate):
            if current is not None:
                self._remove(current, step.name)
            self._create_and_start(step.spec)
        elif isinstance(step, Handover):
            if candidate is None:
                raise EngineError(f"no new {step.name} container to hand over to")
            if current is not None:
                self._remove(current, step.name)
            with self._lock:
                candidate.rename(container_name(self._project().name, step.name))
        elif isinstance(step, Rollback):
            if candidate is not None:
                with self._lock:
                    candidate.remove(force=True)
        elif isinstance(step, Stop):
            if candidate is not None:  # a handover cut short: the old one was serving
                with self._lock:
                    candidate.remove(force=True)
            if current is not None:
                with self._lock:
                    current.stop(timeout=self._stop_timeout(step.name))
        elif isinstance(step, Remove):
            for container in (candidate, current):
                if container is not None:
                    self._remove(container, step.name)
            self._tracks.pop(step.name, None)

    def _project(self) -> Project:
        assert self.project is not None, "desired() renders the project before anything runs"
        return self.project

    def _stop_timeout(self, service: str) -> int:
        if self.project is None or service not in self.project.services:
            return 10
        return int(parse_seconds(self.project.services[service].compose.get("stop_grace_period", "10s")))

    def _factory(self) -> ContainerFactory:
        assert self.project is not None, "desired() renders the project before anything runs"
        return ContainerFactory(self.client.api, self.project, self.out_dir)

    def _ensure_shared(self, factory: ContainerFactory) -> None:
        """The project's volumes (and its network under bridge), labelled as compose labels them."""
        project = factory.project
        for volume in project.volumes:
            name = factory.volume_name(volume)
            try:
                self.client.volumes.get(name)
            except docker.errors.NotFound:
                self.client.volumes.create(name, labels={
                    PROJECT_LABEL: project.name, "com.docker.compose.volume": volume})
        if project.network == "bridge":
            name = factory.network_name()
            if not self.client.networks.list(names=[name]):
                self.client.networks.create(name, driver="bridge", labels={
                    PROJECT_LABEL: project.name, "com.docker.compose.network": "default"})

    def _create(self, spec: ServiceSpec, name: str) -> Any:
        factory = self._factory()
        with self._lock:
            self._ensure_shared(factory)
            args = factory.create_args(spec.name, name, image=spec.image)
            created = self.client.api.create_container(**args)
            return self.client.containers.get(created["Id"])

    def _start(self, container: Any) -> None:
        with self._lock:
            container.start()

    def _create_and_start(self, spec: ServiceSpec) -> Any:
        assert self.project is not None
        name = container_name(self.project.name, spec.name)
        with self._lock, contextlib.suppress(docker.errors.NotFound):
            # A leftover of that name (crashed start-first, a hand-made one) is in the way.
            self.client.containers.get(name).remove(force=True)
        container = self._create(spec, name)
        try:
            self._start(container)
        except docker.errors.APIError:
            with self._lock, contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)
            raise
        return container

    def _remove(self, container: Any, service: str) -> None:
        with self._lock:
            with contextlib.suppress(docker.errors.APIError):
                container.stop(timeout=self._stop_timeout(service))
            container.remove(force=True)

    def _start_candidate(self, spec: ServiceSpec, stale: Any) -> None:
        """Start-first, first half: the replacement starts beside the old container and returns at
        once; the planner hands over once it is healthy, or rolls back."""
        if stale is not None:  # left by an earlier handover that did not finish
            with self._lock:
                stale.remove(force=True)
        candidate = self._create(spec, container_name(self._project().name, spec.name) + CANDIDATE_SUFFIX)
        try:
            self._start(candidate)
        except docker.errors.APIError:
            with self._lock, contextlib.suppress(docker.errors.APIError):
                candidate.remove(force=True)
            raise

    # -------------------------------------------------------------- stats and metrics

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self._stats_interval)
            try:
                samples = await asyncio.to_thread(self._stats)
            except docker.errors.DockerException:
                continue
            for service, (address, port) in samples.items():
                await self._scrape(service, address, port)

    def _stats(self) -> dict[str, tuple[str, int]]:
        """CPU and memory of every running container; where each one's /metrics answers."""
        targets: dict[str, tuple[str, int]] = {}
        for service, container in self.containers().items():
            track = self._track(service)
            if container.status != "running":
                track.details.pop("cpu_percent", None)
                track.details.pop("memory", None)
                continue
            with self._lock:
                stats = self.client.api.stats(container.id, stream=False, one_shot=True)
            cpu_total = float(stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage", 0))
            system = float(stats.get("cpu_stats", {}).get("system_cpu_usage", 0))
            online = float(stats.get("cpu_stats", {}).get("online_cpus") or 1)
            if track.cpu is not None and system > track.cpu[1]:
                share = (cpu_total - track.cpu[0]) / (system - track.cpu[1]) * online
                track.details["cpu_percent"] = round(max(0.0, share) * 100, 1)  # of one core
            track.cpu = (cpu_total, system)
            memory = stats.get("memory_stats", {})
            usage = memory.get("usage")
            if usage is not None:
                extra = memory.get("stats", {})
                cache = extra.get("total_inactive_file", extra.get("inactive_file", extra.get("cache", 0)))
                track.details["memory"] = int(usage - cache)
            port = self.project.services[service].metrics_port if self.project else None
            if port is not None:
                address = self.project.services[service].metrics_host if self.project else "127.0.0.1"
                if self.project is not None and self.project.network == "bridge":
                    networks = container.attrs.get("NetworkSettings", {}).get("Networks", {})
                    address = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")),
                                   "127.0.0.1")
                targets[service] = (address, port)
        return targets

    async def _scrape(self, service: str, address: str, port: int) -> None:
        track = self._track(service)
        try:
            status, text = await http_get(port, "/metrics", host=address)
        except (OSError, TimeoutError, ConnectionError):
            return
        if status != 200:
            return
        totals = parse_metrics(text)
        buffered = _first(totals, BUFFERED_GAUGES)
        if buffered is not None:
            track.details["buffered"] = buffered
        count = _first(totals, READINGS_COUNTERS)
        now = time.monotonic()
        if count is not None:
            if track.readings is not None and now > track.readings[0] and count >= track.readings[1]:
                rate = (count - track.readings[1]) / (now - track.readings[0])
                track.details["readings_per_s"] = round(rate, 1)
            track.readings = (now, count)


def render_config(config: GatewayConfig, config_dir: Path) -> Project:
    from gateway.compose import render_loaded

    return render_loaded(config, config_dir)


def write_project(project: Project, out: Path) -> None:
    from gateway.compose import write

    write(project, out)


def specs_of(project: Project, out: Path) -> dict[str, ServiceSpec]:
    """The planner's view of each rendered service: the compose hash covers image, limits and slice."""
    specs: dict[str, ServiceSpec] = {}
    for name, svc in project.services.items():
        specs[name] = ServiceSpec(
            name=name,
            command=tuple(svc.compose.get("command") or ()),
            config_hash=svc.config_hash,
            image=svc.limits.image,
            cpus=svc.limits.cpus,
            memory=svc.limits.memory,
            update=svc.limits.update,
            devices=tuple(p.host for p in svc.ports),
            metrics_port=svc.metrics_port,
            config_file=str(out / svc.config_path),
            config_text=svc.config_text,
            host_network=project.network == "host",
        )
    return specs


def make_runtime(config_dir: Path, run_dir: RunDir, trusted_only: bool = False) -> DockerRuntime:
    """What `gateway.supervisor.make_runtime` calls for `--runtime docker`."""
    return DockerRuntime(config_dir, run_dir, trusted_only=trusted_only)


# ================================================================================ fieldgate update

UPDATE_TIMEOUT = 120.0


def set_image(text: str, service: str, image: str) -> str:
    """gateway.yaml with `image:` of one service replaced (or added), everything else byte for byte.

    The config directory stays the one truth: the running supervisor applies the edit like any
    other, and a rollback puts the old text back.
    """
    root = yaml.compose(text)
    if not isinstance(root, yaml.MappingNode):
        raise EngineError("gateway.yaml is not a mapping")
    path = ["forwarder"] if service == "forwarder" else ["collectors", service]
    node: yaml.MappingNode = root
    for key in path:
        found = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == key), None)
        if not isinstance(found, yaml.MappingNode):
            where = ".".join(path)
            raise EngineError(f"gateway.yaml has no `{where}:` mapping; add `{where}: {{image: {image}}}`")
        node = found
    value = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == "image"), None)
    if value is not None:
        return text[: value.start_mark.index] + image + text[value.end_mark.index :]
    if node.flow_style:
        at = node.start_mark.index + 1
        return text[:at] + f"image: {image}, " + text[at:]
    first_key = node.value[0][0]
    line_start = text.rfind("\n", 0, first_key.start_mark.index) + 1
    return text[:line_start] + " " * first_key.start_mark.column + f"image: {image}\n" + text[line_start:]


def _gateway_file(config_dir: Path) -> Path:
    for name in ("gateway.yaml", "gateway.yml"):
        if (config_dir / name).is_file():
            return config_dir / name
    raise EngineError(f"{config_dir} has no gateway.yaml")


def _service_status(run_dir: RunDir, service: str) -> dict[str, Any] | None:
    from gateway.supervisor import read_status

    status = read_status(run_dir) or {}
    return next((s for s in status.get("services", []) if s.get("name") == service), None)


def _healthy_on(entry: dict[str, Any] | None, image: str) -> bool:
    return bool(entry and entry.get("image") == image and entry.get("state") == "running"
                and entry.get("health") in ("healthy", None))


def _wait_status(run_dir: RunDir, service: str, image: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _healthy_on(_service_status(run_dir, service), image):
            return True
        time.sleep(1.0)
    return False


async def _update_directly(config_dir: Path, run_dir: RunDir, service: str, within: float) -> bool:
    """No supervisor runs: recreate the one service here and wait for it to turn healthy."""
    from gateway.supervisor import load

    config, errors = load(config_dir)
    if config is None:
        raise EngineError(errors)
    async with DockerRuntime(config_dir, run_dir) as runtime:
        want = {service: runtime.desired(config, config_dir)[service]}
        spec = want[service]
        backoff = BackoffState()
        deadline = time.monotonic() + within
        # The supervisor's loop for this one service: the planner decides (recreate, hand over,
        # roll back), the runtime executes.
        while time.monotonic() < deadline:
            observed = {name: obs for name, obs in (await runtime.observe()).items() if name == service}
            obs = observed.get(service)
            if (obs is not None and obs.candidate is None and obs.image == spec.image
                    and obs.config_hash == spec.config_hash and obs.state == "running"
                    and obs.health in ("healthy", None)):
                return True
            now = time.monotonic()
            backoff = backoff.settle(observed, now, want)
            outcomes = []
            for step in plan(want, observed, now, backoff):
                if not isinstance(step, Wait):
                    print(f"{service}: {step}")
                    outcomes.append(outcome := await runtime.execute(step))
                    if not outcome.ok:
                        print(f"{service}: {outcome.reason}", file=sys.stderr)
            backoff = backoff.record(outcomes, time.monotonic())
            await asyncio.sleep(1.0)
    return False


def main_update(args: Any) -> int:
    """`fieldgate update DIR SERVICE --image IMAGE`: health-gated, rolled back unless it turns healthy."""
    from gateway.supervisor import load, read_status, supervisor_alive

    config_dir: Path = args.dir
    service: str = args.collector
    image: str = args.image
    timeout = float(getattr(args, "timeout", None) or UPDATE_TIMEOUT)
    run_dir = RunDir.for_config(config_dir, getattr(args, "state", None))
    try:
        config, errors = load(config_dir)
        if config is None:
            raise EngineError(errors)
        project = render_config(config, config_dir)
        if service not in project.services:
            names = ", ".join(project.services)
            raise EngineError(f"no service {service!r} in {config_dir}; there are {names}")
        old_image = project.services[service].limits.image
        with Engine() as engine:
            if engine.image(image) is None:
                raise EngineError(f"image {image} is not on this engine: build it or `fieldgate images load`")
            old_info = engine.image(old_image) if old_image else None  # by id: its tag may move
        gateway_file = _gateway_file(config_dir)
        original = gateway_file.read_text()
        gateway_file.write_text(set_image(original, service, image))
        status = read_status(run_dir)
        supervised = status is not None and supervisor_alive(status)
        how = "via the running supervisor" if supervised else "directly"
        print(f"{service}: {old_image} -> {image} ({how})")
        if supervised:
            ok = _wait_status(run_dir, service, image, timeout)
        else:
            ok = asyncio.run(_update_directly(config_dir, run_dir, service, timeout))
        if ok:
            print(f"{service}: healthy on {image}")
            if not getattr(args, "keep_images", False):
                from gateway.retention import clean_after_update

                clean_after_update(image, old_info.id if old_info else None, lambda line: print(f"{service}: {line}"))
            return 0
        print(f"{service}: not healthy on {image} within {timeout:.0f}s; rolling back to {old_image}",
              file=sys.stderr)
        gateway_file.write_text(original)
        if supervised:
            back = _wait_status(run_dir, service, old_image, timeout)
        else:
            back = asyncio.run(_update_directly(config_dir, run_dir, service, timeout))
        print(f"{service}: {'rolled back to' if back else 'rollback did not turn healthy on'} {old_image}",
              file=sys.stderr)
        return 1
    except (EngineError, docker.errors.DockerException) as exc:
        print(f"fieldgate update: {exc}", file=sys.stderr)
        return 1
