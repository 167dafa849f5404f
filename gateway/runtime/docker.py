"""The docker runtime: executes the planner's steps on containers (Docker Engine API).

It decides nothing itself: what to create, start or remove, when to try again after a failure
and what counts as a crash loop comes from the pure planner (`gateway.plan`). This module
renders the config into the compose model (`gateway.compose`, into `RUN/compose/`), executes
one step at a time on the Engine (the create arguments come from `gateway.runtime.containers`)
and reports its `Outcome` (an image not on the engine is `image-missing`, a sandbox runtime
it does not declare `runtime-missing`, both checked before anything is touched), and turns
the Engine's containers back into the planner's observed state.
It speaks to the Engine with our own small client (`gateway.runtime.engine_api`), not
docker-py, which cost the long-running supervisor 9.5 MiB PSS (docs/runtime.md, "Memory").

Who restarts what: containers keep `restart: unless-stopped`, as the compose file says, so
the Engine restarts a crashed container at once (with its own capped backoff), also while
no supervisor runs and after a reboot. The supervisor restarts what the Engine does not: a
container stopped behind its back (`docker kill` counts as a manual stop, so the Engine
leaves it down) and one that stays unhealthy, which the Engine only reports. A container
the Engine is restarting is observed as `restarting`, with its RestartCount: the planner
counts those restarts as failures and calls the service crash-looping, as for its own.

The config is rendered in a short-lived child, `python -m gateway.runtime.docker`, which loads
and checks DIR, writes the project into `RUN/compose/` and hands back the rendered `Project`
(without its config models) and the specs: the supervisor imports neither pydantic nor PyYAML
(docs/runtime.md, "Memory").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gateway.compose import HASH_LABEL, PROJECT_LABEL, SERVICE_LABEL, Project
from gateway.plan import (
    Handover,
    Observed,
    Outcome,
    Recreate,
    Reload,
    Remove,
    Restart,
    Rollback,
    ServiceSpec,
    Start,
    State,
    Step,
    Stop,
    Wait,
    config_hash,
)
from gateway.runtime.common import RunDir, child_environment, secrets_digest, secrets_key
from gateway.runtime.containers import (
    CANDIDATE_SUFFIX,
    ContainerFactory,
    container_name,
    parse_seconds,
)
from gateway.runtime.desired import Desired, ask_child, in_process
from gateway.runtime.engine_api import (
    APIError,
    EngineClient,
    EngineError,
    ImageMissing,
    ImageNotFound,
    ImageUntrusted,
    NotFound,
    RuntimeMissing,
    connect,
)
from gateway.runtime.metrics import ReadingsRate, cpu_percent, cpu_sample, memory_used, scrape
from gateway.services import Run, desired_services

# The spec's reload_hash a container was created with (gateway.plan.ServiceSpec.reload_hash).
RELOAD_LABEL = "io.fieldgate.reload-hash"

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

STATS_INTERVAL = 5.0


def parse_time(text: str | None) -> float | None:
    """Docker's RFC 3339 timestamps (nanoseconds, UTC) -> epoch seconds; None for the zero time."""
    if not text or text.startswith("0001-"):
        return None
    head, _, rest = text.removesuffix("Z").partition(".")
    digits = "".join(c for c in rest if c.isdigit())[:6]
    stamp = datetime.fromisoformat(f"{head}.{digits or '0'}+00:00")
    return stamp.timestamp()


