"""Replicas (--replicas N): the task table served by N Ray Serve replicas, each a registry on its own GPU.

The server in front (the Gradio UI, the HTTP APIs, or the Python API) does everything but the GPU work:
it validates each request, takes a turn in `registry.line` (N turns at once), hands the validated job to
`RayWorkers.run` (`TaskSpec.execute` does, when `registry.workers` is set), and delivers the result itself
(safety screen, outputs folder, History), as on one GPU. Ray Serve routes each job to a free replica
(`max_ongoing_requests=1`), health-checks the replicas and replaces one that dies; a job that was running
on it is retried once on another, and if that one dies too, it fails with WorkerLost (never silently).

Ray is imported only here, and only when --replicas is given. Serve has no notion of a job that reports
progress and can be stopped after a step: a replica's `run` is a streaming method (its events are the
task's step events), and Serve's request cancellation, which cancels that method's asyncio task, tells
the task to stop after its current step.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pickle
import queue
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from flux_ui.core.errors import Cancelled, InvalidInput, ModelUnavailableError, WorkerLost
from flux_ui.core.settings import Settings
from flux_ui.models.faults import recover_from_oom
from flux_ui.models.registry import Registry
from flux_ui.tasks.table import TASKS

log = logging.getLogger(__name__)
DEPLOYMENT = "FluxReplica"
POLL_S = 0.25  # how often a job waiting on its replica checks whether it should stop
# Passed on to the replicas (they may run on other machines): where models come from, and the hub login.
HUB_ENV = ("HF_TOKEN", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT")


def app_name(settings: Settings) -> str:
    """The Serve application's name: one per front server (its port), so that a restarted server replaces
    its own replicas on a shared cluster and leaves another server's alone."""
    return f"flux-ui-{settings.port}"


