"""blocksearch: find small, fast Stable Diffusion U-Nets by block removal and distillation.

BK-SDM (Kim et al., arXiv 2305.15798) as a search: space -> surgery -> distill -> evaluate -> search
-> report -> export.

The Python API, for notebooks (the same functions the CLI runs)::

    from blocksearch import DistillConfig, build_student, distill_student, load_teacher, resolve_design
    teacher = load_teacher("toy")
    genome, _ = resolve_design(teacher.unet, "bk_small")
    student = build_student(teacher.unet, genome)
    result = distill_student(teacher, student, DistillConfig(steps=120))

The names load lazily (PEP 562 module ``__getattr__``): ``import blocksearch`` and ``blocksearch --help`` do
not import torch. ``distill`` and ``evaluate`` are the submodules' names, so their functions are exported as
``distill_student`` and ``evaluate_student`` (a package attribute cannot be both a module and a function).
"""

from __future__ import annotations

import tomllib
from importlib import import_module, metadata
from pathlib import Path

# exported name -> (module, attribute in it)
_API = {
    "BlocksearchError": ("blocksearch.errors", "BlocksearchError"),
    # the search space and its architectures
    "load_space": ("blocksearch.space", "load_space"),
    "Genome": ("blocksearch.families.unet.genome", "Genome"),
    # the teacher, a design of the space, and surgery
    "load_teacher": ("blocksearch.teachers", "load_teacher"),
    "resolve_design": ("blocksearch.recipe.distill", "resolve_design"),
    "build_student": ("blocksearch.families.unet.surgery", "build_student"),
    "load_student": ("blocksearch.families.unet.surgery", "load_student"),
    # knowledge distillation and evaluation
    "DistillConfig": ("blocksearch.recipe.distill", "DistillConfig"),
    "distill_student": ("blocksearch.recipe.distill", "distill"),
    "EvalConfig": ("blocksearch.recipe.evaluate", "EvalConfig"),
    "evaluate_student": ("blocksearch.recipe.evaluate", "evaluate"),
    # a finished study: its front, its report, its students
    "load_study_front": ("blocksearch.report.compute", "load_study_front"),
    "load_report": ("blocksearch.report.compute", "load_report"),
    "export_study": ("blocksearch.report.export", "export_study"),
}
__all__ = ["__version__", *_API]


def _version() -> str:
    """The installed distribution's version; a checkout that is not installed reads pyproject.toml's."""
    try:
        return metadata.version("blocksearch")
    except metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        return tomllib.loads(pyproject.read_text())["project"]["version"]


def __getattr__(name: str):
    if name == "__version__":
        value = _version()
    elif name in _API:
        module, attribute = _API[name]
        value = getattr(import_module(module), attribute)
    else:
        raise AttributeError(f"module 'blocksearch' has no attribute {name!r}")
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