@dataclass
class Track:
    """What the runtime remembers of one service between observations."""

    container: str | None = None  # id
    health: str | None = None
    health_since: float | None = None
    restarts: int = 0  # by the supervisor
    readings: ReadingsRate = field(default_factory=ReadingsRate)
    details: dict[str, Any] = field(default_factory=dict)
    cpu: tuple[float, float] | None = None  # (container total, system total) of the last sample
    # (container id, config hash) after a Reload: labels cannot change, so the config it runs
    # since is remembered here (after a supervisor restart the label's older hash leads to one
    # more Reload, which changes nothing)
    reloaded: tuple[str, str] | None = None


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
        client: EngineClient | None = None,
        printer: Callable[[str], None] | None = None,
        stats_interval: float = STATS_INTERVAL,
        trusted_only: bool = False,
    ) -> None:
        self.config_dir = config_dir
        self.trusted_only = trusted_only  # containers only from ids a signed bundle loaded
        # The trust store those ids are read from, fixed at start (status.json names it, so
        # `fieldgate update` checks a new image against the same store).
        self.trust_store: Path | None = None
        if trusted_only:
            from gateway.signing import trust_store  # lazily: cryptography costs memory

            self.trust_store = trust_store()
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
        self._lock = threading.Lock()  # Engine calls from worker threads, one at a time

    # -------------------------------------------------------------- lifecycle

    @property
    def client(self) -> EngineClient:
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

    def load_desired(self, config_dir: Path) -> Desired:
        """Load DIR, render and write its project in a short-lived child (see the module
        docstring) and keep the project it hands back. Blocks: the supervisor calls it in a thread."""
        request = {"config_dir": str(config_dir), "out_dir": str(self.out_dir)}
        answer = ask_child(CHILD, request, config_dir, child_environment())
        if isinstance(answer, Desired):
            return answer
        try:  # our own child's answer, on a pipe only we read
            desired, project = pickle.loads(answer)
        except Exception as exc:  # a child that printed something else: refused, the loop goes on
            return Desired(None, f"{config_dir}: the config could not be checked (`python -m "
                                 f"gateway.runtime.docker` answered no project: {type(exc).__name__}; a "
                                 "fieldgate bug: please report it with the config that caused it)")
        if desired.specs is not None:
            self.project = project
            for warning in project.warnings:
                self._print(f"warning: {warning}")
        return desired

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
        except RuntimeMissing as exc:
            return Outcome.failed(step, "runtime-missing", str(exc))
        except ImageNotFound as exc:  # removed between our check and the create
            return Outcome.failed(step, "image-missing", str(exc.explanation or exc))
        except (EngineError, OSError) as exc:
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
        except ImageNotFound:
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
        config = container.labels.get(HASH_LABEL)
        if track is not None and track.reloaded is not None and track.reloaded[0] == container.id:
            config = track.reloaded[1]
        return Observed(
            name=service,
            state=kind,
            config_hash=config,
            reload_hash=container.labels.get(RELOAD_LABEL),
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
        """Before anything is stopped, removed or created, the image (and the sandbox runtime it
        asks for) must be on the engine: an old container keeps running."""
        image = spec.image or str(self._project().services[spec.name].compose["image"])
        with self._lock:
            present = self.client.images.list(name=image)
        if not present:
            raise ImageMissing(image)
        if self.trusted_only:
            from gateway.signing import trusted_ids  # lazily: cryptography costs memory

            if str(present[0].id) not in trusted_ids(self.trust_store):
                raise ImageUntrusted(image, str(present[0].id))
        runtime = self._project().services[spec.name].compose.get("runtime")
        if runtime is not None:
            with self._lock:
                known = list((self.client.info().get("Runtimes") or {}).keys())
            if runtime not in known:
                raise RuntimeMissing(str(runtime), known)

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
        elif isinstance(step, Reload):
            # desired() has already replaced the slice in the directory the container mounts
            if current is None or current.status != "running":
                raise EngineError(f"no running {step.name} container to reload")
            with self._lock:
                current.kill(signal="SIGHUP")
            self._track(step.name).reloaded = (current.id, step.spec.config_hash)
        elif isinstance(step, Recreate) and step.order == "start-first":
            self._start_candidate(step.spec, candidate)
        elif isinstance(step, Recreate):
            self._replace_stop_first(step.spec, current, candidate)
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
            except NotFound:
                self.client.volumes.create(name, labels={
                    PROJECT_LABEL: project.name, "com.docker.compose.volume": volume})
        if project.network == "bridge":
            name = factory.network_name()
            if not self.client.networks.list(names=[name]):
                self.client.networks.create(name, driver="bridge", labels={
                    PROJECT_LABEL: project.name, "com.docker.compose.network": "default"})

    def _create(self, spec: ServiceSpec, name: str, standby_port: int | None = None) -> Any:
        factory = self._factory()
        with self._lock:
            self._ensure_shared(factory)
            args = factory.create_args(spec.name, name, image=spec.image, standby_port=standby_port)
            if spec.reload_hash is not None:
                args["labels"] = {**args["labels"], RELOAD_LABEL: spec.reload_hash}
            created = self.client.api.create_container(**args)
            return self.client.containers.get(created["Id"])

    def _start(self, container: Any) -> None:
        with self._lock:
            container.start()

    def _create_and_start(self, spec: ServiceSpec) -> Any:
        assert self.project is not None
        name = container_name(self.project.name, spec.name)
        with self._lock, contextlib.suppress(NotFound):
            # A leftover of that name (crashed start-first, a hand-made one) is in the way.
            self.client.containers.get(name).remove(force=True)
        container = self._create(spec, name)
        try:
            self._start(container)
        except APIError:
            with self._lock, contextlib.suppress(APIError):
                container.remove(force=True)
            raise
        return container

    def _replace_stop_first(self, spec: ServiceSpec, current: Any, stale: Any) -> None:
        """Stop-first with the shortest gap: the new container is created while the old one still
        runs, so between the old one's exit and the new one's start there is only the start; the
        old one is removed, and the new one takes its name, after that. A new container that
        cannot start gives the service back to the old one."""
        if current is None:
            self._create_and_start(spec)
            return
        if stale is not None:  # left by an earlier handover that did not finish
            with self._lock:
                stale.remove(force=True)
        name = container_name(self._project().name, spec.name)
        new = self._create(spec, name + CANDIDATE_SUFFIX)
        with self._lock, contextlib.suppress(APIError):
            current.stop(timeout=self._stop_timeout(spec.name))
        try:
            self._start(new)
        except APIError:
            with self._lock:
                with contextlib.suppress(APIError):
                    new.remove(force=True)
                with contextlib.suppress(APIError):
                    current.start()
            raise
        with self._lock:
            current.remove(force=True)
            new.rename(name)

    def _remove(self, container: Any, service: str) -> None:
        with self._lock:
            with contextlib.suppress(APIError):
                container.stop(timeout=self._stop_timeout(service))
            container.remove(force=True)

    def _start_candidate(self, spec: ServiceSpec, stale: Any) -> None:
        """Start-first, first half: the replacement starts beside the old container and returns at
        once; the planner hands over once it is healthy, or rolls back. A service that can be a
        standby starts as one (`ServiceSpec.standby`): on the host's network on a free port of its
        own for /metrics and /healthz, on a bridge network on the usual one (its own address)."""
        if stale is not None:  # left by an earlier handover that did not finish
            with self._lock:
                stale.remove(force=True)
        port = None
        if spec.standby:
            port = spec.metrics_port or 0
            if spec.host_network and spec.metrics_port is not None:
                port = free_port()
        candidate = self._create(spec, container_name(self._project().name, spec.name) + CANDIDATE_SUFFIX, port)
        try:
            self._start(candidate)
        except APIError:
            with self._lock, contextlib.suppress(APIError):
                candidate.remove(force=True)
            raise

    # -------------------------------------------------------------- stats and metrics

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self._stats_interval)
            try:
                samples = await asyncio.to_thread(self._stats)
            except EngineError:
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
            sample = cpu_sample(stats)
            if track.cpu is not None and (percent := cpu_percent(track.cpu, sample)) is not None:
                track.details["cpu_percent"] = percent  # of one core
            track.cpu = sample[:2]
            memory = memory_used(stats)
            if memory is not None:
                track.details["memory"] = memory
                track.details["memory_source"] = "engine"  # the container's, as `docker stats` shows it
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
        scraped = await scrape(address, port)
        if scraped is None:
            return
        track = self._track(service)
        if scraped.buffered is not None:
            track.details["buffered"] = scraped.buffered
        if scraped.quarantined is not None:
            track.details["quarantined"] = scraped.quarantined
        if scraped.readings is not None:
            rate = track.readings.add(time.monotonic(), scraped.readings)
            if rate is not None:
                track.details["readings_per_s"] = round(rate, 2)