class Replica:
    """One replica: a registry of its own (on the GPU Ray gave it), running one job at a time."""

    def __init__(self, settings: Settings):
        from ray import serve

        self.id = serve.get_replica_context().replica_id.unique_id
        self.registry = self.make_registry(settings)
        if settings.preload:
            from flux_ui.tasks import preload

            preload.start(self.registry)
        log.info("replica %s ready (device %s)", self.id, settings.device)

    def make_registry(self, settings: Settings) -> Registry:  # a hook: the benchmark builds random weights
        return Registry(settings)

    async def run(self, task: str, job: object):
        """Run `task` on `job` (validated in front); yields ("started", replica id), ("event", e) for each
        of the task's events, then ("done", result) or ("error", the task's exception)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        spec = TASKS[task]

        def on_event(event: object) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        def work() -> object:
            with self.registry.line.turn():  # behind --preload, if it is still running
                return spec.run(self.registry, job, on_event, stop.is_set)

        yield ("started", self.id)
        done = loop.run_in_executor(None, work)
        try:
            while not done.done():
                get = asyncio.ensure_future(events.get())
                await asyncio.wait({get, done}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    break
                yield ("event", get.result())
            while not events.empty():  # the last events were queued before the result
                yield ("event", events.get_nowait())
            yield self._outcome(done)
        finally:
            # Also reached when Serve cancels the request (the caller pressed Cancel, or went away): the
            # task stops after its current step, and the replica takes its next job only after that.
            stop.set()
            if not done.done():
                with contextlib.suppress(BaseException):
                    await asyncio.shield(done)

    def _outcome(self, done: asyncio.Future) -> tuple[str, object]:
        try:
            result = done.result()
        except torch.OutOfMemoryError as err:
            recover_from_oom(self.registry)  # this replica's memory; the front has none to free
            return "error", err
        except Exception as err:  # noqa: BLE001 - every failure goes back to the caller, as in one process
            if not isinstance(err, InvalidInput | Cancelled | ModelUnavailableError):
                log.exception("replica %s: %s job failed", self.id, type(err).__name__)
            return "error", portable(err)
        if hasattr(result, "replica"):
            result.replica = self.id
        return "done", result


def portable(err: BaseException) -> BaseException:
    """`err` if it survives pickling (the project's errors do, with their fields), else a RuntimeError
    with its type and message."""
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # noqa: BLE001 - whatever pickling raises, the message still goes back
        return RuntimeError(f"{type(err).__name__}: {err}")
    return err


class RayWorkers:
    """The front's side (`core.turns.Workers`): jobs handed to the replicas through a Serve handle."""

    def __init__(self, handle, app: str, owns_ray: bool):
        import ray.exceptions as rx
        from ray.serve.exceptions import RequestCancelledError

        self._handle = handle.options(stream=True)
        self._app = app
        self._owns_ray = owns_ray
        # A replica's process, or its machine, went away with the job.
        self._lost_types = (rx.RayActorError, rx.WorkerCrashedError, rx.NodeDiedError)
        self._cancelled_types = (RequestCancelledError, rx.TaskCancelledError, asyncio.CancelledError)
        self._lock = threading.Lock()
        self._running: dict[int, str] = {}  # the thread waiting on a job -> the replica running it
        self.lost: list[str] = []  # the replicas that died with a job of ours in flight, oldest first

    def busy(self) -> dict[str, int]:
        """Replica id -> jobs of this front it is running now."""
        with self._lock:
            return dict(Counter(self._running.values()))

    def current(self) -> str | None:
        """The replica running the calling thread's job (from an `on_event` callback), or None."""
        with self._lock:
            return self._running.get(threading.get_ident())

    def run(
        self,
        task: str,
        job: object,
        on_event: Callable[[object], None] | None,
        should_stop: Callable[[], bool] | None,
    ) -> object:
        """See `core.turns.Workers.run`; a job whose replica dies is run once more, on a live one."""
        for attempt in (1, 2):
            try:
                return self._once(task, job, on_event, should_stop)
            except self._lost_types as err:
                if should_stop is not None and should_stop():
                    raise Cancelled() from None
                if attempt == 1:
                    log.warning("the replica running a %s job died (%s); running it again", task, type(err).__name__)
                    continue
                log.error("the retry of a %s job lost its replica too (%s)", task, type(err).__name__)
        raise WorkerLost(
            f"the replica running this {task} job stopped, and so did the one it was retried on; nothing was "
            "made. Run it again; if it happens again, the server's log says why the replicas stop."
        )

    def _once(self, task: str, job: object, on_event, should_stop) -> object:
        stream = self._handle.run.remote(task, job)
        items: queue.Queue = queue.Queue()

        def read() -> None:  # a blocking iterator: read on a thread, so that a waiting job can be cancelled
            try:
                for item in stream:
                    items.put(item)
                items.put(("end", None))
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                items.put(("raised", err))

        threading.Thread(target=read, name="replica-stream", daemon=True).start()
        replica, me = None, threading.get_ident()
        try:
            while True:
                try:
                    kind, value = items.get(timeout=POLL_S)
                except queue.Empty:
                    kind, value = "idle", None
                if kind in ("idle", "event") and should_stop is not None and should_stop():
                    stream.cancel()  # the replica stops after its current step
                    raise Cancelled()
                if kind == "started":
                    replica = value
                    with self._lock:
                        self._running[me] = replica
                elif kind == "event" and on_event is not None:
                    on_event(value)
                elif kind == "done":
                    return value
                elif kind == "error":
                    raise value
                elif kind == "raised":
                    if isinstance(value, self._lost_types):
                        with self._lock:
                            self.lost.append(replica or "?")
                    if isinstance(value, self._cancelled_types):
                        raise Cancelled() from None
                    raise value
                elif kind == "end":
                    raise RuntimeError(f"the replica's answer to a {task} job ended without a result")
        finally:
            with self._lock:
                self._running.pop(me, None)

    def close(self) -> None:
        """Delete the Serve application (its replicas exit); stop Ray if this process started it."""
        import ray
        from ray import serve

        try:
            serve.delete(self._app)
        except Exception as err:  # noqa: BLE001 - at shutdown: say so and go on
            log.warning("could not delete the Serve application %s: %s", self._app, err)
        if self._owns_ray:
            ray.shutdown()


def for_replica(settings: Settings) -> Settings:
    """The front's settings as a replica needs them: its folders as absolute paths (a replica's working
    folder is Ray's), and no replicas of its own."""

    def absolute(path: Path | None) -> Path | None:
        return None if path is None else path.expanduser().resolve()

    model_paths = {
        k: str(absolute(Path(v))) if Path(v).expanduser().exists() else v for k, v in settings.model_paths.items()
    }
    return dataclasses.replace(
        settings,
        replicas=0,
        ray_address=None,
        tiny_dir=absolute(settings.tiny_dir),
        model_root=absolute(settings.model_root),
        model_paths=model_paths,
        models_dirs=tuple(absolute(d) for d in settings.models_dirs),
        outputs_dir=absolute(settings.outputs_dir),
        compile_cache=absolute(settings.compile_cache_dir),
        lora_dirs=tuple(absolute(d) for d in settings.lora_dirs),
    )


def start_replicas(settings: Settings, replica: type[Replica] = Replica) -> RayWorkers:
    """Deploy `settings.replicas` replicas on Ray Serve (on --ray-address, or on a Ray instance started
    here) and return the front's handle on them, once every replica is up. One GPU per replica where the
    cluster has GPUs (ValueError if it has fewer than asked for); CPU replicas otherwise (tests, --tiny)."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ImportError("--replicas needs Ray Serve: pip install 'ray[serve]==2.60.0'") from None

    owns_ray = not ray.is_initialized()
    if owns_ray:
        env = {name: os.environ[name] for name in HUB_ENV if name in os.environ}
        package = Path(__file__).resolve().parents[1]  # flux_ui/, shipped to every node that runs a replica
        ray.init(
            address=settings.ray_address,
            runtime_env={"py_modules": [str(package)], "env_vars": env},
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus and gpus < settings.replicas:
        raise ValueError(f"--replicas: {settings.replicas} replicas need a GPU each; the Ray cluster has {gpus:g}")
    # CPU replicas reserve no CPU: Ray's count of cores would otherwise cap how many a small machine runs.
    resources = {"num_gpus": 1} if gpus else {"num_cpus": 0}
    serve.start(proxy_location="Disabled")  # jobs arrive through the handle; Serve's HTTP proxy is not used
    deployment = serve.deployment(
        replica,
        name=DEPLOYMENT,
        num_replicas=settings.replicas,
        max_ongoing_requests=1,  # one job at a time per GPU, as in one process
        ray_actor_options=resources,
    )
    app = app_name(settings)
    log.info("starting %d replica(s) on Ray Serve (%s each)", settings.replicas, "one GPU" if gpus else "CPU")
    handle = serve.run(deployment.bind(for_replica(settings)), name=app, route_prefix=None)
    return RayWorkers(handle, app, owns_ray)
