"""The ``segaudit`` command line: thin sub-commands over the Python API.

Every bad input ends as one line ``error: <what to do>`` on stderr and exit code 2; Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import os
import random
import sys

import numpy as np
import torch

from ..errors import SegauditError
from ..io import check_replaceable
from .attack import add_attack_parser
from .audit import add_audit_parser, add_demo_parser, add_sweep_parser
from .inference import add_infer_parser
from .info import add_info_parser
from .leakage import add_check_update_parser, add_layers_parser
from .options import Parser, default_threads
from .privacy import add_privacy_parser
from .report import add_report_parser
from .tradeoff import add_tradeoff_parser
from .train import add_train_parser
from .update import add_update_parser

# the sub-commands, in the order ``segaudit --help`` lists them
COMMANDS = (add_train_parser, add_update_parser, add_attack_parser, add_layers_parser, add_check_update_parser,
            add_tradeoff_parser, add_infer_parser, add_audit_parser, add_sweep_parser, add_report_parser,
            add_demo_parser, add_privacy_parser, add_info_parser)

_INPUTS = ("data", "model", "image", "mask", "update", "config", "results")


def build_parser() -> argparse.ArgumentParser:
    """The ``segaudit`` parser: a sub-command per entry of :data:`COMMANDS`."""
    parser = Parser(prog="segaudit", description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add_parser in COMMANDS:
        add_parser(sub)
    return parser


def _protect_inputs(args) -> None:
    """``--force`` replaces ``--out``: refuse when that would delete one of this run's own inputs."""
    out = getattr(args, "out", None)
    if out and getattr(args, "force", False):
        check_replaceable(out, {key: getattr(args, key) for key in _INPUTS
                                if isinstance(getattr(args, key, None), str)})


def _set_threads_and_seed(args) -> None:
    """Pin torch's threads (``--threads``; results record them) and seed every generator with ``--seed``
    before anything is built, so the same command gives the same numbers."""
    seed = getattr(args, "seed", None)
    if "threads" in args:
        if args.threads is not None and args.threads < 1:
            raise SegauditError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads or default_threads())
    if isinstance(seed, int):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)


def main(argv: list[str] | None = None) -> int:
    """Run one ``segaudit`` command; its exit code."""
    try:
        args = build_parser().parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        _protect_inputs(args)
        _set_threads_and_seed(args)
        return int(args.func(args) or 0)
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except SegauditError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing half-written was kept", file=sys.stderr)
        return 130
    except Exception as e:  # an unexpected failure still gets one line; the traceback only on request
        if os.environ.get("SEGAUDIT_DEBUG"):
            raise
        msg = " ".join(str(e).split())[:300]
        print(f"error: unexpected {type(e).__name__}: {msg} (rerun with SEGAUDIT_DEBUG=1 for details)", file=sys.stderr)
        return 1
