"""What a search prints: the run's announcement, live progress over trials, each rung's promotions and each
study's front. Nothing here decides anything; the driver, the rungs and the searcher hand it their values."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TextIO

import optuna
from tqdm.auto import tqdm

from blocksearch.objectives import fmt
from blocksearch.recipe.baseline import alignment_bound
from blocksearch.report.compute import ParetoReport, TrialPoint
from blocksearch.study import FINISHED, SearchConfig, counts, is_stale
from blocksearch.search.promotion import MAX_FRACTION
from blocksearch.search.trial import KD_METRIC


def announce(cfg: SearchConfig, remaining: int, parallel: int, ray_info: dict, out: TextIO) -> None:
    """The study, its trials to run and their lanes, and the Ray dashboard (with how it is authenticated)."""
    print(f"study {cfg.study!r} in {cfg.storage}: {remaining} trials to run, {parallel} in parallel "
          f"({cfg.cpus_per_trial:g} CPU, {cfg.gpus_per_trial:g} GPU each), sampler {cfg.sampler}"
          f"{', ASHA on ' + KD_METRIC if cfg.asha else ''}", file=out)
    if ray_info["dashboard_url"]:
        auth = ("token auth on: the token is in ~/.ray/auth_token (ray get-auth-token)"
                if ray_info["auth"] == "token" else f"RAY_AUTH_MODE={ray_info['auth']}")
        print(f"Ray dashboard: {ray_info['dashboard_url']}  ({auth})", file=out)


class Progress:
    """Live progress: a tqdm bar over trials and one line per finished trial, fed by the searcher."""

    def __init__(self, total: int, objectives, out: TextIO):
        self.objectives, self.out = objectives, out
        self.bar = tqdm(total=total, desc="trials", unit="trial", file=out, dynamic_ncols=True,
                        disable=None)  # no bar when not a terminal; the per-trial lines remain

    def __getstate__(self) -> dict:  # Tune pickles the searcher, and so this view; a live view keeps nothing
        return {}

    def update(self, outcome, running: int) -> None:
        """A trial started (``outcome`` None) or ended (a ``searcher.TrialOutcome``)."""
        if outcome is not None:
            number, genome, state, info = outcome
            self.bar.write(f"#{number:<3d} {genome:28s} {state:8s} {self._detail(state, info)}", file=self.out)
            self.bar.update(1)
        self.bar.set_postfix(running=running)

    def _detail(self, state: str, info: dict) -> str:
        if state == "FAIL":
            return info.get("error", "stopped early by ASHA")
        if state != "COMPLETE":
            return "stopped early by ASHA"
        t = info.get("timings", {})
        vals = "  ".join(f"{o} {fmt(o, v)}" for o, v in zip(self.objectives, info["values"]))
        return (f"{vals}  (kd {t.get('kd_s', 0):.0f}s, gen {t.get('generate_s', 0):.0f}s, "
                f"score {t.get('score_s', 0):.0f}s, overhead {t.get('overhead_s', 0):.0f}s)")

    def close(self) -> None:
        self.bar.close()


def rung_promotions(steps: int, below: str, report: ParetoReport, chosen: list[TrialPoint], free: set[int],
                    settled: dict[str, list[int]], references: str, parallel: int, out: TextIO) -> None:
    """Who goes on to the rung of ``steps`` KD steps (rungs.promoted), who is taken from bench fidelity's study
    without a lane (``free``), and which reference designs stop because the study below ``settled`` them."""
    rule = "on or within noise of its front" if report.noise_measured else "on its front (noise not measured)"
    refs = "the reference designs it left open" if references == "open" else "the reference designs"
    print(f"\nrung {steps} KD steps: {len(chosen)} of {len(report.ranked)} feasible students of "
          f"{below!r} go on from their KD checkpoints -- {refs} and the students {rule}, at most "
          f"{MAX_FRACTION:.0%} of the feasible searched ones, in whole rounds of {parallel} parallel trials "
          f"(never fewer than one): "
          f"{', '.join(t.genome for t in chosen)}", file=out)
    for t in chosen:
        if t.number in free:
            print(f"  {t.design} is taken from bench fidelity's study at {steps} steps, as at "
                  f"{below!r} (reproduced there after {t.from_study['checked_at']} KD steps): a place, no lane",
                  file=out)
    for ref, by in settled.items():
        print(f"  {ref} stops at {below!r}: dominated there on quality beyond noise by trial(s) "
              f"{', '.join(map(str, by))} (--rung-references all continues it anyway)", file=out)


def checkpoints_dropped(stopped: int, freed: int, out: TextIO) -> None:
    """The checkpoints of the students that stop before a rung, once deleted."""
    if stopped:
        print(f"KD checkpoints of the {stopped} students that stop here (infeasible or beyond noise of the "
              f"front) deleted: {freed / 2**20:.0f} MB freed", file=out)


def rung_done(steps: int, below: str, done: int, freed: int, out: TextIO) -> None:
    """The checkpoints below a rung that has continued every student it took, once deleted."""
    if done:
        print(f"rung {steps} done: the KD checkpoints of {done} students in {below!r} deleted "
              f"({freed / 2**20:.0f} MB freed)", file=out)


def print_front(report: ParetoReport, study: optuna.Study, steps, out: TextIO) -> None:
    """A study's counts by state and its Pareto front, one row per trial."""
    c = counts(study)
    hits = f"; {c['cached']} sampler repeats of trained Genomes skipped" if c["cached"] else ""
    budget = f" ({steps} KD steps)" if steps is not None else ""
    print(f"\nstudy {report.study!r}{budget}: {c['complete']} complete, {c['pruned']} pruned, {c['failed']} failed"
          f"{hits}; Pareto front ({len(report.front)}):", file=out)
    print(f"{'trial':>6s} {'design':9s} {'genome':28s} " + " ".join(f"{n:>11s}" for n in report.objectives),
          file=out)
    for t in map(report.trial, report.front):
        print(f"{t.number:>6d} {t.design or '':9s} {t.genome or '':28s} "
              + " ".join(f"{fmt(n, v):>11s}" for n, v in zip(report.objectives, t.values)), file=out)


