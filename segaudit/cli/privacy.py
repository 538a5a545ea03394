"""``segaudit privacy epsilon|noise``: DP-SGD accounting with Opacus."""
from __future__ import annotations

import json

from ..privacy import ACCOUNTANTS, epsilon, noise_for_epsilon
from .options import Parser, add_command, quiet_option

QUESTIONS = {"epsilon": "epsilon of T noisy steps at sample rate q; the last line is the number",
         "noise": "the noise multiplier sigma that spends a target epsilon; the last line is the number"}


def add_privacy_parser(sub) -> None:
    p = add_command(sub, "privacy", "privacy accounting with Opacus: epsilon of a DP-SGD run, or the noise for a "
                                    "target epsilon", computes=False)
    what = p.add_subparsers(dest="what", required=True, parser_class=Parser)
    for name, help in QUESTIONS.items():
        q = what.add_parser(name, help=help, description=help, parents=[quiet_option()])
        if name == "epsilon":
            q.add_argument("--noise-multiplier", type=float, required=True, help="sigma")
        else:
            q.add_argument("--target-epsilon", type=float, required=True, help="epsilon to spend")
        q.add_argument("--sample-rate", type=float, required=True, help="q = batch size / dataset size, in (0, 1]")
        q.add_argument("--steps", type=int, required=True, help="T, the number of noisy steps")
        q.add_argument("--delta", type=float, default=1e-5, help="delta (default: 1e-5)")
        q.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp", help="default: rdp")
        q.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_privacy)


def cmd_privacy(args) -> int:
    if args.what == "epsilon":
        value = epsilon(args.noise_multiplier, args.sample_rate, args.steps, args.delta, args.accountant)
        key, label = "epsilon", f"epsilon ({args.accountant}) of sigma {args.noise_multiplier:g}"
        record = {"noise_multiplier": args.noise_multiplier}
    else:
        value = noise_for_epsilon(args.target_epsilon, args.sample_rate, args.steps, args.delta, args.accountant)
        key, label = "noise_multiplier", f"sigma ({args.accountant}) for epsilon {args.target_epsilon:g}"
        record = {"target_epsilon": args.target_epsilon}
    record.update(sample_rate=args.sample_rate, steps=args.steps, delta=args.delta, accountant=args.accountant)
    if args.json:
        print(json.dumps({key: value, **record}))
    else:
        print(f"{label}, q {args.sample_rate:g}, {args.steps} steps, delta {args.delta:g}:")
        print(f"{value:.8g}")
    return 0
