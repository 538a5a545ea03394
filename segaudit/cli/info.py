"""``segaudit info``: what is available (architectures, attacks, defenses, bundled datasets)."""
from __future__ import annotations

from ..attacks import ATTACKS
from ..attacks.inference import INFERENCE
from ..data import BUNDLED
from ..defenses import DEFENSES
from ..models import available_archs
from .options import add_command


def add_info_parser(sub) -> None:
    p = add_command(sub, "info", "list architectures, attacks, defenses and bundled datasets", computes=False)
    p.set_defaults(func=cmd_info)


def cmd_info(args) -> int:
    for kind, names in available_archs().items():
        print(f"{kind} architectures: {', '.join(names)}")
    print(f"inversion attacks: {', '.join(ATTACKS.available())}")
    print(f"inference attacks: {', '.join(INFERENCE.available())}")
    print(f"defenses: {', '.join(DEFENSES.available())} (e.g. noise:0.01, dp:eps=8)")
    print(f"bundled datasets: {', '.join(sorted(BUNDLED))}")
    return 0
