"""``blocksearch space list | show``: the bundled search spaces, and one space as a table with its named designs'
params and MACs against the teacher's. Two sub-verbs, each its own handler (``cmd_space_list``, ``cmd_space_show``)."""

from __future__ import annotations

import json
from pathlib import Path

from blocksearch.commands.common import TEACHER_HELP
from blocksearch.errors import BlocksearchError
from blocksearch.families import dit_genome
from blocksearch.objectives import fmt
from blocksearch.space import load_space, space_files


def add_parser(verbs) -> None:
    """Register ``space show`` and ``space list``, each with its own handler."""
    space = verbs.add_parser("space", help="inspect search spaces",
                             description="Inspect the search spaces in search_spaces/.")
    sub = space.add_subparsers(title="space commands", metavar="<space command>")
    show = sub.add_parser(
        "show", help="print a space, its size, and its named designs' params and MACs",
        description="Print the space as a table, its number of distinct architectures, and each "
                    "named design's denoiser params and MACs against the teacher's.")
    show.add_argument("space", help="space name (file stem in search_spaces/) or a .yaml path")
    show.add_argument("--teacher", default=None,
                      help=TEACHER_HELP + "; for a transformer space (family: dit, e.g. dit_blocks): pixart-sigma "
                           "| sd3-medium | flux-dev | dit-xl (shipped configs, meta device, no download) or a "
                           "diffusers transformer folder (default: the space's reference architecture)")
    show.add_argument("--latent", type=int, default=None,
                      help="latent size for MACs (default: the teacher's sample_size; Flux: 128, i.e. 1024 px)")
    show.set_defaults(handler=cmd_space_show)
    lst = sub.add_parser("list", help="list the bundled spaces",
                         description="Print each bundled space's name, its reference teacher and its file.")
    lst.set_defaults(handler=cmd_space_list)


def cmd_space_list(args) -> int:
    """``space list``: one line per bundled space."""
    for path in space_files():
        space = load_space(str(path))
        print(f"{space.name:24s} teacher {space.teacher:8s} {path}")
    return 0


def cmd_space_show(args) -> int:
    """``space show`` of a U-Net space: stages, size, and the designs' params and MACs."""
    from blocksearch.families.unet import build_student
    from blocksearch.recipe.cost import count_macs, count_params
    from blocksearch.teachers import load_teacher_unet, resolve_teacher, topology_of

    space = load_space(args.space)
    if space.family == "dit":
        return show_dit_space(space, args)
    teacher_name = args.teacher or space.teacher
    if resolve_teacher(teacher_name).family_name != "unet":
        raise BlocksearchError(f"teacher {teacher_name} is a transformer; space {space.name} is for U-Nets (allowed: a "
                               f"U-Net teacher, or a transformer space such as dit_blocks)")
    teacher = load_teacher_unet(teacher_name, device="cpu")
    bound = space.bind(topology_of(teacher.config))
    print(f"space {space.name} ({space.path}) on teacher {teacher_name}\n")
    print(f"{'stage':14s} {'tied to':12s} {'layers kept':14s} {'attention / depth':20s} removable")
    for stage, n, lc, dc in zip(space.stages, bound.topology.layers, bound.layer_choices,
                                bound.depth_choices):
        kept = [str(d) for d in dc if d]
        depth = (f"keep (depth {'/'.join(kept)})" + (", drop" if 0 in dc else "")) if kept else "-"
        layers = ", ".join(map(str, lc)) + f" of {n}"
        print(f"{stage.name:14s} {stage.up:12s} {layers:14s} {depth:20s} {'yes' if stage.removable else 'no'}")
    print(f"{'mid_block':14s} {'':12s} {', '.join(space.mid_block)}")
    print(f"\ndistinct architectures: {len(bound)}\n")
    latent = args.latent or teacher.config["sample_size"]
    base_p, base_m = count_params(teacher), count_macs(teacher, latent)
    print(f"{'design':12s} {'genome':28s} {'U-Net params':>19s} {f'MACs @ {latent}x{latent}':>20s}")
    rows = [("teacher", bound.teacher_genome, base_p, base_m)]
    for name, genome in bound.named_designs().items():
        unet = build_student(teacher, genome).unet
        rows.append((name, genome, count_params(unet), count_macs(unet, latent)))
    for name, genome, params, macs in rows:
        print(f"{name:12s} {genome.id:28s} {fmt('params', params, 1):>9s} ({params / base_p:6.1%}) "
              f"{fmt('macs', macs, 1):>9s} ({macs / base_m:6.1%})")
    print("\nMACs: one U-Net forward at batch 1, torch.utils.flop_counter (matmul, conv, attention).")
    return 0


