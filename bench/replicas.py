"""Several GPUs: throughput of --replicas and latency of --context-parallel, FLUX.1 [dev] 1024x1024, 28 steps,
full-size architectures with random bf16 weights, eager (speed profile off), in one run.

1. Context parallelism: one image's latency on 1, 2 and 4 GPUs (as many as there are), each group of
   processes started here (as torchrun would start them) and running the app's own path: a registry per
   process, the transformer split by `flux_ui.models.context_parallel.shard`, process 0 handing each job to
   the others (`flux_ui.serving.context_parallel`). One warm-up image, then the median of RUNS.
2. Replicas: images per minute with 1, 2 and 4 Ray Serve replicas (the app's `start_replicas`, scaled up in
   place), each a registry on its own GPU; jobs go through `RayWorkers.run` as the server's do, two per
   replica at once after a warm-up image on each.

Writes its JSON (GPU, date, torch, rows) to --out after every row, and prints each row.

    python bench/replicas.py --out replicas.json          # a machine with 2-4 GPUs (needs ray[serve])
    python bench/replicas.py --tiny --out replicas.json   # the same path on the CPU with tiny models
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import sys
import threading
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench")
RUNS = 2  # timed images per context-parallel group (after one warm-up)
PER_REPLICA = 2  # timed images per replica, sent at once


def settings_for(tiny: bool, tiny_dir: Path, parallel: int = 1):
    from flux_ui.core.settings import Settings

    if tiny:
        return Settings(tiny=True, tiny_dir=tiny_dir, model_root=tiny_dir, preview_every=0, history=False,
                        outputs_dir=Path("/tmp/flux-ui-bench"), context_parallel=parallel)  # fmt: skip
    return Settings(device="cuda", dtype=torch.bfloat16, speed="off", preview_every=0, history=False,
                    outputs_dir=Path("/tmp/flux-ui-bench"), context_parallel=parallel)  # fmt: skip


def make_registry(settings):
    """The app's Registry, on tiny models or (on a GPU) on full-size random weights (bench/speed.py)."""
    from flux_ui.models.registry import Registry

    if settings.tiny:
        return Registry(settings)
    from bench.speed import build_vae, random_registry

    fields = {k: getattr(settings, k) for k in ("context_parallel", "outputs_dir", "history")}
    return random_registry(build_vae(), "off", **fields)


def job(settings, seed: int):
    from flux_ui.tasks.text_to_image import SPEC, TextToImageParams

    side = 64 if settings.tiny else 1024
    steps = 4 if settings.tiny else 28
    raw = TextToImageParams("a red fox in the snow", "dev", side, side, steps, seed=seed)
    return SPEC.validate(raw, settings, None)


# -- 1. context parallelism -----------------------------------------------------------------------


