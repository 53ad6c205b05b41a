"""The U-Net family's words for the report and the model card: what a Genome removes, in diffusers module names."""

from __future__ import annotations

from blocksearch.families.unet.genome import Genome, Topology

MID_TEXT = {"cross_attn": "resnet + cross-attention transformer + resnet", "resnet": "2 resnets (no attention)",
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
        elif d != big_d:
            parts.append(f"{down}/{up}: transformer depth {d} of {big_d}")
    if genome.mid != topo.mid:
        parts.append("mid_block removed" if genome.mid == "none" else "mid_block: attention removed")
    if len(genome.layers) < n_t:
        parts.append(f"down_blocks.{n_t - 1}/up_blocks.0 removed")
    return "; ".join(parts) or "teacher (nothing removed)"


def architecture_table(genome: Genome, topo: Topology) -> list[tuple[str, str, str]]:
    """(teacher module, teacher's blocks, student's blocks) for every stage, down, mid and up."""
    n_t, n = topo.n_stages, len(genome.layers)

    def stage(layers: int, depth: int) -> str:
        return f"{layers} x (resnet + transformer depth {depth})" if depth else f"{layers} x resnet"

    rows = []
    for i in range(n_t):
        kept = stage(genome.layers[i], genome.depth[i]) if i < n else "removed"
        rows.append((f"down_blocks.{i}", stage(topo.layers[i], topo.depth[i]), kept))
    rows.append(("mid_block", MID_TEXT[topo.mid], MID_TEXT[genome.mid]))
    for j in range(n_t):
        i = n_t - 1 - j  # the down stage this up stage is tied to by the skip connections
        kept = "removed" if i >= n else stage(genome.layers[i] + 1, genome.depth[i])
        if i < n and n < n_t:
            kept += f" (student up_blocks.{j - (n_t - n)})"
        rows.append((f"up_blocks.{j}", stage(topo.layers[i] + 1, topo.depth[i]), kept))
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
    if genome.mid != topo.mid:
        out["mid_block"] = {"none": "the whole block", "resnet": "attention"}.get(
            genome.mid, f"{MID_TEXT[topo.mid]} -> {MID_TEXT[genome.mid]}")
    return {k: v for k, v in out.items() if v}