def show_dit_space(space, args) -> int:
    """``space show`` of a transformer space (families/dit.py): groups, size, and the designs' exact params."""
    from blocksearch.families.dit import PIPELINES, TEXT_LEN, design_costs
    from blocksearch.teachers import TOY_TEACHERS
    from blocksearch.toy.assets import check_asset

    teacher_name = args.teacher or space.teacher
    folder = TOY_TEACHERS.get(teacher_name, Path(teacher_name))
    if teacher_name in TOY_TEACHERS:
        check_asset(folder / "transformer" / "config.json")  # not built: the one-line error names the build
    config = dit_genome.load_teacher_config(str(folder) if teacher_name in TOY_TEACHERS else teacher_name)
    tokenizer = folder / "tokenizer" / "tokenizer_config.json"  # a pipeline folder: its own text length
    own_len = TEXT_LEN[dit_genome.model_class_of(config)]
    text_len = (min(own_len, json.loads(tokenizer.read_text()).get("model_max_length", 10**9))
                if tokenizer.is_file() and own_len else None)
    bound = space.bind(dit_genome.topology_of(config))
    topo = bound.topology
    print(f"space {space.name} ({space.path}) on teacher {teacher_name} ({topo.model_class}, "
          f"{PIPELINES[topo.model_class]})\n")
    print(f"{'group':28s} {'blocks':>6s}  choices (patterns keeping the same blocks count once)")
    for group, n in topo.depths:
        choices = [c for c, _ in dict(bound.options).get(group, (("all (not searched)", None),))]
        print(f"{group:28s} {n:6d}  {', '.join(choices)}")
    print(f"\ndistinct architectures: {len(bound)}\n")
    latent = args.latent or config.get("sample_size", 128)  # Flux has none: 128 latents = 1024 px
    rows = design_costs(bound, config, teacher_name, latent, text_len)
    print(f"{'design':14s} {'genome':24s} {'params':>17s} {f'MACs @ {latent}x{latent}':>19s}  published (ours vs it)")
    base_p, base_m = rows[0].params, rows[0].macs
    for r in rows:
        pub = "" if r.published is None else (f"{fmt('params', r.published[0], 2)} "
                                              f"({r.paper_params / r.published[0] - 1:+.2%}) {r.published[1]}")
        print(f"{r.name:14s} {r.genome.id:24s} {fmt('params', r.params, 2):>9s} ({r.params / base_p:6.1%}) "
              f"{fmt('macs', r.macs, 1):>10s} ({r.macs / base_m:6.1%})  {pub}")
    if any(r.paper_params != r.params for r in rows):
        print("\nDiT counts its timestep and class embedders once; diffusers repeats them in every block. Counted as "
              "DiT does: " + ", ".join(f"{r.name} {fmt('params', r.paper_params, 1)}" for r in rows))
    text = f"{text_len or TEXT_LEN[topo.model_class]} text tokens" if TEXT_LEN[topo.model_class] else "a class label"
    print(f"\nMACs: one transformer forward at batch 1 ({text}), torch.utils.flop_counter (matmul, attention).")
    return 0
