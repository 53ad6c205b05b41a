"""``blocksearch space show`` of a U-Net space: stages, size, and the designs' params and MACs against the teacher's."""

from __future__ import annotations

from blocksearch.errors import BlocksearchError
from blocksearch.families.cost import count_macs, count_params
from blocksearch.objectives import fmt


def show_space(space, teacher: str, latent: int | None, resolve, toy_folders) -> int:
    """Print the space bound to ``teacher`` (``resolve``: ``--teacher`` -> a ``TeacherRef``; ``toy_folders`` unused)."""
    ref = resolve(teacher)
    if ref.family.name != space.family:
        raise BlocksearchError(f"teacher {teacher} is a {ref.family.name} teacher; space {space.name} is for the "
                               f"{space.family} family (allowed: a {space.family} teacher, or a {ref.family.name} space)")
    denoiser = ref.load_denoiser("cpu")
    bound = space.bind(ref.family.topology(denoiser.config))
    print(f"space {space.name} ({space.path}) on teacher {teacher}\n")
    _print_stages(space, bound)
    latent = latent or denoiser.config["sample_size"]
    _print_designs(bound, denoiser, latent, ref.family)
    return 0


def _print_stages(space, bound) -> None:
    """One row per stage (its choices, the up path's where the row gives them), the mid block's, and the count of
    distinct architectures."""
    print(f"{'stage':14s} {'tied to':12s} {'layers kept':14s} {'attention / depth':32s} {'removable':9s} up path")
    for stage, n, lc, dc, uc in zip(space.stages, bound.topology.layers, bound.layer_choices, bound.depth_choices,
                                    bound.up_choices):
        kept = [str(d) for d in dc if d]
        depth = (f"keep (depth {'/'.join(kept)})" + (", drop" if 0 in dc else "")) if kept else "-"
        layers = ", ".join(map(str, lc)) + f" of {n}"
        up = ", ".join(c.replace(".", "/") for c in uc) if len(uc) > 1 else ""
        print(f"{stage.name:14s} {stage.up:12s} {layers:14s} {depth:32s} {'yes' if stage.removable else 'no':9s} {up}")
    print(f"{'mid_block':14s} {'':12s} {', '.join(space.mid_block)}")
    print(f"\ndistinct architectures: {len(bound)}\n")


def _print_designs(bound, teacher, latent: int, family) -> None:
    """The teacher and each named design: params and MACs (4 significant figures), their fractions of the
    teacher's, and the published U-Net's count where the design names one (``published``)."""
    base_p, base_m = count_params(teacher), count_macs(teacher, latent, family=family)
    width = max([12] + [len(g.id) for g in bound.named_designs().values()])
    print(f"{'design':12s} {'genome':{width}s} {'U-Net params':>19s} {f'MACs @ {latent}x{latent}':>20s}  "
          f"published vs ours")
    rows = [("teacher", bound.teacher_genome, base_p, base_m)]
    for name, genome in bound.named_designs().items():
        unet = family.build_student(teacher, genome).denoiser
        rows.append((name, genome, count_params(unet), count_macs(unet, latent, family=family)))
    for name, genome, params, macs in rows:
        published = bound.space.designs.get(name, {}).get("published")
        versus = f"  {published:,} vs ours {params:,} ({params / published - 1:+.3%})" if published else ""
        print(f"{name:12s} {genome.id:{width}s} {fmt('params', params, sig=4):>9s} ({params / base_p:6.1%}) "
              f"{fmt('macs', macs, sig=4):>9s} ({macs / base_m:6.1%}){versus}")
    print("\nMACs: one U-Net forward at batch 1, torch.utils.flop_counter (matmul, conv, attention).")
