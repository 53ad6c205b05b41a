"""The U-Net family's words for the report and the model card: what a Genome removes, in diffusers module names."""

from __future__ import annotations

from blocksearch.families.unet.genome import Genome, Topology

MID_TEXT = {"cross_attn": "resnet + cross-attention transformer + resnet", "resnet": "1 resnet (no attention)",
            "none": "removed"}


def architecture_diff(genome: Genome, topo: Topology) -> str:
    """What ``genome`` removes from the teacher, e.g. 'down_blocks.1: 1 of 2 layers; up_blocks.2: 2 of 3;
    mid_block removed; down_blocks.3/up_blocks.0 removed'."""
    n_t, parts = topo.n_stages, []
    for i, (k, d) in enumerate(zip(genome.layers, genome.depth)):
        down, up, big_k, big_d = f"down_blocks.{i}", f"up_blocks.{n_t - 1 - i}", topo.layers[i], topo.depth[i]
        if k != big_k:
            parts.append(f"{down}: {k} of {big_k} layers; {up}: {k + 1} of {big_k + 1}")
        if big_d and not d:
            parts.append(f"{down}/{up}: attention removed")
        elif not genome.up and not topo.up:
            if d != big_d:
                parts.append(f"{down}/{up}: transformer depth {d} of {big_d}")
        else:  # the up path has its own depths per layer (SSD-1B)
            if d != big_d:
                parts.append(f"{down}: transformer depth {d} of {big_d}")
            mine, big = genome.up_depths[i], topo.up_depths[i]
            if any(d != big[j if j < len(mine) - 1 else len(big) - 1] for j, d in enumerate(mine)):  # vs its source
                parts.append(f"{up}: transformer depths {_per_layer(genome.up_depths[i])} of "
                             f"{_per_layer(topo.up_depths[i])}")
    if genome.mid != topo.mid:
        parts.append("mid_block removed" if genome.mid == "none" else "mid_block: attention removed")
    if len(genome.layers) < n_t:
        parts.append(f"down_blocks.{n_t - 1}/up_blocks.0 removed")
    return "; ".join(parts) or "teacher (nothing removed)"


def architecture_table(genome: Genome, topo: Topology) -> list[tuple[str, str, str]]:
    """(teacher module, teacher's blocks, student's blocks) for every stage, down, mid and up."""
    n_t, n = topo.n_stages, len(genome.layers)

    def stage(layers: int, depth: int, per_layer: tuple[int, ...] = ()) -> str:
        if per_layer and len(set(per_layer)) > 1:
            return f"{layers} x (resnet + transformer), depths {_per_layer(per_layer)}"
        return f"{layers} x (resnet + transformer depth {depth})" if depth else f"{layers} x resnet"

    rows = []
    for i in range(n_t):
        kept = stage(genome.layers[i], genome.depth[i]) if i < n else "removed"
        rows.append((f"down_blocks.{i}", stage(topo.layers[i], topo.depth[i]), kept))
    rows.append(("mid_block", MID_TEXT[topo.mid], MID_TEXT[genome.mid]))
    for j in range(n_t):
        i = n_t - 1 - j  # the down stage this up stage is tied to by the skip connections
        ups = genome.up_depths[i] if i < n else ()
        kept = "removed" if i >= n else stage(genome.layers[i] + 1, ups[0] if ups else genome.depth[i], ups)
        if i < n and n < n_t:
            kept += f" (student up_blocks.{j - (n_t - n)})"
        big = topo.up_depths[i]
        rows.append((f"up_blocks.{j}", stage(topo.layers[i] + 1, big[0] if big else topo.depth[i], big), kept))
    return rows


def removed(genome: Genome, topo: Topology) -> dict[str, str]:
    """What the student removed, per teacher module (diffusers paths); modules kept whole are absent."""
    n_t, n, out = topo.n_stages, len(genome.layers), {}

    def stage(layers: int, kept: int, depth: int, kept_depth: int) -> str:
        parts = [f"{layers - kept} of {layers} layers"] if kept < layers else []
        if depth and not kept_depth:
            parts.append("attention")
        elif kept_depth < depth:
            parts.append(f"transformer depth {depth} -> {kept_depth}")
        return ", ".join(parts)

    for i in range(n_t):
        j = n_t - 1 - i  # the up stage tied to down stage i
        if i >= n:
            out[f"down_blocks.{i}"] = out[f"up_blocks.{j}"] = "the whole stage"
            continue
        out[f"down_blocks.{i}"] = stage(topo.layers[i], genome.layers[i], topo.depth[i], genome.depth[i])
        out[f"up_blocks.{j}"] = stage(topo.layers[i] + 1, genome.layers[i] + 1, topo.depth[i], genome.depth[i])
        if (genome.up or topo.up) and genome.depth[i] and genome.up_depths[i] != topo.up_depths[i]:
            kept = stage(topo.layers[i] + 1, genome.layers[i] + 1, 0, 0)
            depths = f"transformer depths {_per_layer(topo.up_depths[i])} -> {_per_layer(genome.up_depths[i])}"
            out[f"up_blocks.{j}"] = f"{kept}, {depths}" if kept else depths
    if genome.mid != topo.mid:
        out["mid_block"] = {"none": "the whole block", "resnet": "attention"}.get(
            genome.mid, f"{MID_TEXT[topo.mid]} -> {MID_TEXT[genome.mid]}")
    return {k: v for k, v in out.items() if v}


def _per_layer(depths: tuple[int, ...]) -> str:
    """Per-layer transformer depths as the report writes them: ``4/4/10``."""
    return "/".join(map(str, depths))
