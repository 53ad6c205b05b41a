"""SD's U-Net family (BK-SDM, arXiv 2305.15798): genome.py (Genome, Topology), space.py (the YAML loader and the
bound space), topology.py (the teacher's topology, published configs, forward inputs), surgery.py (student config,
weight map, KD pairs), words.py (the report's words), family.py (``FAMILY``: the family object)."""

from importlib import import_module

# moved: blocksearch/families/unet/{surgery,words,family}.py (callers outside this branch import them from here)
_MOVED = {"Student": "surgery", "build_student": "surgery", "load_student": "surgery", "student_config": "surgery",
          "teacher_key": "surgery", "kd_pairs": "surgery", "kd_teacher_modules": "surgery",
          "MID_TEXT": "words", "architecture_diff": "words", "architecture_table": "words", "removed": "words",
          "FAMILY": "family"}


def __getattr__(name: str):
    """The moved names, imported on first use (PEP 562): the torch-free genome and space stay light."""
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_MOVED[name]}"), name)
