"""The transformer family's weight map as data: every student tensor -> the teacher tensor surgery initialises it
from (block i of a group <- the kept teacher block, every other tensor by name; SD3's derived ``norm1_context`` of
an inner last block maps to the teacher tensor it is computed from). Built on the meta device: no weights."""

from __future__ import annotations

import diffusers
import torch

from blocksearch.families.dit.genome import DitGenome, topology_of
from blocksearch.families.dit.surgery import check_fits, student_config, teacher_key


def weight_map(teacher_config, genome: DitGenome) -> dict[str, str]:
    """Student tensor -> teacher tensor (diffusers state-dict names) for every tensor of the student."""
    topo = topology_of(teacher_config)
    check_fits(genome, topo)
    with torch.device("meta"):
        keys = getattr(diffusers, topo.model_class).from_config(student_config(teacher_config, genome)).state_dict()
    return {key: teacher_key(key, genome) for key in keys}