def report_cost(study: str, total_s: float, pictures_s: dict) -> str:
    """One line: what writing ``study``'s report took, and the share of its pictures (pictures.py's diagrams
    and sample grid, artifacts.py's upload): the figure behind docs/reports.md's cost of the pictures."""
    parts = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in pictures_s.items())
    return (f"report {study!r}: written in {total_s:.1f} s, pictures {sum(pictures_s.values()):.1f} s"
            + (f" ({parts})" if parts else ""))


def results(folders: list[tuple[str, object, object]], reports: list[ParetoReport], storage: str,
            out: TextIO) -> None:
    """Where each study, its students and its report are; with rungs, which study to pick the front from (the
    longest-trained one whose front is not empty, and why a longer one's is)."""
    lines = [f"study {name!r} in {storage}; students in {students}; report in {folder}"
             for name, students, folder in folders]
    print("\nresults: " + lines[0] if len(lines) == 1 else "\nresults:\n" + "\n".join("  " + x for x in lines),
          file=out)
    if len(folders) > 1:
        print(pick_line(reports), file=out)


def pick_line(reports: list[ParetoReport]) -> str:
    """The last line of a search with rungs: the longest-trained study with a front, and, where that is not the
    longest rung, why the longest rung's front is empty."""
    longest = reports[-1]
    if longest.front:
        return (f"the students trained longest, and the front to pick from: study {longest.study!r} "
                f"(blocksearch export --study {longest.study} --front -o DIR)")
    why = f"the longest rung, study {longest.study!r}, has an empty front: {empty_front_why(longest)}"
    best = next((r for r in reversed(reports) if r.front), None)
    if best is None:
        return f"no front to pick from: every study's front is empty; {why}"
    steps = best.attrs.get("distill", {}).get("steps")
    return (f"the front to pick from: study {best.study!r}" + (f" ({steps} KD steps)" if steps else "")
            + f" (blocksearch export --study {best.study} --front -o DIR); {why}")


def empty_front_why(report: ParetoReport) -> str:
    """Why ``report`` has no front: no student reached it, none completed, or every one is infeasible (below the
    text alignment floor, ``--min-alignment`` x the teacher's, or over ``--max-params``)."""
    trials = [t for t in report.trials if not t.skipped and t.cached_from is None and t.state != "WAITING"]
    if not trials:
        return "no student was promoted to it"
    done = [t for t in trials if t.state == "COMPLETE"]
    if not done:
        states = Counter(t.state for t in trials)
        return "none of its students completed (" + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ")"
    infeasible = [t for t in done if not t.feasible]
    if len(infeasible) < len(done):
        return "none of its completed students has finite scores"
    constraints = report.attrs.get("constraints") or {}
    floor = alignment_bound((report.attrs.get("teacher_metrics") or {}).get("alignment"),
                            constraints.get("min_alignment") or 0)
    below = [t for t in done if floor is not None and (t.metrics.get("alignment") or 0) < floor]
    budget = constraints.get("max_params")
    over = [t for t in done if budget and (t.metrics.get("params") or 0) > budget]
    rule = (f"below the text alignment floor (alignment < {floor:.3f}: --min-alignment "
            f"{constraints.get('min_alignment', 0):g} x the teacher's)" if floor is not None else "")
    if below and len(below) == len(done):
        return f"all {len(done)} of its students are {rule}"
    parts = [f"{len(below)} {rule}"] if below else []
    parts += [f"{len(over)} over --max-params {budget:g}"] if over else []
    return f"all {len(done)} of its students are infeasible" + (f": {', '.join(parts)}" if parts else "")


def no_trial_completed(study: optuna.Study, logs: Path) -> str | None:
    """The summary line of a study none of whose trials completed: how many failed, the most common error and how
    many it hit, and where the trials' logs are; None where a trial completed or none failed."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name in FINISHED
              and not t.user_attrs.get("skipped") and not is_stale(t)]
    failed = [t for t in trials if t.state.name == "FAIL"]
    if not failed or any(t.state.name == "COMPLETE" for t in trials):
        return None
    errors = Counter(_short(t.user_attrs.get("error", "")) for t in failed)
    error, hits = errors.most_common(1)[0]
    log = next((t.user_attrs["log"] for t in failed if t.user_attrs.get("log")
                and _short(t.user_attrs.get("error", "")) == error), logs)
    how = f" with \"{error}\"" if hits == len(failed) else f", {hits} of them with \"{error}\""
    return f"no trial completed: {len(failed)} of {len(trials)} failed{how}; see {log}"


def _short(error: str, width: int = 100) -> str:
    """An error's first line, cut at a word to at most ``width`` characters."""
    line = (error.strip().splitlines() or ["unknown error"])[0]
    return line if len(line) <= width else line[:width].rsplit(" ", 1)[0] + " ..."
