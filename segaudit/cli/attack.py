"""``segaudit attack``: reconstruct a client's images and masks from its update."""
from __future__ import annotations

import dataclasses
import time

import torch

from ..attacks import ATTACKS
from ..attacks.base import HONEST_SERVER
from ..attacks.knowledge import attacker_data
from ..attacks.runner import attack_batch
from ..checks import check_model_fits_data
from ..data import load_dataset, make_batch
from ..errors import SegauditError
from ..io import atomic_dir, check_out_dir, write_json
from ..models import is_segmentation, load_model, model_spec
from ..preprocessing import normalisation
from ..report.plots import reconstruction_grid, reconstruction_only_grid
from ..types import Batch, Prior
from ..updates import load_update
from .inputs import attack_data, batch_fit, batch_stride, environment, model_for
from .options import (
    add_command,
    add_data_args,
    add_model_args,
    add_out_args,
    add_protocol_args,
    add_seed,
    client_protocol,
)


def add_attack_parser(sub) -> None:
    p = add_command(sub, "attack", "reconstruct a client's images and masks from its update; "
                                   "writes result.json and reconstruction.png")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--in-channels", type=int, help="input channels of a fresh model (default: the data's)")
    p.add_argument("--image", metavar="FILE", help="attack one image instead of --data crops")
    p.add_argument("--mask", metavar="FILE", help="the mask of --image (segmentation)")
    p.add_argument("--label", type=int, help="the label of the images (classification archs)")
    p.add_argument("--distractors", metavar="DIR", help="images and masks of the same kind, not the client's: the "
                   "attacker's prior and the candidates it must re-identify the client's image among (default: the "
                   "other images of --data; none with --image)")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--update", metavar="FILE", help="attack this saved update (.safetensors, e.g. one Flower sent, "
                   "captured by segaudit.integrations.flower.capture_mod) instead of simulating one from --data: "
                   "needs --model (the global model it was computed on) and --size; with no truth to compare, "
                   "result.json has no scores and reconstruction.png shows the reconstruction only")
    add_protocol_args(p)
    p.add_argument("--attack", choices=ATTACKS.available(), default="seg")
    p.add_argument("--steps", type=int,
                   help="optimisation steps per restart (default: the attack's own, e.g. 200 for seg)")
    p.add_argument("--restarts", type=int, default=1)
    add_seed(p)
    add_out_args(p)
    p.set_defaults(func=cmd_attack)


def _attack_batch(args, data, model):
    """The client's batch: crops of ``data`` (or the image resized); labels for classification archs."""
    if args.batch_size < 1:
        raise SegauditError(f"--batch-size must be at least 1, got {args.batch_size}")
    # more images than the dataset holds: distinct random crops of the same images
    batch = make_batch(data, [i % len(data) for i in range(args.batch_size)], size=args.size, seed=args.seed,
                       fit=batch_fit(data, args.size), stride=batch_stride(model), **normalisation(model))
    if is_segmentation(model):
        return batch
    k = model.segaudit_spec["classes"]
    if args.label is not None:
        if not 0 <= args.label < k:
            raise SegauditError(f"--label {args.label} is outside 0..{k - 1} ({k} classes)")
        labels = torch.full((len(batch),), args.label)
    else:  # a segmentation dataset labels each crop by its most frequent class
        labels = torch.stack([torch.bincount(m.flatten(), minlength=k).argmax() for m in batch.masks])
    return Batch(batch.images, labels, tuple(f"class_{i}" for i in range(k)), batch.names, batch.mean, batch.std)


def _knowledge(args, data, batch, model):
    """What the attacker holds besides the update: crops of the other images of ``--data``, or of
    ``--distractors`` (checked against the model); None for a lone ``--image`` (no baselines beyond the
    constant ones, no re-identification)."""
    if args.distractors:
        pool = load_dataset(args.distractors, classes=args.classes)
        check_model_fits_data(model, pool, "the model")  # "... but the data has K (DIR/classes.json)"
        if pool.min_size < args.size:
            raise SegauditError(f"--distractors images are {pool.min_size} px at their smallest side but --size is "
                                f"{args.size}: give images at least {args.size} px")
    elif args.image:
        return None
    else:
        pool = data
    if not is_segmentation(model):
        return None
    return attacker_data(pool, batch, args.size, fit=batch_fit(pool, args.size), norm=normalisation(model),
                         seed=args.seed, stride=batch_stride(model))


def cmd_attack(args) -> int:
    if args.batch_size < 1:  # before any model is built: a bad budget fails at once
        raise SegauditError(f"--batch-size must be at least 1, got {args.batch_size}")
    budget = {"steps": args.steps} if args.steps is not None else {}
    ATTACKS.create(args.attack, restarts=args.restarts, **budget)  # refuses a bad budget before any work
    out = check_out_dir(args.out, args.force)
    if args.update:
        return _attack_saved_update(args, out, budget)
    data = attack_data(args)
    model = model_for(args, data)
    batch = _attack_batch(args, data, model)
    knowledge = _knowledge(args, data, batch, model)
    outcome = attack_batch(model, batch, args.attack, client_protocol(args), restarts=args.restarts, seed=args.seed,
                           show_progress=not args.quiet, knowledge=knowledge, **budget)
    spec = model_spec(model)
    rec = outcome.reconstruction
    found, threat = outcome.identification, outcome.settings["threat"]
    attacker = "" if threat == HONEST_SERVER else f" ({threat})"
    metrics = {**outcome.metrics, **{k: found.get(k) for k in ("identification_rate", "mask_identification_rate")}}
    result = {"attack": args.attack, "threat": threat, "arch": spec["arch"],
              "encoder": spec["encoder"], "batch_size": len(batch), "steps": outcome.settings["steps"],
              "restarts": args.restarts, "mode": args.mode, "local_steps": args.local_steps,
              "client_mode": args.client_mode, "size": args.size, "seed": args.seed,
              "runtime_s": outcome.runtime_s, "status": rec.status, "metrics": metrics,
              "restart_losses": rec.restart_losses, "restart_status": rec.restart_status,
              "images": list(batch.names), "fit": batch_fit(data, args.size), "identification": outcome.identification,
              **environment()}
    if "composition" in rec.extras:
        result["composition"] = rec.extras["composition"].tolist()
    with atomic_dir(out) as tmp:
        write_json(tmp / "result.json", result)
        reconstruction_grid(batch, rec, tmp / "reconstruction.png",
                            title=f"{args.attack} on {spec['arch']}, batch {len(batch)}, {args.mode}{attacker}",
                            **(knowledge.score_kwargs() if knowledge else {}))
    shown = ", ".join(f"{k} {v:.3g}" for k, v in metrics.items() if v is not None and not k.startswith("baseline_")) \
        or "nothing"
    scaled = f"; images scaled and padded to {args.size} px (smallest side {data.min_size})" \
        if result["fit"] == "resize" else ""
    print(f"{args.attack}: {rec.status}; {shown} ({outcome.runtime_s:.0f} s){scaled} -> {out}")
    return 0


def _attack_saved_update(args, out, budget: dict) -> int:
    """``--update``: attack a saved update with the global model it was computed on. There is no client batch, so
    nothing to score: result.json records the reconstruction's status and losses, reconstruction.png shows it."""
    if not args.model:
        raise SegauditError("--update needs --model, the global model the update was computed on")
    if args.image or args.mask:
        raise SegauditError("--update attacks a saved update: drop --image/--mask (there is no batch to simulate)")
    model = load_model(args.model)
    update = load_update(args.update)
    spec, norm = model_spec(model), normalisation(model)
    prior = Prior((spec["in_channels"], args.size, args.size), update.meta.batch_size, spec["classes"], spec["task"],
                  norm["mean"], norm["std"])
    attacker = ATTACKS.create(args.attack, restarts=args.restarts, seed=args.seed, show_progress=not args.quiet,
                              **budget)
    if attacker.threat != HONEST_SERVER:
        raise SegauditError(f"the {args.attack} attack sends the client a model of its own, but a saved update was "
                            "computed on the global model; use an honest-server attack (seg, ig, dlg)")
    start = time.perf_counter()
    rec = attacker.run(model, update, prior)
    seconds = time.perf_counter() - start
    result = {"attack": args.attack, "threat": attacker.threat, "update": str(args.update), "arch": spec["arch"],
              "meta": dataclasses.asdict(update.meta), "size": args.size, "seed": args.seed, "runtime_s": seconds,
              "status": rec.status, "metrics": None, "restart_losses": rec.restart_losses,
              "restart_status": rec.restart_status, **environment()}
    if "composition" in rec.extras:
        result["composition"] = rec.extras["composition"].tolist()
    with atomic_dir(out) as tmp:
        write_json(tmp / "result.json", result)
        reconstruction_only_grid(rec, norm["mean"], norm["std"], tmp / "reconstruction.png", spec["classes"],
                                 title=f"{args.attack} on a saved {update.kind} update, batch {update.meta.batch_size}")
    print(f"{args.attack}: {rec.status} on {args.update} (no truth, so no scores; {seconds:.0f} s) -> {out}")
    return 0
