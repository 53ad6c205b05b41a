"""blocksearch command line: ``blocksearch <verb> [options]``; ``blocksearch <verb> --help`` for each.

Bad input ends with a one-line ``blocksearch: error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from blocksearch.errors import BlocksearchError

TEACHER_HELP = ("teacher: toy (bundled default), sd-v1 | sd-v2 | sdxl (published architectures on the "
                "meta device: no weights), a local diffusers folder, or a hub id in the local HF cache")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except BlocksearchError as err:
        print(f"blocksearch: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("blocksearch: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="blocksearch",
        description="Find small, fast Stable Diffusion U-Nets by removing blocks and distilling "
                    "(BK-SDM, arXiv 2305.15798, as a multi-objective search).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO)")
    verbs = parser.add_subparsers(title="commands", metavar="<command>")
    _add_space(verbs)
    return parser


# -- blocksearch space ----------------------------------------------------------------------------
def _add_space(verbs) -> None:
    space = verbs.add_parser("space", help="inspect search spaces",
                             description="Inspect the search spaces in search_spaces/.")
    sub = space.add_subparsers(title="space commands", metavar="<space command>")
    show = sub.add_parser(
        "show", help="print a space, its size, and its named designs' params and MACs",
        description="Print the space as a table, its number of distinct architectures, and each "
                    "named design's U-Net params and MACs against the teacher's.")
    show.add_argument("space", help="space name (file stem in search_spaces/) or a .yaml path")
    show.add_argument("--teacher", default=None,
                      help=TEACHER_HELP + " (default: the space's reference architecture)")
    show.add_argument("--latent", type=int, default=None,
                      help="latent size for MACs (default: the teacher's sample_size)")
    show.set_defaults(handler=_space_show)
    lst = sub.add_parser("list", help="list the bundled spaces")
    lst.set_defaults(handler=_space_list)


def _space_list(args) -> int:
    from blocksearch.space import SPACES_DIR, load_space

    for path in sorted(SPACES_DIR.glob("*.yaml")):
        space = load_space(str(path))
        print(f"{space.name:24s} teacher {space.teacher:8s} {path}")
    return 0


def _space_show(args) -> int:
    from blocksearch.cost import count_macs, count_params
    from blocksearch.space import load_space
    from blocksearch.surgery import build_student
    from blocksearch.teachers import load_teacher_unet, topology_of

    space = load_space(args.space)
    teacher_name = args.teacher or space.teacher
    teacher = load_teacher_unet(teacher_name, device="cpu")
    bound = space.bind(topology_of(teacher.config))
    print(f"space {space.name} ({space.path}) on teacher {teacher_name}\n")
    print(f"{'stage':14s} {'tied to':12s} {'layers kept':14s} {'attention / depth':20s} removable")
    for stage, n, lc, dc in zip(space.stages, bound.topology.layers, bound.layer_choices,
                                bound.depth_choices):
        depth = ", ".join(f"keep (depth {d})" for d in dc if d) + (", drop" if 0 in dc else "") \
            if any(dc) else "-"
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
        print(f"{name:12s} {genome.id:28s} {_fmt(params):>9s} ({params / base_p:6.1%}) "
              f"{_fmt(macs, 'G'):>9s} ({macs / base_m:6.1%})")
    print("\nMACs: one U-Net forward at batch 1, torch.utils.flop_counter (matmul, conv, attention).")
    return 0


def _fmt(n: float, billion: str = "B") -> str:
    for unit, scale in ((billion, 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(int(n))


if __name__ == "__main__":
    sys.exit(main())
