"""Study -> ParetoReport: the computed Pareto data of a study (the front, hypervolume, dominance over
the reference designs).

Compute first, render second (as optuna.visualization splits its Pareto plot): :func:`build_report`
reads the Optuna study written by ``blocksearch run`` (the study contract: objective values, user
attrs ``genome``/``design``/``metrics``/``timings``/``student_dir``/``error``/``seed_scores``) and returns a frozen
:class:`ParetoReport`; :mod:`blocksearch.report.render` turns it into reports/<study>/ (index.html,
pareto.png, trials.csv, README.md). The front is NSGA-II's non-dominated sorting (:mod:`blocksearch.report.pareto`).
A searched design dominates a reference design only beyond the study's noise (:mod:`blocksearch.report.noise`,
measured on the reference designs' ``seed_scores``); a raw domination within noise is kept, marked so. A claim
is "on quality" when a quality objective (not a cost: ``noise.COSTS``) is better beyond noise, else "on cost only"
(``pareto.claim``); a searched design whose quality is worse beyond noise claims nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import optuna

from blocksearch.errors import BlocksearchError
from blocksearch.report.noise import NOISY, Spread, estimate_noise, quality_mask
from blocksearch.report.pareto import REFERENCE, Z_NOISE, claim, dominates, hypervolume, non_dominated_sort
from blocksearch.study import default_storage, open_study, rung_name
from blocksearch.teachers import resolve_teacher

REFERENCE_RULE = (f"r = {REFERENCE} x the worst value of each objective over the completed trials; the "
                  f"hypervolume is the fraction of the box [0, r] that the points dominate (each objective "
                  f"divided by r, reference point (1, ..., 1)); 1.0 would be a point at the origin")
# -- the computed report --------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialPoint:
    """One trial as the report sees it; ``values`` are the study's objective values (COMPLETE only)."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    genome: str | None
    design: str | None
    values: tuple[float, ...] | None
    metrics: dict
    timings: dict
    student_dir: str | None
    error: str | None
    architecture: str  # diff from the teacher in diffusers module names
    rank: int | None  # non-dominated sorting rank; 0 = on the Pareto front; None if not ranked
    duration_s: float | None
    cached_from: int | None = None  # a cache hit: the Genome was trained by that trial (not ranked again)
    feasible: bool = True  # every constraint (e.g. --max-params) satisfied; infeasible trials are not ranked
    pruned_at: dict | None = None  # where early stopping cut a PRUNED trial
    skipped: bool = False  # a duplicate suggestion of a running Genome, never trained
    seed_scores: tuple = ()  # reference designs: ({seed, fid, alignment, kid?}, ...) at each generation seed
    from_study: dict | None = None  # a reference design's scores taken from bench fidelity's study (search/study_reuse.py)

    @property
    def on_front(self) -> bool:
        return self.rank == 0

    @property
    def label(self) -> str:
        return f"trial {self.number}" + (f" ({self.design})" if self.design else "")


@dataclass(frozen=True)
class Domination:
    """A searched design that Pareto-dominates a reference design, on raw values or beyond noise;
    improvement per objective as a fraction of the reference's value (0.12 = 12% better); ``kind``: what it
    claims (``pareto.claim``), "quality" or "cost only" (every quality difference within noise), None when it is
    no claim (within noise)."""

    searched: int  # trial number
    reference: str  # design name, e.g. bk_small
    reference_trial: int
    improvement: tuple[float, ...]
    beyond_noise: bool | None = None  # True: a claim; False: within noise; None: noise not measured (raw rule)
    kind: str | None = None  # "quality" | "cost only" (a claim, or the raw rule's); None: within noise


@dataclass(frozen=True)
class ParetoReport:
    study: str
    storage: str
    objectives: tuple[str, ...]
    directions: tuple[str, ...]  # "minimize" / "maximize" per objective
    trials: tuple[TrialPoint, ...]
    front: tuple[int, ...]  # trial numbers on the Pareto front, by the first objective
    reference_point: tuple[float, ...] | None  # in the objectives' own units
    reference_rule: str
    hypervolume: float | None  # of the front
    reference_hypervolume: float | None  # of the reference designs alone
    reference_designs: dict  # name -> genome id (study user attr)
    reference_trials: dict  # name -> number of its completed trial
    dominations: tuple[Domination, ...]
    attrs: dict  # study user attrs: teacher, space, distill, eval, device, command
    teacher_note: str  # why architectures are genome ids, when the teacher's config was not found
    noise: dict = field(default_factory=dict)  # objective or noisy metric -> Spread (noise.py)
    noise_z: float = Z_NOISE
    denoiser: str = "U-Net"  # the teacher family's word for its denoiser ("transformer"): the report's labels
    promoted: tuple[int, ...] = ()  # trials a rung continued (its trials' ``promoted_from``), first stage only
    promoted_to: str | None = None  # that rung's study

    @property
    def designs_name(self) -> str:
        """What the reference designs are called: BK-SDM's for a U-Net study, the space's own otherwise."""
        return "BK-SDM" if self.denoiser == "U-Net" else "space's"

    @property
    def noise_measured(self) -> bool:
        """Every objective's noise is known: dominations are judged beyond noise."""
        return bool(self.noise) and all(self.noise[o].sigma is not None for o in self.objectives)

    def trial(self, number: int) -> TrialPoint:
        return next(t for t in self.trials if t.number == number)

    @property
    def ranked(self) -> tuple[TrialPoint, ...]:
        """Completed trials with finite objective values: the points of the plots."""
        return tuple(t for t in self.trials if t.rank is not None)

    @property
    def counts(self) -> dict:
        out: dict = {}
        for t in self.trials:
            out[t.state] = out.get(t.state, 0) + 1
        return out


