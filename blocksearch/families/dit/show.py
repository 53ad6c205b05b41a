"""``blocksearch space show`` of a transformer space: groups, size, and the designs' exact params and MACs."""

from __future__ import annotations

import json
from pathlib import Path

from blocksearch.families.dit.cost import design_costs
from blocksearch.families.dit.genome import load_teacher_config, model_class_of, topology_of
from blocksearch.families.dit.pipeline import PIPELINES, TEXT_LEN
from blocksearch.objectives import fmt
from blocksearch.toy.assets import check_asset


def show_space(space, teacher: str, latent: int | None, resolve, toy_folders) -> int:
    """Print the space bound to ``teacher`` (a bundled toy in ``toy_folders``, a folder, a hub id or a shipped
    config's name; read from its config only, so ``resolve`` is unused)."""
    folder = toy_folders.get(teacher, Path(teacher))
    if teacher in toy_folders:
        check_asset(folder / "transformer" / "config.json")  # not built: the one-line error names the build
    config = load_teacher_config(str(folder) if teacher in toy_folders else teacher)
    text_len = _text_len(folder, config)
    bound = space.bind(topology_of(config))
    _print_groups(space, bound, teacher)
    latent = latent or config.get("sample_size", 128)  # Flux has none: 128 latents = 1024 px
    _print_designs(design_costs(bound, config, teacher, latent, text_len), latent)
    own = TEXT_LEN[bound.topology.model_class]
    text = f"{text_len or own} text tokens" if own else "a class label"
    print(f"\nMACs: one transformer forward at batch 1 ({text}), torch.utils.flop_counter (matmul, attention).")
    return 0


def _text_len(folder: Path, config) -> int | None:
    """A pipeline folder's own text length (its tokenizer's, at most the class's pipeline's); None: the class's."""
    own_len = TEXT_LEN[model_class_of(config)]
    tokenizer = folder / "tokenizer" / "tokenizer_config.json"
    if not (tokenizer.is_file() and own_len):
        return None
    return min(own_len, json.loads(tokenizer.read_text()).get("model_max_length", 10**9))


def _print_groups(space, bound, teacher: str) -> None:
    """The header, one row per block group (its mask rules and count of valid masks), and the space's size."""
    topo = bound.topology
    print(f"space {space.name} ({space.path}) on teacher {teacher} ({topo.model_class}, "
          f"{PIPELINES[topo.model_class]})\n")
    print(f"{'group':28s} {'blocks':>6s} {'kept':>7s} {'masks':>12s}  rules")
    rows = {row.name: row for row in space.groups}
    for group, n in topo.depths:
        mask = bound.mask(group)
        if mask is None:
            print(f"{group:28s} {n:6d} {'all':>7s} {1:12d}  not searched")
            continue
        print(f"{group:28s} {n:6d} {f'{mask.low}-{mask.high}':>7s} {sci(mask.count()):>12s}  {rows[group].describe()}")
    print(f"\ndistinct architectures: {bound.size}" + (f" (~{sci(bound.size)})" if bound.size >= 10**6 else "")
          + f"; named designs: {len(bound.named_designs())} (those keeping the teacher's or an earlier design's "
          "blocks count once)\n")


def sci(value: int) -> str:
    """An exact count, or 4 significant figures from a million up: 64839, 1.441e+17."""
    return f"{value:.4g}" if value >= 10**6 else str(value)


def _print_designs(rows, latent: int) -> None:
    """The teacher and each named design: params, MACs, and the published params where a paper gives them."""
    w = max(14, *(len(r.name) for r in rows))
    print(f"{'design':{w}s} {'genome':24s} {'params':>17s} {f'MACs @ {latent}x{latent}':>19s}  published (ours vs it)")
    base_p, base_m = rows[0].params, rows[0].macs
    for r in rows:
        pub = "" if r.published is None else (f"{fmt('params', r.published[0], 2)} "
                                              f"({r.paper_params / r.published[0] - 1:+.2%}) {r.published[1]}")
        print(f"{r.name:{w}s} {r.genome.id:24s} {fmt('params', r.params, 2):>9s} ({r.params / base_p:6.1%}) "
              f"{fmt('macs', r.macs, 1):>10s} ({r.macs / base_m:6.1%})  {pub}")
    if any(r.paper_params != r.params for r in rows):
        print("\nDiT counts its timestep and class embedders once; diffusers repeats them in every block. Counted as "
              "DiT does: " + ", ".join(f"{r.name} {fmt('params', r.paper_params, 1)}" for r in rows))
