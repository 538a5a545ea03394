"""``segaudit train``: train a model on CPU (optionally with DP-SGD) and save it."""
from __future__ import annotations

from ..data import load_dataset
from ..errors import SegauditError
from ..io import atomic_dir, check_out_dir, write_json
from ..models import save_model
from ..privacy import ACCOUNTANTS, DPSpec, train_private
from ..train import train_model
from .inputs import environment, model_for
from .options import add_command, add_data_args, add_out_args, add_seed


def add_train_parser(sub) -> None:
    p = add_command(sub, "train", "train a segmentation model on CPU and save it (save_pretrained)")
    p.add_argument("--arch", default="unet")
    p.add_argument("--encoder", help="smp encoder (default: resnet18)")
    add_data_args(p)
    p.add_argument("--steps", type=int, default=300, help="optimiser steps (default: 300)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    add_seed(p)
    g = p.add_argument_group("differential privacy (Opacus DP-SGD; BatchNorm becomes GroupNorm)")
    g.add_argument("--dp", action="store_true",
                   help="train with DP-SGD; train.json records epsilon, delta, sigma, C, q")
    g.add_argument("--target-epsilon", type=float, help="epsilon to spend over the run (sigma chosen by Opacus)")
    g.add_argument("--noise-multiplier", type=float, help="sigma (instead of --target-epsilon)")
    g.add_argument("--delta", type=float, help="delta (default: 1e-5; must be below 1/training images)")
    g.add_argument("--max-grad-norm", type=float, help="per-sample clipping norm C (default: 1.0)")
    g.add_argument("--epochs", type=int, help="DP budget in epochs instead of --steps (steps = epochs / q)")
    g.add_argument("--accountant", choices=ACCOUNTANTS, help="privacy accountant (default: rdp)")
    add_out_args(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    if args.steps is not None and args.steps < 1:  # before the data and the model are loaded
        raise SegauditError(f"steps must be at least 1, got {args.steps}")
    out = check_out_dir(args.out, args.force)
    dp_spec = _dp_spec(args)  # refuses DP options without --dp before any work
    data = load_dataset(args.data, classes=args.classes)
    model = model_for(args, data)
    if dp_spec is not None:
        budget = {"epochs": args.epochs} if args.epochs is not None else {"steps": args.steps}
        private = train_private(model, data, dp_spec, size=args.size, batch_size=args.batch_size, lr=args.lr,
                                seed=args.seed, progress=not args.quiet, **budget)
        result = private.train
    else:
        result = train_model(model, data, size=args.size, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                             seed=args.seed, progress=not args.quiet)
    with atomic_dir(out) as tmp:
        save_model(result.model, tmp / "model")
        write_json(tmp / "train.json", {**(private.summary() if dp_spec is not None else result.summary()),
                                         **environment()})
    dp_note = (f"  epsilon {private.epsilon:.3g} at delta {private.delta:g} (sigma {private.noise_multiplier:.3g}, "
               f"C {private.max_grad_norm:g}, q {private.sample_rate:.3g}, {private.accountant})"
               if dp_spec is not None else "")
    print(f"held-out Dice {result.dice:.3f}  IoU {result.iou:.3f}  ({result.steps} steps, {result.seconds:.0f} s)"
          f"{dp_note} -> {out / 'model'}")
    return 0


def _dp_spec(args):
    """The ``DPSpec`` of ``segaudit train --dp`` (None without --dp; DP options alone are refused)."""
    dp_options = {"--target-epsilon": args.target_epsilon, "--noise-multiplier": args.noise_multiplier,
                  "--epochs": args.epochs, "--delta": args.delta, "--max-grad-norm": args.max_grad_norm,
                  "--accountant": args.accountant}
    if not args.dp:
        given = [k for k, v in dp_options.items() if v is not None]
        if given:
            raise SegauditError(f"{given[0]} is an option of private training; add --dp (or drop it)")
        return None
    if args.target_epsilon is None and args.noise_multiplier is None:
        raise SegauditError("--dp needs --target-epsilon E or --noise-multiplier S")
    return DPSpec(noise_multiplier=args.noise_multiplier, target_epsilon=args.target_epsilon,
                  delta=1e-5 if args.delta is None else args.delta,
                  max_grad_norm=1.0 if args.max_grad_norm is None else args.max_grad_norm,
                  accountant=args.accountant or "rdp")