def build_report(study: optuna.Study, storage: str = "", reference_point=None) -> ParetoReport:
    """Compute the Pareto report of ``study`` (minimised objectives; maximised ones are negated)."""
    attrs = dict(study.user_attrs)
    objectives = tuple(study.metric_names or [f"objective_{i}" for i in range(len(study.directions))])
    directions = tuple(d.name.lower() for d in study.directions)
    sign = [1.0 if d == "minimize" else -1.0 for d in directions]
    topo, note = _topology_or_note(attrs.get("teacher"))
    rows = [_trial_row(t, topo) for t in study.get_trials(deepcopy=False)]
    ranked = [r for r in rows if r["values"] is not None and all(map(math.isfinite, r["values"]))
              and r["cached_from"] is None and r["feasible"]]
    mins = [tuple(s * v for s, v in zip(sign, r["values"])) for r in ranked]
    for rank, members in enumerate(non_dominated_sort(mins)):
        for i in members:
            ranked[i]["rank"] = rank
    trials = tuple(TrialPoint(**r) for r in rows)
    by_number = {r["number"]: m for r, m in zip(ranked, mins)}  # minimised objective values
    front = tuple(sorted((t.number for t in trials if t.on_front), key=lambda n: by_number[n]))
    ref_designs = dict(attrs.get("reference_designs") or {})
    if "reference_designs" not in attrs:  # an older study: the named designs its trials carry
        ref_designs = {t.design: t.genome for t in trials if t.design and t.genome}
    ref_trials = _reference_trials(trials, ref_designs)
    ref, hv, ref_hv = _hypervolumes(by_number, front, ref_trials, sign, reference_point)
    refs = {name: next(t for t in trials if t.number == n) for name, n in ref_trials.items()}
    # a rung's reference designs settled below and not trained here: their seed scores from bench fidelity's study
    carried = {k: v for k, v in (attrs.get("carried_noise") or {}).items() if k not in refs}
    noise = estimate_noise({k: t.metrics for k, t in refs.items()} | {k: v["metrics"] for k, v in carried.items()},
                           {k: t.seed_scores for k, t in refs.items()} | {k: v["seed_scores"] for k, v in carried.items()},
                           dict.fromkeys((*objectives, *NOISY)))
    searched = [t for t in trials if t.number in by_number and _is_searched(t, ref_designs)]
    dominations = tuple(d for name, n in ref_trials.items() for t in searched
                        if (d := _domination(t.number, name, n, by_number, [noise[o] for o in objectives],
                                             quality_mask(objectives))))
    rule = REFERENCE_RULE if reference_point is None else "r given by the user (--hv-reference)"
    promoted, rung = _promoted(study.study_name, attrs, storage)
    return ParetoReport(study.study_name, storage, objectives, directions, trials, front, ref, rule, hv,
                        ref_hv, ref_designs, ref_trials, dominations, attrs, note, noise,
                        denoiser=topo[0].denoiser_name if topo is not None else "U-Net", promoted=promoted,
                        promoted_to=rung)


def _promoted(name: str, attrs: dict, storage: str) -> tuple[tuple[int, ...], str | None]:
    """The trials of a first stage that its first rung continued (``promoted_from`` of the rung's trials, set by
    rungs.prepare_rung), and that rung's name; nothing where no rung ran yet or the storage is unknown."""
    if not attrs.get("rungs") or attrs.get("rung") or not storage:
        return (), None
    rung = rung_name(name, attrs["rungs"][0])
    if rung not in optuna.study.get_all_study_names(storage=storage):
        return (), None
    trials = optuna.load_study(study_name=rung, storage=storage).get_trials(deepcopy=False)
    return tuple(sorted({int(t.user_attrs["promoted_from"]) for t in trials if "promoted_from" in t.user_attrs})), rung


