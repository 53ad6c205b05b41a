"""``blocksearch space show`` of a U-Net space: stages, size, and the designs' params and MACs against the teacher's."""

from __future__ import annotations

from blocksearch.errors import BlocksearchError
from blocksearch.families.cost import count_macs, count_params
from blocksearch.families.unet.surgery import build_student
from blocksearch.objectives import fmt


def show_space(space, teacher: str, latent: int | None, resolve, toy_folders) -> int:
    """Print the space bound to ``teacher`` (``resolve``: ``--teacher`` -> a ``TeacherRef``; ``toy_folders`` unused)."""
    ref = resolve(teacher)
    if ref.family.name != space.family:
        raise BlocksearchError(f"teacher {teacher} is a transformer; space {space.name} is for U-Nets (allowed: a "
                               f"U-Net teacher, or a transformer space such as dit_blocks)")
    denoiser = ref.load_denoiser("cpu")
    bound = space.bind(ref.family.topology(denoiser.config))
    print(f"space {space.name} ({space.path}) on teacher {teacher}\n")
    _print_stages(space, bound)
    latent = latent or denoiser.config["sample_size"]
    _print_designs(bound, denoiser, latent, ref.family)
    return 0


def _print_stages(space, bound) -> None:
    """One row per stage (its choices), the mid block's, and the count of distinct architectures."""
    print(f"{'stage':14s} {'tied to':12s} {'layers kept':14s} {'attention / depth':20s} removable")
    for stage, n, lc, dc in zip(space.stages, bound.topology.layers, bound.layer_choices, bound.depth_choices):
        kept = [str(d) for d in dc if d]
        depth = (f"keep (depth {'/'.join(kept)})" + (", drop" if 0 in dc else "")) if kept else "-"
        layers = ", ".join(map(str, lc)) + f" of {n}"
        print(f"{stage.name:14s} {stage.up:12s} {layers:14s} {depth:20s} {'yes' if stage.removable else 'no'}")
    print(f"{'mid_block':14s} {'':12s} {', '.join(space.mid_block)}")
    print(f"\ndistinct architectures: {len(bound)}\n")


def _print_designs(bound, teacher, latent: int, family) -> None:
    """The teacher and each named design: params and MACs, and their fractions of the teacher's."""
    base_p, base_m = count_params(teacher), count_macs(teacher, latent, family=family)
    print(f"{'design':12s} {'genome':28s} {'U-Net params':>19s} {f'MACs @ {latent}x{latent}':>20s}")
    rows = [("teacher", bound.teacher_genome, base_p, base_m)]
    for name, genome in bound.named_designs().items():
        unet = build_student(teacher, genome).unet
        rows.append((name, genome, count_params(unet), count_macs(unet, latent, family=family)))
    for name, genome, params, macs in rows:
        print(f"{name:12s} {genome.id:28s} {fmt('params', params, 1):>9s} ({params / base_p:6.1%}) "
              f"{fmt('macs', macs, 1):>9s} ({macs / base_m:6.1%})")
    print("\nMACs: one U-Net forward at batch 1, torch.utils.flop_counter (matmul, conv, attention).")
