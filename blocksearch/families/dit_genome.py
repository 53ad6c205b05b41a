"""Moved: blocksearch/families/dit/genome.py."""

from blocksearch.families.dit.genome import load_teacher_config, model_class_of, topology_of  # noqa: F401 - moved: blocksearch/families/dit/genome.py (callers outside this branch)
