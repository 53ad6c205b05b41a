"""``blocksearch bench stability``: is latency a property of the architecture, not of the machine's load?

Measures the teacher and the named designs twice -- isolated, then while two KD training runs (real
``distill`` loops, the work a search's trials do) run on the same machine -- through the same
``measure_latency`` the trials use (the measurement slot of ``cache.py``), and prints the largest
relative difference (target <= 3 %). For contrast it also times them under load *without* the slot
(what the trials did before). With ``--study``, re-measures every completed student of a finished
study in isolation and prints Kendall's tau between in-search and isolated latency (target >= 0.95).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import torch
from diffusers import UNet2DConditionModel
from scipy.stats import kendalltau

from blocksearch.cache import default_cache_dir, work_slot
from blocksearch.families.unet.topology import unet_inputs
from blocksearch.recipe.distill import DistillConfig, distill
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.latency import _timings, measure_latency, pick_clock
from blocksearch.families.unet.genome import Genome
from blocksearch.space import load_space
from blocksearch.families.unet.surgery import build_student
from blocksearch.families.unet.topology import topology_of
from blocksearch.teachers import load_teacher

STABILITY_TARGET = 0.03
TAU_TARGET = 0.95


def _models(teacher, space: str) -> list[tuple[str, UNet2DConditionModel]]:
    bound = load_space(space).bind(topology_of(teacher.unet.config))
    return [("teacher", teacher.unet)] + [(n, build_student(teacher.unet, g).unet.eval())
                                          for n, g in bound.named_designs().items()]


def _start_trainers(n: int, teacher: str, ready_dir: Path) -> list[subprocess.Popen]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "blocksearch.bench.stability", "--train", teacher,
                               str(ready_dir / f"trainer{i}")], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for i in range(n)]
    deadline = time.time() + 300
    while not all((ready_dir / f"trainer{i}").exists() for i in range(n)):
        if time.time() > deadline or any(p.poll() is not None for p in procs):
            _stop(procs)
            raise BlocksearchError("the background KD runs did not start (see `blocksearch distill` on this teacher)")
        time.sleep(0.5)
    return procs


def _stop(procs) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


def _train_forever(teacher_spec: str, ready: str) -> None:
    """A background KD run (live teacher, as in a trial's distill loop) until terminated."""
    torch.set_num_threads(1)
    teacher = load_teacher(teacher_spec)
    genome = next(iter(load_space("unet_blocks").bind(topology_of(teacher.unet.config)).named_designs().values()))
    student = build_student(teacher.unet, genome)
    Path(ready).touch()
    with work_slot():
        distill(teacher, student, DistillConfig(steps=100000, teacher_cache=False), progress=False)


def _unslotted(unet, latent: int, repeats: int) -> float:
    """The old way: timed while the others keep training (no slot), for contrast."""
    inputs = unet_inputs(unet.config, 2, latent, device="cpu")
    now = time.process_time if pick_clock("cpu") == "cpu" else time.perf_counter
    with torch.no_grad():
        times, _ = _timings(lambda: unet(**inputs), now, "cpu", 3, repeats, 0.05)
    return sorted(times)[len(times) // 2]


def cmd_bench_stability(args) -> int:
    torch.set_num_threads(1)
    teacher = load_teacher(args.teacher)
    latent = teacher.unet.config.sample_size
    models = _models(teacher, args.space)
    teacher_unet = models[0][1]
    direct = lambda unet: measure_latency(unet, latent, repeats=args.repeats, min_s=args.min_s,  # noqa: E731
                                          use_cache=False, family=teacher.family)
    unit = direct(teacher_unet).median_ms  # the teacher's time on this machine: the students' unit, as in a search

    def measure(unet) -> float:
        if unet is teacher_unet:
            return direct(unet).median_ms
        return measure_latency(unet, latent, repeats=args.repeats, min_s=args.min_s, use_cache=False,
                               reference=teacher_unet, reference_ms=unit, family=teacher.family).median_ms

    isolated = {n: measure(u) for n, u in models}
    ready = default_cache_dir() / "bench" / f"stability-{os.getpid()}"
    ready.mkdir(parents=True, exist_ok=True)
    procs = _start_trainers(args.trainers, args.teacher, ready)
    try:
        time.sleep(2)
        loaded = {n: measure(u) for n, u in models}
        unslotted = {n: _unslotted(u, latent, args.repeats) for n, u in models}
    finally:
        _stop(procs)
    print(f"teacher {args.teacher}: one U-Net step, batch 2 (CFG), latent {latent}x{latent}, cpu, 1 torch thread, "
          f"median of {args.repeats} repeats; load = {args.trainers} KD runs (live teacher, 1 thread each)")
    print(f"{'model':9s} {'isolated':>10s} {'under load':>11s} {'diff':>7s} {'no slot':>10s} {'diff':>7s}")
    worst = 0.0
    for name, _ in models:
        d = abs(loaded[name] - isolated[name]) / isolated[name]
        d0 = abs(unslotted[name] - isolated[name]) / isolated[name]
        worst = max(worst, d) if name != "teacher" else worst
        print(f"{name:9s} {isolated[name]:8.2f}ms {loaded[name]:9.2f}ms {d:7.1%} {unslotted[name]:8.2f}ms {d0:7.1%}")
    print(f"students: median ratio to the teacher, timed interleaved, x the teacher's isolated time ({unit:.2f} ms); "
          f"teacher: its own direct time (the unit; not counted below)")
    print(f"largest relative difference of a student, isolated vs under load (measurement slot): {worst:.1%} "
          f"(target <= {STABILITY_TARGET:.0%}) {'ok' if worst <= STABILITY_TARGET else 'MISSED'}")
    if args.study:
        _study_tau(args, teacher, latent)
    return 0


def _study_tau(args, teacher, latent: int) -> None:
    storage = args.storage or f"sqlite:///{Path.cwd() / 'runs' / 'blocksearch.db'}"
    study = optuna.load_study(study_name=args.study, storage=storage)
    unit = (study.user_attrs.get("teacher_metrics") or {}).get("latency_ms")  # the study's own teacher time
    rows = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        genome = Genome.from_id(t.user_attrs["genome"])
        unet = build_student(teacher.unet, genome).unet.eval()
        rows.append((t.user_attrs["metrics"]["latency_ms"],
                     measure_latency(unet, latent, repeats=args.repeats, min_s=args.min_s, use_cache=False,
                                     reference=teacher.unet, reference_ms=unit, family=teacher.family).median_ms))
    if len(rows) < 3:
        raise BlocksearchError(f"study {args.study!r} has {len(rows)} complete trials; tau needs >= 3")
    tau = kendalltau([a for a, _ in rows], [b for _, b in rows]).statistic
    worst = max(abs(a - b) / b for a, b in rows)
    print(f"study {args.study!r}: {len(rows)} students; Kendall tau, in-search vs isolated latency: {tau:.3f} "
          f"(target >= {TAU_TARGET}) {'ok' if tau >= TAU_TARGET else 'MISSED'}; largest difference {worst:.1%}")


if __name__ == "__main__":  # the background trainers: python -m blocksearch.bench.stability --train SPEC READY
    if len(sys.argv) == 4 and sys.argv[1] == "--train":
        _train_forever(sys.argv[2], sys.argv[3])