def cp_process(rank: int, n: int, port: int, tiny: bool, tiny_dir: str, results) -> None:
    """One of `n` processes of a context-parallel group (what torchrun starts)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    logging.basicConfig(level=logging.WARNING)
    from flux_ui.models import context_parallel
    from flux_ui.serving.context_parallel import LeadWorkers, follow
    from flux_ui.tasks.text_to_image import SPEC

    settings = settings_for(tiny, Path(tiny_dir), n)
    if n > 1:
        context_parallel.init(settings)
    elif not tiny:
        torch.cuda.set_device(0)
    registry = make_registry(settings)
    if n > 1 and rank > 0:
        follow(registry)
        return
    if n > 1:
        registry.workers = LeadWorkers(registry)
    times = []
    for i in range(RUNS + 1):
        start = time.perf_counter()
        result = SPEC.execute(registry, job(settings, 7))
        times.append(time.perf_counter() - start)
        log.warning("context parallel %d: image %d in %.2f s (%s)", n, i, times[-1], result.timings)
    if n > 1:
        registry.workers.close()
    results.put({"first_s": round(times[0], 2), "runs_s": [round(t, 3) for t in times[1:]]})


def context_parallel_rows(sizes: list[int], tiny: bool, tiny_dir: Path, write) -> None:
    import torch.multiprocessing as mp

    base = None
    for n in sizes:
        results = mp.get_context("spawn").SimpleQueue()
        mp.start_processes(cp_process, args=(n, 29500 + n, tiny, str(tiny_dir), results), nprocs=n,
                           start_method="spawn")  # fmt: skip
        got = results.get()
        median = statistics.median(got["runs_s"])
        base = base or median
        write({"phase": "context_parallel", "gpus": n, "median_s": round(median, 3), **got,
               "latency_vs_1": round(median / base, 3)})  # fmt: skip


# -- 2. replicas ----------------------------------------------------------------------------------


def replica_class():
    from flux_ui.serving.replicas import Replica

    class RandomWeightReplica(Replica):
        def make_registry(self, settings):
            return make_registry(settings)

    return RandomWeightReplica


def replicas_rows(sizes: list[int], tiny: bool, tiny_dir: Path, write) -> None:
    import ray

    from flux_ui.serving.replicas import start_replicas

    # Both packages go to the replicas: flux_ui, and bench/ for the random-weight registry.
    ray.init(runtime_env={"py_modules": [str(ROOT / "flux_ui"), str(ROOT / "bench")]}, include_dashboard=False,
             logging_level=logging.WARNING, num_cpus=max(os.cpu_count() or 1, max(sizes)))  # fmt: skip
    settings = dataclasses.replace(settings_for(tiny, tiny_dir), port=0)
    base = None
    workers = None
    try:
        for n in sizes:
            started = time.perf_counter()
            workers = start_replicas(dataclasses.replace(settings, replicas=n), replica_class())
            ready_s = time.perf_counter() - started
            warm = run_at_once(workers, settings, n, seed=0)  # one image per replica: loads its models
            start = time.perf_counter()
            done = run_at_once(workers, settings, n * PER_REPLICA, seed=100)
            wall = time.perf_counter() - start
            per_min = 60 * len(done) / wall
            base = base or per_min
            write({"phase": "replicas", "replicas": n, "images": len(done), "wall_s": round(wall, 2),
                   "images_per_min": round(per_min, 2), "throughput_vs_1": round(per_min / base, 3),
                   "by_replica": {r: done.count(r) for r in sorted(set(done))}, "deploy_s": round(ready_s, 1),
                   "warmup_s": warm and round(max(warm.values()), 1)})  # fmt: skip
    finally:
        if workers is not None:
            workers.close()
        ray.shutdown()


def run_at_once(workers, settings, count: int, seed: int):
    """`count` jobs handed to the replicas at once, as `count` server threads would; returns the replica of
    each (for the warm-up: replica -> seconds)."""
    from flux_ui.tasks.text_to_image import SPEC

    made: list[str] = []
    times: dict[str, float] = {}

    def one(i: int) -> None:
        start = time.perf_counter()
        result = workers.run(SPEC.name, job(settings, seed + i), None, None)
        made.append(result.replica)
        times[result.replica] = time.perf_counter() - start

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == count, f"{count - len(made)} jobs failed"
    return made if seed else times


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="tiny models on the CPU (checks the script end to end)")
    p.add_argument("--tiny-dir", default="models/tiny")
    p.add_argument("--phase", choices=("all", "context-parallel", "replicas"), default="all")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    tiny_dir = Path(a.tiny_dir).resolve()
    if a.tiny:
        from flux_ui.tiny.models import ensure_tiny_models

        ensure_tiny_models(tiny_dir)
    gpus = 2 if a.tiny else torch.cuda.device_count()
    sizes = [n for n in (1, 2, 4) if n <= gpus]
    out = {
        "gpu": "cpu (tiny)" if a.tiny else torch.cuda.get_device_name(),
        "gpus": gpus,
        "date": str(date.today()),
        "torch": torch.__version__,
        "config": "FLUX.1 [dev] architecture, random bf16 weights, 1024x1024, 28 steps, speed profile off",
        "rows": [],
    }

    def write(row: dict) -> None:
        out["rows"].append(row)
        Path(a.out).write_text(json.dumps(out, indent=2))
        print(json.dumps(row), flush=True)

    if a.phase in ("all", "context-parallel"):
        context_parallel_rows(sizes, a.tiny, tiny_dir, write)
    if a.phase in ("all", "replicas"):
        replicas_rows(sizes, a.tiny, tiny_dir, write)


if __name__ == "__main__":
    main()
