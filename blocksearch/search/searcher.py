"""The searcher: Ray Tune's ``OptunaSearch`` keeping blocksearch's study contract.

Tune asks it for one configuration per trial and tells it how the trial ended; it writes the Optuna
study (Akiba et al., KDD 2019) that is the search's memory (:mod:`blocksearch.study`):
- every trial's ``genome`` (and ``metrics``/``timings``/``student_dir`` when it completes; a reference
  design's also ``seed_scores``, its scores at more generation seeds: the report's seed noise);
- a Genome is trained once: a sampler's repeat of a trained or running Genome is closed as FAIL
  (``skipped``, ``cached_from``; samplers ignore FAIL) and another is asked; after
  ``REPEATS_BEFORE_FALLBACK`` repeats an untrained Genome is queued (:func:`samplers.untrained_genome`);
- ``--max-params`` as an Optuna constraint, and the text-aware rule: a student whose alignment is below
  ``--min-alignment`` x the teacher's is infeasible (a constraint too), so it never reaches the front;
- ASHA-stopped trials PRUNED (partly trained: never on the front); failures FAIL with ``error``;
- several drivers on one study: a heartbeat of each running trial every ``heartbeat_interval`` s (a
  thread); before each suggestion, trials of dead drivers are failed and re-queued
  (``optuna.storages.fail_stale_trials``); a Genome running under another driver is a repeat; the study
  stops at ``--trials`` finished trials counted over every driver.

Ray's OptunaSearch keeps its Optuna trials and study in private attributes (``_ot_trials``,
``_ot_study``, ``_completed_trials``); this class reads none of them. It catches each Optuna trial in the
define-by-run function (which Optuna calls with the trial), keeps its own map of Tune trial ids, asks a
repeat again under a fresh key instead of deleting Ray's entry, and keeps its own ``optuna.Study`` over
the same storage object.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, NamedTuple

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from blocksearch.errors import BlocksearchError
from blocksearch.families.base import Arch, ArchSpace
from blocksearch.search.samplers import REPEATS_BEFORE_FALLBACK, make_sampler, untrained_genome
from blocksearch.study import FINISHED, OBJECTIVES, SearchConfig, counts, fail_unclaimed_trials, heartbeats, is_stale
from blocksearch.search.trial import KD_METRIC

# Optuna warns that heartbeats are meant for Study.optimize; Ray's OptunaSearch asks and tells instead, and
# this searcher beats for its trials itself (see _heartbeat_loop)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning, message=".*fail_stale_trials")
DRIVER = f"{socket.gethostname()}:{os.getpid()}"  # which driver runs a trial (user attr ``driver``)
MAX_ASKS = 200  # suggestions tried per Ray trial before giving up on finding an untrained Genome
WAIT_POLL_S = 2.0  # while other drivers' trials decide whether the study is done: look this often
FAIL = optuna.trial.TrialState.FAIL


class TrialOutcome(NamedTuple):
    """How a trial ended, for the progress lines: its ``info`` holds ``values`` and the trial's payload."""

    number: int
    genome: str
    state: str  # COMPLETE, PRUNED or FAIL
    info: dict


