"""The U-Net family's weight map as data: every student tensor -> the teacher tensor surgery initialises it from.

The same derivation as ``surgery.teacher_key`` (BK-SDM, arXiv 2305.15798, Sec. 3.1, derived from the Genome rather
than tabulated per design), over the student's full state dict built on the meta device (no weights, no memory):
``adapt/blockmap.py`` turns it into the ``block_map.json`` a runtime or a LoRA loader reads.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from blocksearch.families.unet.genome import Genome
from blocksearch.families.unet.surgery import _check_fits, student_config, teacher_key
from blocksearch.families.unet.topology import topology_of


def weight_map(teacher_config, genome: Genome) -> dict[str, str]:
    """Student tensor -> teacher tensor (diffusers state-dict names) for every tensor of the student."""
    topo = topology_of(teacher_config)
    _check_fits(genome, topo)
    with torch.device("meta"):
        keys = UNet2DConditionModel.from_config(student_config(teacher_config, genome)).state_dict()
    return {key: teacher_key(key, genome, topo) for key in keys}
