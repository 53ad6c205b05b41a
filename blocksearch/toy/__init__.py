"""The toy world, teacher and judge: blocksearch's whole job on a CPU with no network.

`load_toy_teacher()` / `load_judge()` read the bundled assets (blocksearch/toy/assets/);
`blocksearch toy build` remakes them. See DESIGN.md, "The toy teacher".
"""

from blocksearch.toy.assets import ToyAssetError, load_judge, load_toy_teacher
from blocksearch.toy.judge import judge_features, text_alignment, toy_fid
from blocksearch.toy.sample import generate
from blocksearch.toy.world import heldout_prompts, real_images, sample_batch, validate_prompt

__all__ = [
    "ToyAssetError", "generate", "heldout_prompts", "judge_features",
    "load_judge", "load_toy_teacher", "real_images", "sample_batch", "text_alignment", "toy_fid",
    "validate_prompt",
]
