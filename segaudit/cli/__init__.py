"""The ``segaudit`` command line: :func:`main` (the ``segaudit`` script), :func:`build_parser`, and one module per
command family (``train``, ``update``, ``attack``, ``leakage``, ``tradeoff``, ``inference``, ``audit``, ``report``,
``privacy``, ``info``) over the shared option groups of :mod:`segaudit.cli.options`."""
from __future__ import annotations

from .app import build_parser, main
from .attack import cmd_attack
from .audit import cmd_audit, cmd_demo, cmd_sweep
from .inference import cmd_infer
from .info import cmd_info
from .leakage import cmd_check_update, cmd_layers
from .options import default_threads
from .privacy import cmd_privacy
from .report import cmd_report
from .tradeoff import cmd_tradeoff
from .train import cmd_train
from .update import cmd_update

__all__ = ["build_parser", "cmd_attack", "cmd_audit", "cmd_check_update", "cmd_demo", "cmd_infer", "cmd_info",
           "cmd_layers", "cmd_privacy", "cmd_report", "cmd_sweep", "cmd_tradeoff", "cmd_train", "cmd_update",
           "default_threads", "main"]
