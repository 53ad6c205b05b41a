"""``blocksearch space list | show``: the bundled search spaces, and one space as a table with its named designs'
params and MACs against the teacher's. Two sub-verbs, each its own handler (``cmd_space_list``, ``cmd_space_show``)."""

from __future__ import annotations

from blocksearch.commands.common import TEACHER_HELP
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
    """``space show``: the space's family prints its table (``Family.show_space``: families/<family>/show.py)."""
    space = load_space(args.space)  # a bad space: one line, before torch loads
    from blocksearch.teachers import show_space  # torch: teachers, cost counting, the families' student builders

    return show_space(space, args.teacher, args.latent)
