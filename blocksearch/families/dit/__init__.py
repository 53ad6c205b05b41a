"""Transformer denoisers (TinyFusion, arXiv 2412.01199; Flux.1-Lite): genome.py (DitGenome, DitTopology, shipped
configs), mask.py (a block group's valid masks: count, repair, enumeration), space.py (the YAML loader and the
bound space), pipeline.py (how the stock pipelines call and condition a transformer), surgery.py (student config,
weight map, KD pairs), importance.py (one-shot block importance), cost.py (``space show``'s sizes), family.py
(``FAMILY``: the family object)."""
