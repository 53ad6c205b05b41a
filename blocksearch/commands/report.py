"""``blocksearch report``: (re)write a study's Pareto-front report, reports/<study>/ or ``-o``."""

from __future__ import annotations

from blocksearch.commands.common import DEFAULT_STUDY, STORAGE_HELP
from blocksearch.errors import BlocksearchError
from blocksearch.report.pareto import REFERENCE


def add_parser(verbs) -> None:
    """Register ``report``."""
    p = verbs.add_parser(
        "report", help="write the Pareto-front report of a study",
        description="Compute the Pareto front, hypervolume and dominance over the BK-SDM reference designs "
                    "of a study, and write reports/<study>/: index.html (interactive), pareto.png, trials.csv, "
                    "README.md.")
    p.add_argument("--study", default=DEFAULT_STUDY, help="study name (default: %(default)s)")
    p.add_argument("--storage", default=None, help=STORAGE_HELP)
    p.add_argument("-o", "--out", default=None, help="output folder (default: reports/<study>/)")
    p.add_argument("--hv-reference", default=None, metavar="V1,V2,...",
                   help="hypervolume reference point, one value per objective in its own units (default: "
                        f"{REFERENCE} x the worst completed value); fix it to compare studies")
    p.set_defaults(handler=main)


def main(args) -> int:
    """Write the report of ``--study``; print where it is."""
    from blocksearch.report.render import write_report

    ref = None
    if args.hv_reference:
        try:
            ref = tuple(float(v) for v in args.hv_reference.split(","))
        except ValueError:
            raise BlocksearchError(
                f"--hv-reference {args.hv_reference!r}: expected numbers separated by commas") from None
    folder = write_report(args.study, args.storage, args.out, ref)
    files = [f for f in ("README.md", "index.html", "pareto.png", "curves.png", "trials.csv") if (folder / f).exists()]
    print(f"report of study {args.study} written to {folder}/ ({', '.join(files)})")
    return 0
