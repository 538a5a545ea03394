"""``segaudit tradeoff``: the privacy-utility trade-off of defenses."""
from __future__ import annotations

import time

from ..data import load_dataset
from ..io import atomic_dir, check_out_dir, write_json
from ..models import model_spec
from ..report.plots import tradeoff_frontier
from ..tradeoff import TradeoffSettings, default_defenses, parse_defense_list, run_tradeoff
from .inputs import environment, model_for
from .options import add_client_mode, add_command, add_data_args, add_model_args, add_out_args, add_seed


def add_tradeoff_parser(sub) -> None:
    p = add_command(sub, "tradeoff", "privacy-utility trade-off of defenses: utility of defended training, "
                                     "adaptive-attack leakage, epsilon; writes tradeoff.json and frontier.png")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--defenses", metavar="LIST",
                   help="comma-separated defense specs; parameters after ':' joined by '/' "
                        "(default: none,noise:0.001,clip:1,prune:0.9,quant:2,dropout:0.5[,dp:eps=1,dp:eps=8])")
    p.add_argument("--batch-size", type=int, default=1, help="images in the attacked client's batch (default: 1)")
    p.add_argument("--train-steps", type=int, default=300,
                   help="simulated federated training steps per defense (default: 300)")
    p.add_argument("--train-batch-size", type=int, default=4, help="images per training step (default: 4)")
    p.add_argument("--lr", type=float, default=1e-3, help="server Adam learning rate (default: 1e-3)")
    p.add_argument("--attack-steps", type=int, default=200, help="inversion steps per defense (default: 200)")
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--images", type=int, default=3, help="attacked client batches per defense (default: 3)")
    add_client_mode(p)
    add_seed(p)
    add_out_args(p)
    p.set_defaults(func=cmd_tradeoff)


def cmd_tradeoff(args) -> int:
    out = check_out_dir(args.out, args.force)
    defenses = parse_defense_list(args.defenses if args.defenses is not None else default_defenses())
    settings = TradeoffSettings(size=args.size, batch_size=args.batch_size, train_steps=args.train_steps,
                                train_batch_size=args.train_batch_size, lr=args.lr, attack_steps=args.attack_steps,
                                restarts=args.restarts, client_mode=args.client_mode, images=args.images,
                                seed=args.seed)
    data = load_dataset(args.data, classes=args.classes)
    model = model_for(args, data)

    def show(row):
        if not args.quiet:
            eps = "-" if row["epsilon"] is None else f"{row['epsilon']:.3g}"
            print(f"{row['defense']:>22}  eps {eps:>6}  utility Dice {row['utility_dice']:.3f}  "
                  f"attack PSNR {_fmt(row['attack_psnr'])} dB (gain {_fmt(row['attack_psnr_gain'])})  "
                  f"mask Dice {_fmt(row['attack_mask_dice'])} (gain {_fmt(row['attack_mask_dice_gain'])})  "
                  f"({row['runtime_s']:.0f} s)", flush=True)

    start = time.perf_counter()
    rows = run_tradeoff(model, data, defenses, settings, progress=False, on_row=show)
    spec = model_spec(model)
    result = {"arch": spec["arch"], "encoder": spec["encoder"], "data": args.data, "model": args.model,
              "settings": settings.__dict__, "rows": rows, "runtime_s": time.perf_counter() - start,
              **environment()}
    with atomic_dir(out) as tmp:
        write_json(tmp / "tradeoff.json", result)
        tradeoff_frontier(rows, tmp / "frontier.png",
                          title=f"{spec['arch']} on {args.data}, {args.size} px, attacked batch {args.batch_size}")
    print(f"{len(rows)} defenses -> {out / 'tradeoff.json'}")
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"