def _domination(searched: int, name: str, n: int, points: dict, noise: list[Spread],
                quality: tuple[bool, ...]) -> Domination | None:
    """``searched`` against reference design ``name`` (trial ``n``): a Domination when it dominates on raw
    values or beyond noise, with what it claims (``pareto.claim``; unknown noise: the raw rule alone, every
    sigma taken as 0, ``beyond_noise`` None)."""
    a, b = points[searched], points[n]
    known = all(s.sigma is not None for s in noise)
    kind = claim(a, b, [s.sigma if known else 0.0 for s in noise], quality)
    if not (kind or dominates(a, b)):
        return None
    gains = tuple((y - x) / abs(y) if y else 0.0 for x, y in zip(a, b))
    return Domination(searched, name, n, gains, kind is not None if known else None, kind)


def _topology_or_note(teacher: str | None) -> tuple[tuple | None, str]:
    """(the teacher's family and topology, or None; and a note when the teacher is not readable)."""
    if not teacher:
        return None, "the study does not name its teacher (user attr 'teacher'); architectures are genome ids"
    try:
        ref = resolve_teacher(teacher)
        return (ref.family, ref.topology()), ""
    except BlocksearchError as err:
        return None, f"{err}; architectures are genome ids"


def _trial_row(trial: optuna.trial.FrozenTrial, topo: tuple | None) -> dict:
    """One trial's row; ``topo``: (family, topology) of the teacher, to write its architecture in module names."""
    ua = trial.user_attrs
    genome = ua.get("genome")
    arch = genome or "?"
    if genome and topo is not None:
        family, topology = topo
        try:
            arch = family.architecture_diff(family.arch_from_id(genome), topology)
        except BlocksearchError:
            pass
    complete = trial.state == optuna.trial.TrialState.COMPLETE and trial.values is not None
    constraints = getattr(trial, "constraints", None) or {}
    constraints = constraints.values() if isinstance(constraints, dict) else constraints
    return dict(number=trial.number, state=trial.state.name, genome=genome, design=ua.get("design"),
                values=tuple(float(v) for v in trial.values) if complete else None,
                metrics=dict(ua.get("metrics") or {}), timings=dict(ua.get("timings") or {}),
                student_dir=ua.get("student_dir"), error=ua.get("error"), architecture=arch, rank=None,
                duration_s=trial.duration.total_seconds() if trial.duration else None,
                cached_from=ua.get("cached_from"), feasible=all(c <= 0 for c in constraints),
                pruned_at=ua.get("pruned_at"), skipped=bool(ua.get("skipped")),
                seed_scores=tuple(ua.get("seed_scores") or ()), from_study=ua.get("from_study"))


def _reference_trials(trials, ref_designs: dict) -> dict:
    """Each reference design's completed trial: the one tagged with its name, else one with its genome."""
    out = {}
    for name, genome in ref_designs.items():
        ranked = [t for t in trials if t.rank is not None]
        match = [t for t in ranked if t.design == name] or [t for t in ranked if t.genome == genome]
        if match:
            out[name] = match[0].number
    return out


def _is_searched(t: TrialPoint, ref_designs: dict) -> bool:
    return not t.design and t.genome not in set(ref_designs.values())


def _hypervolumes(points: dict, front, ref_trials: dict, sign, given):
    if not points:
        return None, None, None
    if given is not None:
        ref = tuple(s * float(v) for s, v in zip(sign, given))
        if len(ref) != len(sign):
            raise BlocksearchError(f"--hv-reference needs {len(sign)} values, one per objective; got {len(given)}")
    else:
        ref = tuple(REFERENCE * max(p[j] for p in points.values()) for j in range(len(sign)))
    raw_ref = tuple(s * r for s, r in zip(sign, ref))
    if any(r <= 0 for r in ref):
        return raw_ref, None, None  # the [0, r] box needs positive minimised objectives

    def volume(numbers) -> float:
        return hypervolume([tuple(v / r for v, r in zip(points[n], ref)) for n in numbers], (1.0,) * len(ref))

    ref_hv = volume(ref_trials.values()) if ref_trials else None
    return raw_ref, volume(front), ref_hv


def load_report(study_name: str, storage: str | None = None, reference_point=None) -> ParetoReport:
    """The report of the stored study ``study_name`` (default storage: the one ``blocksearch run`` uses)."""
    url = storage or default_storage()
    return build_report(open_study(study_name, url), url, reference_point)


def load_study_front(study_name: str, storage: str | None = None) -> tuple[TrialPoint, ...]:
    """The Pareto front of a finished study, in front order (by the first objective): each trial's genome id,
    design, objective values, metrics and ``student_dir``. A rung's front is that of ``<study>@<steps>``
    (``study.rung_name``); ``load_report`` has the rest (hypervolume, reference designs, dominations)."""
    report = load_report(study_name, storage)
    return tuple(report.trial(n) for n in report.front)