def free_port() -> int:
    """A TCP port no one listens on, on any of the host's addresses (for a standby's /metrics)."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def render_config(config: GatewayConfig, config_dir: Path) -> Project:
    from gateway.compose import render_loaded

    return render_loaded(config, config_dir)


def write_project(project: Project, out: Path) -> None:
    from gateway.compose import write

    write(project, out)


def specs_of(project: Project, out: Path) -> dict[str, ServiceSpec]:
    """The planner's view of each rendered service (`gateway.services.desired_services`): the
    compose hash covers image, limits and slice; the passwords a container gets in its
    environment (the compose file names them only, `${MQTT_PASSWORD}`) are hashed in too, keyed
    (`secrets_key`), so a changed password recreates the service that uses it."""

    def digest(names: tuple[str, ...]) -> str:
        values = {name: project.secrets.get(name) or os.environ.get(name, "") for name in names}
        return secrets_digest(secrets_key(out), values, names)

    def run(spec: ServiceSpec) -> Run:
        svc = project.services[spec.name]
        secret = (digest(spec.secrets),) if spec.secrets else ()
        return Run(
            command=tuple(svc.compose.get("command") or ()),
            config_hash=config_hash(svc.config_hash, *secret) if secret else svc.config_hash,
            config_file=str(out / svc.config_path),
            image=svc.limits.image,
            cpus=svc.limits.cpus,
            memory=svc.limits.memory,
            update=svc.limits.update,
            devices=tuple(p.host for p in svc.ports),
            reload_key=(config_hash(svc.reload_digest, *secret) if secret else svc.reload_digest) or None,
            standby=True,  # a candidate gets a metrics port of its own (DockerRuntime._start_candidate)
        )

    slices = {}
    for name, svc in project.services.items():
        assert svc.config is not None, "gateway.compose.build_service keeps each service's slice"
        slices[name] = svc.config
    return desired_services(slices, run, metrics_host=project.metrics_host, host_network=project.network == "host")


CHILD = (sys.executable, "-m", "gateway.runtime.docker")


def render_in_child(config_dir: Path, out: Path) -> tuple[Desired, Project | None]:
    """What the child does: load and check DIR, render and write its project; the project
    without its config models (the supervisor never unpickles pydantic), refusals as text."""
    rendered: list[Project] = []

    def build(config: GatewayConfig) -> Desired:
        project = render_config(config, config_dir)
        write_project(project, out)
        specs = specs_of(project, out)
        rendered.append(replace(project, services={
            name: replace(svc, config=None) for name, svc in project.services.items()}))
        return Desired(specs, runtime=config.runtime)

    desired = in_process(build, config_dir)
    return desired, (rendered[0] if rendered and desired.specs is not None else None)


def main() -> int:
    request = json.loads(sys.stdin.read())
    answer = render_in_child(Path(request["config_dir"]), Path(request["out_dir"]))
    sys.stdout.buffer.write(pickle.dumps(answer))
    return 0


def make_runtime(config_dir: Path, run_dir: RunDir, trusted_only: bool = False) -> DockerRuntime:
    """What `gateway.supervisor.make_runtime` calls for `--runtime docker`."""
    return DockerRuntime(config_dir, run_dir, trusted_only=trusted_only)


if __name__ == "__main__":
    sys.exit(main())