class StudySearch(OptunaSearch):
    """OptunaSearch with the study contract: genome/metrics/timings attrs, a Genome trained once,
    the parameter budget as a constraint, ASHA-stopped trials PRUNED, failures FAIL with ``error``.

    ``on_change(outcome, running)`` is called when a trial starts (outcome None) and when one ends."""

    def __init__(self, cfg: SearchConfig, storage, bound: ArchSpace, params_of: Callable[[Arch], int],
                 on_change: Callable[[TrialOutcome | None, int], None] | None = None,
                 alignment_floor: float | None = None, queue_only: bool = False, guide_ceiling: float | None = None,
                 text_key: str = "probe_guide"):
        self.cfg, self.bound, self.params_of, self.on_change = cfg, bound, params_of, on_change
        self.queue_only = queue_only  # a rung (rungs.py): run the queued students, never sample new ones
        self.alignment_floor = alignment_floor  # text-aware feasibility: alignment >= floor (None: no rule)
        # ... and, for a first stage ranked by the probe (no images), the probe's text rule: text_key <= ceiling
        self.guide_ceiling, self.text_key = guide_ceiling, text_key
        sampler = make_sampler(cfg.sampler, cfg.seed, cfg.trials, designs=len(bound.named_designs()))
        super().__init__(space=self._define_by_run, metric=list(cfg.objectives),
                         mode=["min" if OBJECTIVES[o] == "minimize" else "max" for o in cfg.objectives],
                         sampler=sampler, study_name=cfg.study, storage=storage)
        self.study = optuna.load_study(study_name=cfg.study, storage=storage, sampler=sampler)
        self.inflight: dict[str, int] = {}  # genome id -> Optuna trial number
        self._running: dict[str, tuple[str, optuna.Trial]] = {}  # Tune trial id -> (our key, Optuna trial)
        self._asked: optuna.Trial | None = None  # the trial Optuna last asked (OptunaSearch wraps it to
        # capture the suggest_* values; every other attribute is the Optuna trial's own)
        self._storage, self._beating, self._next_look = storage, None, 0.0

    def __getstate__(self) -> dict:  # Tune pickles its search algorithm: the heartbeat thread stays here
        return {**self.__dict__, "_beating": None}

    # -- several drivers: heartbeats, dead drivers, the shared count -----------------------------------
    def _beat(self, trial) -> None:
        """Record a heartbeat now (Optuna has no public trial id: ``_trial_id``, as its own heartbeat does)."""
        if heartbeats(self._storage):
            self._storage.record_heartbeat(trial._trial_id)

    def _heartbeat_loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.cfg.heartbeat_interval):
            for _, trial in list(self._running.values()):
                try:
                    self._beat(trial)
                except Exception:  # noqa: BLE001 - a missed beat is retried; the grace period covers it
                    pass

    def _start_heartbeats(self) -> None:
        if self._beating is None and heartbeats(self._storage):
            self._beating = threading.Event()
            threading.Thread(target=self._heartbeat_loop, args=(self._beating,), daemon=True,
                             name="blocksearch-heartbeat").start()

    def _study_state(self) -> str:
        """"finished" (--trials reached over every driver), "wait" (the rest is running elsewhere: it may
        still finish or die) or "go"; trials of dead drivers are failed and re-queued first."""
        if heartbeats(self._storage):
            optuna.storages.fail_stale_trials(self.study)
            fail_unclaimed_trials(self.study, self._storage, self.cfg.heartbeat_grace)
        c = counts(self.study)
        if self.queue_only:  # done when the queue is empty and nothing of it runs (under any driver)
            if self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
                return "go"
            return "wait" if c["running"] else "finished"
        if c["done"] >= self.cfg.trials:
            return "finished"
        return "wait" if c["done"] + c["running"] >= self.cfg.trials else "go"

    def _running_elsewhere(self, genome: Arch, number: int) -> optuna.trial.FrozenTrial | None:
        """A RUNNING trial of ``genome`` other than ours (another driver's, or our own in flight)."""
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.number != number and t.user_attrs.get("genome") == genome.id:
                return t
        return None

    def _define_by_run(self, trial) -> None:
        """The space for OptunaSearch: only ``trial.suggest_*`` calls (returns None); keeps the trial."""
        self._asked = trial
        self.bound.suggest(trial)

    def suggest(self, trial_id: str) -> dict | str | None:
        if time.monotonic() < self._next_look:
            return None
        state = self._study_state()
        if state != "go":
            self._next_look = time.monotonic() + WAIT_POLL_S
            return Searcher.FINISHED if state == "finished" else None
        self._start_heartbeats()
        for attempt in range(MAX_ASKS):
            if attempt >= REPEATS_BEFORE_FALLBACK and not self.queue_only:
                self._enqueue_untrained(attempt)
            key = f"{trial_id}/{attempt}"  # a fresh key: OptunaSearch asks a new Optuna trial for it
            params = super().suggest(key)
            trial = self._asked
            self._beat(trial)  # at once: other drivers see a live trial, never a silent one
            if self.queue_only and "promoted_from" not in trial.user_attrs:  # another driver took the last one
                trial.set_user_attr("skipped", True)
                self.study.tell(trial.number, state=FAIL)
                return None
            genome = self.bound.from_params(params)
            trial.set_user_attr("driver", DRIVER)
            trial.set_user_attr("genome", genome.id)  # written before we look: of two drivers racing
            # for one Genome, at least the later one sees the other's trial below
            if self.cfg.max_params is not None:
                trial.set_constraint("params_budget", self.params_of(genome) - self.cfg.max_params)
            done = self._evaluated(genome) or self._running_elsewhere(genome, trial.number)
            if done is None:
                self.inflight[genome.id] = trial.number
                self._running[trial_id] = (key, trial)
                self._changed(None)
                return {**params, "_genome": genome.id, "_number": trial.number,
                        "_design": trial.user_attrs.get("design"), "_suggested_at": time.time()}
            # A repeat: never retrain a Genome. Its result already lives in trial `done` (or will);
            # recording it again as COMPLETE would make TPE re-propose it ever more (a feedback loop
            # seen in practice), so the repeat is closed as FAIL, which samplers ignore.
            trial.set_user_attr("skipped", True)
            trial.set_user_attr("cached_from", done.number)
            self.study.tell(trial.number, state=FAIL)
        raise BlocksearchError(f"the sampler proposed only trained Genomes {MAX_ASKS} times in a row; "
                               f"the space may be exhausted ({len(self.bound)} architectures)")

    def _enqueue_untrained(self, attempt: int) -> None:
        trained = {t.user_attrs.get("genome") for t in self.study.get_trials(deepcopy=False)
                   if t.state != optuna.trial.TrialState.WAITING} | set(self.inflight)
        genome = untrained_genome(self.bound, trained, self.cfg.seed, attempt)
        if genome is not None:
            self.study.enqueue_trial(self.bound.to_params(genome), user_attrs={"explore": True})

    def _evaluated(self, genome: Arch) -> optuna.trial.FrozenTrial | None:
        """The trial that already trained ``genome`` (complete, pruned or failed), if any."""
        states = tuple(optuna.trial.TrialState[s] for s in FINISHED)
        for t in self.study.get_trials(deepcopy=False, states=states):
            if t.user_attrs.get("genome") == genome.id and not t.user_attrs.get("skipped") and not is_stale(t):
                return t
        return None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._running:  # not a trial of this searcher, or recorded already
            return
        key, trial = self._running.pop(trial_id)
        genome = trial.user_attrs.get("genome", "?")
        self.inflight.pop(genome, None)
        try:
            state, values, payload = self._record(trial, result, error)
            super().on_trial_complete(key, result=result if state == "COMPLETE" else None, error=state == "FAIL")
        except optuna.exceptions.UpdateFinishedTrialError:  # this driver was silent past the grace period
            state, values, payload = "FAIL", None, {"error": "marked stale by another driver (no heartbeat "
                                                             "within the grace period); re-queued there"}
        self._changed(TrialOutcome(trial.number, genome, state, {"values": values, **payload}))

    def _record(self, trial: optuna.Trial, result: dict | None, error: bool) -> tuple[str, list | None, dict]:
        """The trial's state and objective values; its user attrs written (before Optuna closes it)."""
        payload = json.loads(result["payload"]) if result and result.get("payload") else {}
        if error or not result:
            trial.set_user_attr("error", "the trial process died (killed, out of memory or crashed); see the "
                                         f"Ray Tune folder {self.cfg.runs_dir}/{self.cfg.study}/tune")
            return "FAIL", None, payload
        if payload.get("error"):
            trial.set_user_attr("error", payload["error"])
            if payload.get("log"):  # the traceback, in the trial's Tune folder (ray_tune._error_log)
                trial.set_user_attr("log", payload["log"])
            return "FAIL", None, payload
        if not result.get("final"):  # ASHA stopped it: its scores are partial, never on the front
            trial.set_user_attr("pruned_at", {"iteration": result.get("training_iteration"),
                                              KD_METRIC: result.get(KD_METRIC)})
            return "PRUNED", None, payload
        for key in ("metrics", "timings", "student_dir", "node", "seed_scores", "kd_start_step",
                    "from_study"):
            if key in payload:
                trial.set_user_attr(key, payload[key])
        alignment = payload["metrics"].get("alignment")
        if self.alignment_floor is not None and alignment is not None:  # <= 0 is feasible (Optuna's rule)
            trial.set_constraint("alignment_floor", self.alignment_floor - alignment)
        guide = payload["metrics"].get(self.text_key)
        if self.guide_ceiling is not None and guide is not None:  # probe_guide -> "guide_ceiling", probe_cfg -> "cfg_..."
            trial.set_constraint(f"{self.text_key.removeprefix('probe_')}_ceiling", guide - self.guide_ceiling)
        return "COMPLETE", [result[o] for o in self.cfg.objectives], payload

    def _changed(self, outcome: TrialOutcome | None) -> None:
        if self.on_change is not None:
            self.on_change(outcome, len(self.inflight))

    def save(self, checkpoint_path: str) -> None:  # the Optuna study is the memory, not Tune's checkpoint
        Path(checkpoint_path).write_text(json.dumps({"study": self.cfg.study, "storage": self.cfg.storage}))

    def restore(self, checkpoint_path: str) -> None:
        pass
