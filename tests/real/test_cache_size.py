"""The teacher cache at real size: the meta-device estimate equals a real cache file; disk or live
(--teacher-cache auto | disk | off) under a cap that the disk's free space also bounds."""

import shutil

import pytest
from safetensors.torch import load_file

from blocksearch.families.unet.family import FAMILY as UNET
from blocksearch.recipe.data import BatchStream
from blocksearch.recipe.distill import DistillConfig, prepare_teacher_cache
from blocksearch.errors import BlocksearchError
from blocksearch.recipe.teacher_cache import DISK_RESERVE, cache_bytes_per_step, cache_cap, cache_plan, open_cache
from blocksearch.families.unet.topology import architecture
from blocksearch.teachers import load_teacher


@pytest.mark.parametrize("dtype, dtype_bytes", [("fp32", 4), ("fp16", 2)])
def test_estimate_equals_the_bytes_of_a_cache_file(sd_folder, data_folder, tmp_path, dtype, dtype_bytes):
    teacher = load_teacher(str(sd_folder))
    stream = BatchStream(teacher.pipeline, str(data_folder), batch_size=3, seed=0, cache_dir=tmp_path, family=teacher.family)
    cache = open_cache("tiny-sd", teacher.unet, stream, 2, tmp_path, dtype=dtype, family=teacher.family)
    tensors = load_file(cache.path)
    real = sum(t.numel() * t.element_size() for t in tensors.values())
    latent = tensors["noisy"].shape[-1]
    tokens = teacher.pipeline.tokenizer.model_max_length
    assert latent == 8 and tokens == 77
    assert cache_bytes_per_step(teacher.unet.config, 3, latent, dtype_bytes, text_tokens=tokens, family=teacher.family) * 2 == real


def test_sd_v1_at_512px_on_the_meta_device():
    config = architecture("sd-v1").config
    per_step = cache_bytes_per_step(config, 16, 64, family=UNET)
    # hand count per image, surgery.kd_teacher_modules at 64x64 latents: down_blocks.0-3 320x32x32 + 640x16x16
    # + 2 x 1280x8x8, mid_block 1280x8x8, up_blocks.0-3 1280x16x16 + 1280x32x32 + 640x64x64 + 320x64x64,
    # down_blocks.2.attentions.1 1280x16x16, output 4x64x64 = 6,651,904 fp32 values; inputs 2 x 4x64x64 +
    # 77x768 fp32 + int64
    assert per_step == 16 * (6_651_904 * 4 + 2 * 16384 * 4 + 77 * 768 * 4 + 8)
    assert cache_bytes_per_step(config, 32, 64, family=UNET) == 2 * per_step
    assert cache_bytes_per_step(config, 16, 64, dtype_bytes=2, family=UNET) < per_step


def test_cache_plan():
    mode, why = cache_plan(2**20, 120, 2**30)
    assert mode == "disk" and "120 steps" in why and "fits" in why
    mode, why = cache_plan(531 * 2**20, 120, 4 * 2**30)
    assert mode == "live" and "62.23 GiB" in why and "4.00 GiB" in why


def _config(tmp_path, data_folder, **kw) -> DistillConfig:
    return DistillConfig(steps=2, batch_size=3, data=str(data_folder), cache_dir=str(tmp_path), **kw)


def test_auto_disk_off(sd_folder, data_folder, tmp_path):
    """auto: on disk where it fits, else live (no file written); disk: refused over the cap; off: live."""
    teacher = load_teacher(str(sd_folder))
    cache, why = prepare_teacher_cache(teacher, _config(tmp_path, data_folder))
    assert cache is not None and cache.path.is_file() and "fits" in why
    small = dict(cache_gb=cache.path.stat().st_size / 2 / 2**30)  # half the file: over the cap
    for files in (tmp_path / "teacher").glob("*.safetensors"):
        files.unlink()
    cache, why = prepare_teacher_cache(teacher, _config(tmp_path, data_folder, **small))
    assert cache is None and "over the cap, so the teacher runs live" in why
    assert not list((tmp_path / "teacher").glob("*.safetensors"))  # decided before any teacher forward
    with pytest.raises(BlocksearchError, match="--teacher-cache disk: teacher cache 2 steps .* is over the cap"):
        prepare_teacher_cache(teacher, _config(tmp_path, data_folder, teacher_cache="disk", **small))
    assert prepare_teacher_cache(teacher, _config(tmp_path, data_folder, teacher_cache="off"))[0] is None
    assert DistillConfig(teacher_cache=False).teacher_cache == "off"  # settings of earlier versions
    assert DistillConfig(teacher_cache=True).teacher_cache == "auto"


def test_the_disk_never_fills_up(tmp_path, monkeypatch):
    """The cap is the smaller of BLOCKSEARCH_CACHE_GB and the disk's free space (less a reserve)."""
    folder = tmp_path / "teacher"
    assert cache_cap(folder, 0.5) == (2**29, "BLOCKSEARCH_CACHE_GB")
    (folder / "old.safetensors").write_bytes(b"x" * 1000)  # the cache's own files are evicted first: they count
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 * 2**30, 0, DISK_RESERVE + 10))
    cap, what = cache_cap(folder, 4.0)
    assert cap == 1010 and "disk's free space" in what
    mode, why = cache_plan(531 * 2**20, 120, cap, what)
    assert mode == "live" and "disk's free space" in why
