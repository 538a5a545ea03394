"""``segaudit infer``: what a server infers from updates without rebuilding images."""
from __future__ import annotations

from ..attacks.inference import INFERENCE, run_inference
from ..data import load_dataset
from ..defenses import parse_defense
from ..io import atomic_dir, check_out_dir, write_json
from ..report.plots import roc_plot
from .inputs import environment, model_for
from .options import (
    add_command,
    add_data_args,
    add_model_args,
    add_out_args,
    add_protocol_args,
    add_seed,
    client_protocol,
)


def add_infer_parser(sub) -> None:
    p = add_command(sub, "infer", "what a server infers from updates without rebuilding images: "
                                  "composition, property, membership")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--attack", choices=INFERENCE.available(), default="composition")
    p.add_argument("--property", metavar="SPEC",
                   help="CLASS>X (the batch's share of CLASS exceeds X), any:CLASS>X or present:CLASS (some image)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--updates", type=int, default=200, help="target updates to attack (default: 200)")
    p.add_argument("--shadow-updates", type=int, help="updates the attacker simulates to fit (default: --updates)")
    p.add_argument("--crops-per-image", type=int, default=16, help="random crops per image in the client pool")
    add_protocol_args(p)
    p.add_argument("--defense", default="none", metavar="SPEC", help="a defense the clients apply, e.g. noise:0.1")
    add_seed(p)
    add_out_args(p)
    p.set_defaults(func=cmd_infer)


def cmd_infer(args) -> int:
    out = check_out_dir(args.out, args.force)
    data = load_dataset(args.data, classes=args.classes)
    model = model_for(args, data)
    result = run_inference(model, data, args.attack, prop=args.property, batch_size=args.batch_size,
                           updates=args.updates, shadow_updates=args.shadow_updates, size=args.size,
                           crops_per_image=args.crops_per_image, defense=parse_defense(args.defense),
                           seed=args.seed, show_progress=not args.quiet, protocol=client_protocol(args))
    with atomic_dir(out) as tmp:
        write_json(tmp / "result.json", {**result.summary(), **environment()})
        if result.auc is not None:
            roc_plot(result.labels, result.scores, tmp / "roc.png",
                     title=f"{args.attack} ({result.property or 'membership'}), batch {args.batch_size}")
    shown = [f"{k} {getattr(result, k):.3f}" for k in ("auc", "tpr_at_1pct_fpr", "composition_mae")
             if getattr(result, k) is not None]
    print(f"{args.attack}, batch {args.batch_size}, {args.updates} updates: {', '.join(shown)} "
          f"({result.runtime_s:.0f} s) -> {out}")
    return 0
