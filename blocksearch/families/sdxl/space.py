"""The SDXL family's architectures and space files: the U-Net family's genome and YAML rows (families/unet/), under
this family's name. Torch-free: the space loader and the CLI import it."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from blocksearch.families.unet import space as unet_space
from blocksearch.families.unet.genome import Genome


class SdxlGenome(Genome):
    """A U-Net Genome (kept layers, transformer depths down and up, mid block) of an SDXL teacher."""

    family: ClassVar[str] = "sdxl"


def load(path: Path, raw: dict):
    """A ``family: sdxl`` space file: the U-Net family's rows and designs, whose genomes are ``SdxlGenome``."""
    return unet_space.load(path, raw, family="sdxl", genome=SdxlGenome)
