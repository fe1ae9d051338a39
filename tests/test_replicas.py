"""--replicas on a local Ray instance: two tiny CPU replicas behind the Python API. Sixteen concurrent
requests each get their own seed and prompt back, both replicas work, a replica killed mid-job loses no
request (its job is retried on the other, or fails with WorkerLost) and Serve replaces it; bad input is
refused in front; a cancelled job stops on its replica and frees it."""

from __future__ import annotations

import pickle
import threading
import time

import pytest

from flux_ui.client import FluxUI
from flux_ui.core.errors import Cancelled, InvalidInput, ModelUnavailableError, WorkerLost
from flux_ui.core.turns import Line
from flux_ui.media.metadata import meta_from_parameters
from flux_ui.output.history import History, Query
from flux_ui.output.run import run_task
from flux_ui.serving.replicas import DEPLOYMENT, app_name, portable
from flux_ui.tasks import Request

REQUESTS = 16
STEPS = 12  # enough denoising steps that a kill at step 2 lands while the job is still running
TIMEOUT_S = 300  # no request may hang: each ends with a result or an error within this


def test_errors_cross_processes_with_their_fields():
    err = pickle.loads(pickle.dumps(InvalidInput("steps", "expected 1-100, got 0")))
    assert (err.field, str(err)) == ("steps", "steps: expected 1-100, got 0")
    err = pickle.loads(pickle.dumps(ModelUnavailableError("VAE", "repo", "missing", "fix it")))
    assert (err.what, err.fix) == ("VAE", "fix it")

    class Local(Exception):  # a class pickle cannot find by name
        pass

    assert str(portable(Local("boom"))) == "Local: boom"


def test_a_line_of_width_two_gives_two_turns_at_once():
    line = Line(2)
    a, b, c = line.join(), line.join(), line.join()
    assert line.wait(a, 0) and line.wait(b, 0) and not line.wait(c, 0)
    assert (line.ahead(a), line.ahead(b), line.ahead(c)) == (0, 0, 1)
    line.leave(a)
    assert line.wait(c, 0) and line.ahead(c) == 0


@pytest.fixture(scope="module")
def ray():
    return pytest.importorskip("ray", reason="ray[serve] is not installed (pip install 'ray[serve]==2.60.0')")


@pytest.fixture(scope="module")
def flux(ray, tiny_dir, tmp_path_factory):
    """The Python API in front of two replicas on a local Ray instance (started once for the module)."""
    api = FluxUI(
        tiny=True,
        tiny_dir=tiny_dir,
        outputs_dir=tmp_path_factory.mktemp("outputs"),
        preview_every=0,
        replicas=2,
        port=7999,  # names the Serve application
    )
    yield api
    api.close()


def kill_replica(replica: str) -> None:
    """Kill the replica's actor process, as a crash would (Serve is not told)."""
    import ray

    names = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].endswith(f"#{replica}")]
    assert names, f"no actor for replica {replica}"
    ray.kill(ray.get_actor(names[0]["name"], namespace=names[0]["namespace"]), no_restart=True)


def replica_actors(app: str) -> set[str]:
    """The ids of the live replica actors of Serve application `app`."""
    import ray

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return {n.rpartition("#")[2] for n in names if n.startswith("SERVE_REPLICA::") and f"::{app}#" in n}


def running_replicas(app: str) -> int:
    from ray import serve

    return serve.status().applications[app].deployments[DEPLOYMENT].replica_states.get("RUNNING", 0)


def test_bad_input_is_refused_in_front(flux):
    started = time.monotonic()
    with pytest.raises(InvalidInput) as err:
        flux.generate(prompt="a fox", resolution=(64, 64), steps=0)
    assert err.value.field == "steps"
    assert flux.registry.workers.busy() == {} and time.monotonic() - started < 5


def test_sixteen_requests_on_two_replicas_one_killed_mid_job(flux):
    workers = flux.registry.workers
    outcomes: dict[int, object] = {}
    finished: set[str] = set()  # replicas that delivered a result
    killed: list[str] = []
    lock = threading.Lock()

    def on_step(ev) -> None:
        # Once both replicas have delivered, kill the one running this job, while it runs (at step 2).
        with lock:
            if killed or len(finished) < 2 or ev.step != 2:
                return
            killed.append(workers.current())
        kill_replica(killed[0])

    def call(i: int) -> None:
        try:
            result = flux.generate(
                prompt=f"prompt number {i}", resolution=(64, 64), steps=STEPS, seed=1000 + i, on_step=on_step
            )
            with lock:
                finished.add(result.replica)
            outcomes[i] = result
        except Exception as err:  # noqa: BLE001 - recorded, then checked: only WorkerLost is acceptable
            outcomes[i] = err

    threads = [threading.Thread(target=call, args=(i,)) for i in range(REQUESTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT_S)
    assert sorted(outcomes) == list(range(REQUESTS)), "a request neither returned nor raised"
    by_replica: dict[str, list[int]] = {}
    for i, outcome in sorted(outcomes.items()):
        if isinstance(outcome, WorkerLost):  # allowed: said, not silent
            assert "replica" in str(outcome)
            continue
        assert not isinstance(outcome, BaseException), f"request {i}: {outcome!r}"
        assert outcome.seeds == [1000 + i] and outcome.image.size == (64, 64)
        assert meta_from_parameters(outcome.parameters[0]).prompt == f"prompt number {i}"
        assert outcome.saved[0] is not None
        by_replica.setdefault(outcome.replica, []).append(i)
    print("requests by replica:", by_replica, "killed:", killed, "lost:", workers.lost)
    assert len(by_replica) >= 2, f"only {list(by_replica)} did work"
    assert killed and killed[0] in by_replica
    assert workers.lost == killed, "the killed replica's job was not seen lost"
    # Every delivered image is in the front's History, as on one GPU.
    delivered = sum(len(v) for v in by_replica.values())
    assert History(flux.registry.settings.outputs_dir).query(Query(text="prompt number"))[1] == delivered

    # Serve replaces the dead replica: a new one starts, and the pair serves again.
    app = app_name(flux.registry.settings)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        replicas = replica_actors(app)
        if len(replicas) == 2 and not replicas & set(killed) and running_replicas(app) == 2:
            break
        time.sleep(1)
    assert len(replicas) == 2 and not replicas & set(killed), f"not replaced: {replicas}"
    assert running_replicas(app) == 2
    assert flux.generate(prompt="after", resolution=(64, 64), steps=1, seed=5).replica in replicas


def test_cancel_stops_the_job_on_its_replica(flux):
    registry = flux.registry
    steps: list[int] = []
    with pytest.raises(Cancelled):
        run_task(
            registry,
            "text_to_image",
            Request(prompt="a long one", resolution="64x64", steps=40, seed=3),
            on_event=lambda ev: steps.append(ev.step),
            should_stop=lambda: len(steps) >= 2,
        )
    assert 2 <= len(steps) < 40
    assert registry.workers.busy() == {}
    # Both replicas take jobs again (the cancelled one stopped after its step).
    outcome = run_task(registry, "text_to_image", Request(prompt="next", resolution="64x64", steps=1, seed=4))
    assert outcome.result.seed == 4 and outcome.result.replica


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--replicas", "-1"], "--replicas"),
        (["--context-parallel", "0"], "--context-parallel"),
        (["--replicas", "2", "--context-parallel", "2"], "do not combine"),
        (["--ray-address", "auto"], "--ray-address"),
    ],
)
def test_several_gpu_flags_are_checked(argv, names):
    from flux_ui.core.settings import settings_from_args

    with pytest.raises(ValueError, match=names):
        settings_from_args(argv)
