"""Transformer denoisers (TinyFusion, arXiv 2412.01199; Flux.1-Lite): genome.py (DitGenome, DitTopology, shipped
configs), space.py (the YAML loader and the bound space), pipeline.py (how the stock pipelines call and condition a
transformer), surgery.py (student config, weight map, KD pairs), cost.py (``space show``'s sizes), family.py
(``FAMILY``: the family object)."""

from importlib import import_module

# moved: blocksearch/families/dit/{surgery,pipeline,cost,family}.py (callers outside this branch import them here)
_MOVED = {"DitStudent": "surgery", "build_student": "surgery", "student_config": "surgery", "kd_pairs": "surgery",
          "kd_teacher_modules": "surgery", "model_topology": "surgery", "block_feature": "surgery",
          "describe": "surgery", "check_fits": "surgery", "teacher_key": "surgery", "final_module": "surgery",
          "PIPELINES": "pipeline", "TEXT_LEN": "pipeline", "forward_inputs": "pipeline",
          "meta_model": "cost", "count_params": "cost", "paper_params": "cost", "count_macs": "cost",
          "DesignCost": "cost", "design_costs": "cost", "FAMILY": "family"}


def __getattr__(name: str):
    """The moved names, imported on first use (PEP 562): the torch-free genome and space stay light."""
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_MOVED[name]}"), name)
