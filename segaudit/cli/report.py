"""``segaudit report``: the self-contained HTML report of an audit's results."""
from __future__ import annotations

from pathlib import Path

from ..errors import SegauditError
from ..io import check_out_file
from ..report.html import read_results, write_html
from .options import add_command


def add_report_parser(sub) -> None:
    p = add_command(sub, "report", "write the self-contained HTML report of an audit (results.json or a .sqlite "
                                   "results store)", computes=False)
    p.add_argument("results", metavar="RESULTS", help="results.json (or its folder), or a .sqlite results store")
    p.add_argument("--out", metavar="FILE", help="output .html file (default: report.html beside RESULTS)")
    p.add_argument("--redact", action="store_true", help="leave out the reconstruction images (they show patient data)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    results, base = read_results(args.results)
    out = check_out_file(args.out or base / "report.html", args.force, ".html")
    if out.resolve() == Path(args.results).resolve():
        raise SegauditError(f"--out {out} is the results file itself; choose another .html file")
    path = write_html(results, out, base_dir=base, redact=args.redact)
    print(f"report{' (redacted)' if args.redact else ''} -> {path}")
    return 0
