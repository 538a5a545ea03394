"""The ``segaudit`` command line: thin sub-commands over the Python API.

Every bad input ends as one line ``error: <what to do>`` on stderr and exit code 2; Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import os
import sys

from .config import CLIENT_MODE
from .errors import SegauditError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise SegauditError(f"{message} (see '{self.prog} --help')")


def _add_model_args(p: argparse.ArgumentParser, arch: str | None = "unet") -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="DIR", help="a trained model folder (save_pretrained) or checkpoint")
    g.add_argument("--arch", default=arch, help=f"architecture when no --model is given (default: {arch})")
    g.add_argument("--encoder", help="smp encoder (default: resnet18 for segmentation archs)")
    _add_preprocessing_args(g)


def _add_preprocessing_args(g) -> None:
    """The input normalisation the model was trained with; overrides what its spec records."""
    g.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean the model's inputs were normalised with, "
                   "in the units of --scale (overrides the model's spec; e.g. 0 with --std 1 for x/255)")
    g.add_argument("--std", metavar="S[,S,S]", help="per-channel std, with --mean")
    g.add_argument("--scale", type=float, choices=(1.0, 255.0), metavar="1|255",
                   help="pixel value range --mean/--std refer to: 1 ([0, 1], default) or 255 ([0, 255])")


def _preprocessing(args, channels: int):
    """The ``--mean/--std/--scale`` flags as a :class:`~segaudit.preprocessing.Preprocessing`, or None."""
    from .preprocessing import Preprocessing

    mean, std, scale = (getattr(args, k, None) for k in ("mean", "std", "scale"))
    if mean is None and std is None:
        if scale is not None:
            raise SegauditError("--scale needs --mean and --std (the normalisation it refers to)")
        return None
    return Preprocessing.parse(mean, std, scale, channels=channels)


def _add_data_args(p: argparse.ArgumentParser, size: int = 64) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default="nuclei", metavar="NAME|DIR",
                   help="bundled dataset name or folder with images/ and masks/")
    g.add_argument("--classes", type=int, help="number of classes when the folder has no classes.json")
    g.add_argument("--size", type=int, default=size, help=f"image size in pixels (default: {size})")


def _add_protocol_args(p: argparse.ArgumentParser) -> None:
    """The client's protocol: FedSGD or FedAvg (local steps, learning rate) and the model's mode."""
    g = p.add_argument_group("client protocol")
    g.add_argument("--mode", choices=("fedsgd", "fedavg"), default="fedsgd")
    g.add_argument("--local-steps", type=int, default=1, help="FedAvg local steps")
    g.add_argument("--lr", type=float, default=0.01, help="the client's FedAvg learning rate")
    _add_client_mode(g)


def _add_client_mode(p, default: str | None = CLIENT_MODE) -> None:
    """``--client-mode``: the same default for every command (see :data:`segaudit.types.CLIENT_MODE`)."""
    p.add_argument("--client-mode", choices=("train", "eval"), default=default,
                   help=f"the client's model mode: train (BatchNorm on the batch's statistics, as real clients "
                        f"train) or eval (running statistics, the easier case for the attacker); default {CLIENT_MODE}")


def _add_out_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--out", metavar="DIR", required=default is None, default=default, help="output folder")
    p.add_argument("--force", action="store_true", help="overwrite a non-empty output folder")


def _model_for(args, data):
    """The trained ``--model`` or a fresh ``--arch`` model for the data, checked against the data's channels and
    classes and with a known input normalisation (``--mean/--std`` override its spec) before any work."""
    from .checks import check_model_fits_data, model_source
    from .models import build_model, load_model
    from .preprocessing import declare
    from .preprocessing import of as preprocessing_of

    path = getattr(args, "model", None)
    if path:
        model = load_model(path)
        declared = _preprocessing(args, model.segaudit_spec["in_channels"])
        if declared is not None:
            declare(model, declared)
    else:
        extra = {"size": args.size} if args.arch.lower() == "lenet" else {}
        channels = getattr(args, "in_channels", None) or data.channels
        declared = _preprocessing(args, channels)
        model = build_model(args.arch, encoder=args.encoder, classes=args.classes or data.num_classes,
                            in_channels=channels, preprocessing=declared and declared.to_dict(), **extra)
    check_model_fits_data(model, data, model_source(path) if path else "--in-channels/--classes")
    preprocessing_of(model, source=path)
    return model


def _environment() -> dict:
    """What else determines a run's numbers, recorded beside them."""
    import torch

    return {"threads": torch.get_num_threads()}


def cmd_train(args) -> int:
    from .data import load_dataset
    from .io import atomic_dir, check_out_dir, write_json
    from .models import save_model
    from .train import train_model

    if args.steps is not None and args.steps < 1:  # before the data and the model are loaded
        raise SegauditError(f"steps must be at least 1, got {args.steps}")
    out = check_out_dir(args.out, args.force)
    dp_spec = _dp_spec(args)  # refuses DP options without --dp before any work
    data = load_dataset(args.data, classes=args.classes)
    model = _model_for(args, data)
    if dp_spec is not None:
        from .privacy import train_private

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
                                         **_environment()})
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
    from .privacy import DPSpec

    if args.target_epsilon is None and args.noise_multiplier is None:
        raise SegauditError("--dp needs --target-epsilon E or --noise-multiplier S")
    return DPSpec(noise_multiplier=args.noise_multiplier, target_epsilon=args.target_epsilon,
                  delta=1e-5 if args.delta is None else args.delta,
                  max_grad_norm=1.0 if args.max_grad_norm is None else args.max_grad_norm,
                  accountant=args.accountant or "rdp")


def cmd_privacy(args) -> int:
    import json

    from .privacy import epsilon, noise_for_epsilon

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


def cmd_update(args) -> int:
    from .data import load_dataset, make_batch
    from .fl import client_update
    from .io import check_out_file
    from .preprocessing import normalisation
    from .updates import save_update

    check_out_file(args.out, args.force, ".safetensors")
    data = load_dataset(args.data, classes=args.classes)
    model = _model_for(args, data)
    batch = make_batch(data, list(range(args.batch_size)), size=args.size, seed=args.seed, fit="crop",
                       **normalisation(model))
    update = client_update(model, batch, mode=args.mode, local_steps=args.local_steps, lr=args.lr, loss=args.loss,
                           train_mode=args.client_mode == "train")
    path = save_update(update, args.out, force=args.force)
    print(f"{update.kind} of {len(update.tensors)} tensors, norm {update.norm():.4g} -> {path}")
    return 0


def _attack_data(args):
    """The images ``segaudit attack`` draws the client's batch from: one --image or a --data set."""
    from .data import load_dataset, load_pair

    if args.image:
        if args.batch_size != 1:
            raise SegauditError("--image gives one image: use --batch-size 1, or --data for larger batches")
        return load_pair(args.image, args.mask, args.classes or 2)
    return load_dataset(args.data, classes=args.classes)


def _attack_batch(args, data, model):
    """The client's batch: crops of ``data`` (or the image resized); labels for classification archs."""
    import torch

    from .data import make_batch
    from .models import is_segmentation
    from .preprocessing import normalisation
    from .types import Batch

    if args.batch_size < 1:
        raise SegauditError(f"--batch-size must be at least 1, got {args.batch_size}")
    # more images than the dataset holds: distinct random crops of the same images
    batch = make_batch(data, [i % len(data) for i in range(args.batch_size)], size=args.size, seed=args.seed,
                       fit=_fit(data, args.size), stride=_stride(model), **normalisation(model))
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


def _fit(data, size: int) -> str:
    """Random ``size`` crops when every image side is at least ``size`` (any aspect ratio), else scale the longer
    side to ``size`` and zero-pad the shorter one (see :func:`segaudit.data.make_batch`)."""
    return "crop" if data.min_size >= size else "resize"


def _stride(model) -> int:
    """What ``--size`` must be a multiple of: a segmentation model's output stride (as ``train`` and ``audit``
    require, even where smp would interpolate), else whatever the classifier needs."""
    from .models import is_segmentation, model_spec, size_rules

    spec = model_spec(model)
    rules = size_rules(spec["arch"], spec["encoder"], **spec["options"])
    return rules.output_stride if is_segmentation(model) else rules.multiple


def _knowledge(args, data, batch, model):
    """What the attacker holds besides the update: crops of the other images of ``--data``, or of
    ``--distractors`` (checked against the model); None for a lone ``--image`` (no baselines beyond the
    constant ones, no re-identification)."""
    from .attacks.knowledge import attacker_data
    from .checks import check_model_fits_data
    from .data import load_dataset
    from .models import is_segmentation
    from .preprocessing import normalisation

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
    return attacker_data(pool, batch, args.size, fit=_fit(pool, args.size), norm=normalisation(model), seed=args.seed,
                         stride=_stride(model))


def cmd_attack(args) -> int:
    from .attacks import ATTACKS
    from .attacks.runner import attack_batch
    from .config import HONEST_SERVER
    from .io import atomic_dir, check_out_dir, write_json
    from .models import model_spec
    from .report.plots import reconstruction_grid

    if args.batch_size < 1:  # before any model is built: a bad budget fails at once
        raise SegauditError(f"--batch-size must be at least 1, got {args.batch_size}")
    budget = {"steps": args.steps} if args.steps is not None else {}
    ATTACKS.create(args.attack, restarts=args.restarts, **budget)  # refuses a bad budget before any work
    out = check_out_dir(args.out, args.force)
    data = _attack_data(args)
    model = _model_for(args, data)
    batch = _attack_batch(args, data, model)
    knowledge = _knowledge(args, data, batch, model)
    outcome = attack_batch(model, batch, args.attack, mode=args.mode, local_steps=args.local_steps, lr=args.lr,
                           train_mode=args.client_mode == "train", restarts=args.restarts, seed=args.seed,
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
              "images": list(batch.names), "fit": _fit(data, args.size), "identification": outcome.identification,
              **_environment()}
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


def cmd_layers(args) -> int:
    from .data import make_batch
    from .io import atomic_dir, check_out_dir, write_json
    from .leakage import layer_scores
    from .preprocessing import normalisation
    from .report.plots import layer_scores_chart

    out = check_out_dir(args.out, args.force)
    data = _attack_data(args)
    model = _model_for(args, data)
    if args.batch_size < 1:
        raise SegauditError(f"--batch-size must be at least 1, got {args.batch_size}")
    batch = make_batch(data, [i % len(data) for i in range(args.batch_size)], size=args.size, seed=args.seed,
                       fit=_fit(data, args.size), stride=_stride(model), **normalisation(model))
    report = layer_scores(model, batch, data=data, steps=args.steps, seed=args.seed, mode="fedsgd",
                          train_mode=args.client_mode == "train", show_progress=not args.quiet)
    with atomic_dir(out) as tmp:
        write_json(tmp / "layers.json", {**report.to_dict(), **_environment()})
        layer_scores_chart(report, tmp / "layers.png")
    print(f"most exposed: {', '.join(report.ranking()[:3])} ({report.runtime_s['total']:.0f} s) -> {out}")
    return 0


def cmd_check_update(args) -> int:
    from .leakage import gate_update
    from .models import load_model
    from .updates import load_update

    model = load_model(args.model)
    result = gate_update(model, load_update(args.update), threshold=args.threshold, size=args.size)
    verdict = "ABOVE threshold: do not share" if result.above else "below threshold"
    print(f"risk {result.risk:.3f} ({verdict}, threshold {result.threshold:g})")
    for row in sorted(result.groups, key=lambda r: -r["risk"])[:3]:
        print(f"  {row['name']}: risk {row['risk']:.3f} (determined {row['determined']:.2f}, "
              f"signal {row['signal']:.2f}, nonzero {row['nonzero']:.2f})")
    for note in result.notes:
        print(f"  note: {note}")
    return 3 if result.above else 0


def cmd_tradeoff(args) -> int:
    import time

    from .data import load_dataset
    from .io import atomic_dir, check_out_dir, write_json
    from .models import model_spec
    from .report.plots import tradeoff_frontier
    from .tradeoff import TradeoffSettings, default_defenses, parse_defense_list, run_tradeoff

    out = check_out_dir(args.out, args.force)
    defenses = parse_defense_list(args.defenses if args.defenses is not None else default_defenses())
    settings = TradeoffSettings(size=args.size, batch_size=args.batch_size, train_steps=args.train_steps,
                                train_batch_size=args.train_batch_size, lr=args.lr, attack_steps=args.attack_steps,
                                restarts=args.restarts, client_mode=args.client_mode, images=args.images,
                                seed=args.seed)
    data = load_dataset(args.data, classes=args.classes)
    model = _model_for(args, data)

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
              **_environment()}
    with atomic_dir(out) as tmp:
        write_json(tmp / "tradeoff.json", result)
        tradeoff_frontier(rows, tmp / "frontier.png",
                          title=f"{spec['arch']} on {args.data}, {args.size} px, attacked batch {args.batch_size}")
    print(f"{len(rows)} defenses -> {out / 'tradeoff.json'}")
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def cmd_infer(args) -> int:
    from .attacks.inference import run_inference
    from .data import load_dataset
    from .defenses import parse_defense
    from .io import atomic_dir, check_out_dir, write_json
    from .report.plots import roc_plot

    out = check_out_dir(args.out, args.force)
    data = load_dataset(args.data, classes=args.classes)
    model = _model_for(args, data)
    result = run_inference(model, data, args.attack, prop=args.property, batch_size=args.batch_size,
                           updates=args.updates, shadow_updates=args.shadow_updates, size=args.size,
                           crops_per_image=args.crops_per_image, defense=parse_defense(args.defense),
                           seed=args.seed, show_progress=not args.quiet, mode=args.mode,
                           local_steps=args.local_steps, lr=args.lr, train_mode=args.client_mode == "train")
    with atomic_dir(out) as tmp:
        write_json(tmp / "result.json", {**result.summary(), **_environment()})
        if result.auc is not None:
            roc_plot(result.labels, result.scores, tmp / "roc.png",
                     title=f"{args.attack} ({result.property or 'membership'}), batch {args.batch_size}")
    shown = [f"{k} {getattr(result, k):.3f}" for k in ("auc", "tpr_at_1pct_fpr", "composition_mae")
             if getattr(result, k) is not None]
    print(f"{args.attack}, batch {args.batch_size}, {args.updates} updates: {', '.join(shown)} "
          f"({result.runtime_s:.0f} s) -> {out}")
    return 0


def cmd_audit(args) -> int:
    import dataclasses

    from . import audit
    from .config import AuditConfig, ModelConfig

    if args.model and not args.data and not args.config:
        raise SegauditError("--model needs --data: the folder of images and masks to audit it on "
                            "(--data nuclei for the bundled crops)")
    overrides = {}
    prep = _preprocessing(args, len(args.mean.split(",")) if args.mean else 1)
    if args.arch or args.model or args.encoder:
        overrides["models"] = (ModelConfig(name=args.arch or "model", arch=args.arch or "unet", encoder=args.encoder,
                                           checkpoint=args.model, preprocessing=prep and prep.to_dict()),)
    for key in ("data", "classes", "size", "images", "attack_steps", "client_mode", "property"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    for key, cast in (("batch_sizes", int), ("modes", str), ("defenses", str), ("seeds", int), ("inference", str)):
        if getattr(args, key) or (key == "inference" and args.inference is not None):  # --inference '' is none
            try:
                overrides[key] = tuple(cast(v.strip()) for v in getattr(args, key).split(",") if v.strip())
            except ValueError:
                raise SegauditError(f"--{key.replace('_', '-')} must be a comma-separated list of numbers") from None
    if args.no_layers:
        overrides["layers"] = False
    if args.config:
        config = dataclasses.replace(AuditConfig.from_yaml(args.config), **overrides)
    else:
        config = AuditConfig.quick(**overrides) if args.quick else AuditConfig(**overrides)
    if prep and "models" not in overrides:  # --mean/--std apply to the config's models
        config = dataclasses.replace(config, models=tuple(dataclasses.replace(m, preprocessing=prep.to_dict())
                                                          for m in config.models))
    result = audit.run(config, args.out, force=args.force, redact=args.redact, progress=not args.quiet,
                       command=_command(args), log=lambda m: print(m, file=sys.stderr))
    where = result.report or result.out / "results.json"
    if result.nothing_worked:
        raise SegauditError(f"no cell of the audit measured anything (see {where}); fix the first error above "
                            "and rerun")
    few = (f" ({config.images} image{'s' if config.images > 1 else ''} per cell: no intervals)"
           if config.images < 3 else "")
    print(f"audit {config.name!r}: risk {result.risk or 'not rated'}{few} -> {where}")
    return 0


def cmd_sweep(args) -> int:
    from . import sweep
    from .config import AuditConfig

    config = AuditConfig.from_yaml(args.config)
    result = sweep.run(config, args.out, executor=args.executor, max_parallel=args.max_parallel, address=args.address,
                       threads=args.threads, force=args.force, redact=args.redact, progress=not args.quiet,
                       command=_command(args), log=lambda m: print(m, file=sys.stderr))
    n = result.cells
    where = result.report or result.out / "results.json"
    print(f"sweep {config.name!r} ({args.executor}): {n['planned']} cells, {n['run']} run now, {n['failed']} failed, "
          f"{n['left_out']} left out; risk {result.risk or 'not rated'} -> {where}")
    return 0


def _command(args) -> str:
    """The command line that ran, quoted so that a shell runs it again (recorded in results.json)."""
    import shlex

    return shlex.join(["segaudit", *args.argv])


def cmd_report(args) -> int:
    from pathlib import Path

    from .io import check_out_file
    from .report.html import read_results, write_html

    results, base = read_results(args.results)
    out = check_out_file(args.out or base / "report.html", args.force, ".html")
    if out.resolve() == Path(args.results).resolve():
        raise SegauditError(f"--out {out} is the results file itself; choose another .html file")
    path = write_html(results, out, base_dir=base, redact=args.redact)
    print(f"report{' (redacted)' if args.redact else ''} -> {path}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    result = run_demo(args.out, quick=args.quick, force=args.force, progress=not args.quiet, redact=args.redact)
    print(f"demo audit: risk {result.risk or 'not rated'} -> {result.report or result.out}")
    return 0


def cmd_info(args) -> int:
    from .attacks import ATTACKS
    from .attacks.inference import INFERENCE
    from .data import BUNDLED
    from .defenses import DEFENSES
    from .models import available_archs

    for kind, names in available_archs().items():
        print(f"{kind} architectures: {', '.join(names)}")
    print(f"inversion attacks: {', '.join(ATTACKS.available())}")
    print(f"inference attacks: {', '.join(INFERENCE.available())}")
    print(f"defenses: {', '.join(DEFENSES.available())} (e.g. noise:0.01, dp:eps=8)")
    print(f"bundled datasets: {', '.join(sorted(BUNDLED))}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="segaudit", description=__doc__.splitlines()[0])
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    quiet = _Parser(add_help=False)
    quiet.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    compute = _Parser(add_help=False)
    compute.add_argument("--threads", type=int, metavar="N",
                         help="torch threads (default: OMP_NUM_THREADS, else this machine's cores: "
                              f"{default_threads()}); on a machine where other jobs hold cores, fewer threads run "
                              "much faster")

    def command(name: str, help: str, computes: bool = True) -> argparse.ArgumentParser:
        """Every command takes --quiet; those that compute also --threads."""
        return sub.add_parser(name, help=help, description=help, parents=[quiet, compute] if computes else [quiet])

    p = command("train", "train a segmentation model on CPU and save it (save_pretrained)")
    p.add_argument("--arch", default="unet")
    p.add_argument("--encoder", help="smp encoder (default: resnet18)")
    _add_data_args(p)
    p.add_argument("--steps", type=int, default=300, help="optimiser steps (default: 300)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("differential privacy (Opacus DP-SGD; BatchNorm becomes GroupNorm)")
    g.add_argument("--dp", action="store_true",
                   help="train with DP-SGD; train.json records epsilon, delta, sigma, C, q")
    g.add_argument("--target-epsilon", type=float, help="epsilon to spend over the run (sigma chosen by Opacus)")
    g.add_argument("--noise-multiplier", type=float, help="sigma (instead of --target-epsilon)")
    g.add_argument("--delta", type=float, help="delta (default: 1e-5; must be below 1/training images)")
    g.add_argument("--max-grad-norm", type=float, help="per-sample clipping norm C (default: 1.0)")
    g.add_argument("--epochs", type=int, help="DP budget in epochs instead of --steps (steps = epochs / q)")
    g.add_argument("--accountant", choices=("rdp", "prv"), help="privacy accountant (default: rdp)")
    _add_out_args(p)
    p.set_defaults(func=cmd_train)

    p = command("update", "simulate one client's update and save it as safetensors")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--mode", choices=("fedsgd", "fedavg"), default="fedsgd")
    p.add_argument("--local-steps", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--loss", choices=("ce", "dice_ce"), default="ce")
    _add_client_mode(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", metavar="FILE", required=True, help="output .safetensors file")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_update)

    from .attacks import ATTACKS
    from .attacks.inference import INFERENCE

    p = command("attack", "reconstruct a client's images and masks from its update; "
                          "writes result.json and reconstruction.png")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--in-channels", type=int, help="input channels of a fresh model (default: the data's)")
    p.add_argument("--image", metavar="FILE", help="attack one image instead of --data crops")
    p.add_argument("--mask", metavar="FILE", help="the mask of --image (segmentation)")
    p.add_argument("--label", type=int, help="the label of the images (classification archs)")
    p.add_argument("--distractors", metavar="DIR", help="images and masks of the same kind, not the client's: the "
                   "attacker's prior and the candidates it must re-identify the client's image among (default: the "
                   "other images of --data; none with --image)")
    p.add_argument("--batch-size", type=int, default=1)
    _add_protocol_args(p)
    p.add_argument("--attack", choices=ATTACKS.available(), default="seg")
    p.add_argument("--steps", type=int,
                   help="optimisation steps per restart (default: the attack's own, e.g. 200 for seg)")
    p.add_argument("--restarts", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    _add_out_args(p)
    p.set_defaults(func=cmd_attack)

    p = command("layers", "per-layer leakage scores of a model (attack, analytic, sensitivity); "
                          "writes layers.json and layers.png")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--image", metavar="FILE", help="score one image instead of --data crops")
    p.add_argument("--mask", metavar="FILE", help="the mask of --image")
    p.add_argument("--batch-size", type=int, default=1)
    _add_client_mode(p)
    p.add_argument("--steps", type=int, default=30, help="attack steps per layer group (default: 30)")
    p.add_argument("--seed", type=int, default=0)
    _add_out_args(p)
    p.set_defaults(func=cmd_layers)

    p = command("check-update", "leakage gate: risk score of a client update before it is shared; "
                                "exit 0 below the threshold, 3 above it")
    p.add_argument("--model", metavar="DIR", required=True, help="the global model the update was computed on")
    p.add_argument("--update", metavar="FILE", required=True,
                   help="the update (.safetensors, gradients or weight delta)")
    p.add_argument("--threshold", type=float, default=0.5, help="risk above which the update is refused (default: 0.5)")
    p.add_argument("--size", type=int, default=64, help="side of the client's images in pixels (default: 64)")
    p.set_defaults(func=cmd_check_update)

    p = command("tradeoff", "privacy-utility trade-off of defenses: utility of defended training, adaptive-attack "
                            "leakage, epsilon; writes tradeoff.json and frontier.png")
    _add_model_args(p)
    _add_data_args(p)
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
    _add_client_mode(p)
    p.add_argument("--seed", type=int, default=0)
    _add_out_args(p)
    p.set_defaults(func=cmd_tradeoff)

    p = command("infer", "what a server infers from updates without rebuilding images: "
                         "composition, property, membership")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--attack", choices=INFERENCE.available(), default="composition")
    p.add_argument("--property", metavar="SPEC",
                   help="CLASS>X (the batch's share of CLASS exceeds X), any:CLASS>X or present:CLASS (some image)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--updates", type=int, default=200, help="target updates to attack (default: 200)")
    p.add_argument("--shadow-updates", type=int, help="updates the attacker simulates to fit (default: --updates)")
    p.add_argument("--crops-per-image", type=int, default=16, help="random crops per image in the client pool")
    _add_protocol_args(p)
    p.add_argument("--defense", default="none", metavar="SPEC", help="a defense the clients apply, e.g. noise:0.1")
    p.add_argument("--seed", type=int, default=0)
    _add_out_args(p)
    p.set_defaults(func=cmd_infer)

    p = command("audit", "audit a model: attacks, inference, layer scores and defenses -> results.json and report.html")
    p.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="audit config (flags below override it)")
    p.add_argument("--model", metavar="DIR", help="a trained model folder to audit")
    p.add_argument("--arch", help="architecture to train on the data when no --model is given")
    p.add_argument("--encoder", help="smp encoder (default: resnet18)")
    p.add_argument("--data", metavar="NAME|DIR", help="bundled dataset name or folder (default: nuclei)")
    p.add_argument("--classes", type=int, help="number of classes when the folder has no classes.json")
    p.add_argument("--size", type=int, help="image size in pixels")
    p.add_argument("--batch-sizes", metavar="B,B", help="client batch sizes, e.g. 1,4")
    p.add_argument("--modes", metavar="M,M", help="fedsgd and/or fedavg")
    p.add_argument("--defenses", metavar="SPEC,SPEC", help="e.g. none,noise:0.01,dp:eps=8")
    p.add_argument("--seeds", metavar="S,S", help="random seeds, e.g. 0,1")
    p.add_argument("--images", type=int, help="client batches per cell")
    p.add_argument("--attack-steps", type=int, help="inversion steps per attack")
    _add_client_mode(p, default=None)  # None: the config's
    p.add_argument("--inference", metavar="A,A", help=f"inference attacks ({', '.join(INFERENCE.available())}); "
                                                      "'' for none")
    p.add_argument("--property", metavar="SPEC", help="the inference property, e.g. 'nucleus>0.2' "
                                                      "(default: the last class above its median share)")
    _add_preprocessing_args(p.add_argument_group("the model's input normalisation (overrides its spec)"))
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer scores")
    p.add_argument("--quick", action="store_true", help="a small budget for a first look")
    p.add_argument("--redact", action="store_true", help="leave client images out of the report")
    p.add_argument("--out", metavar="DIR", required=True, help="audit folder (resumed when it holds a store)")
    p.add_argument("--force", action="store_true", help="start afresh in a non-empty --out")
    p.set_defaults(func=cmd_audit)

    p = command("sweep", "run an audit config's grid of cells in parallel (process pool or Ray); same store and "
                         "report as 'audit'; a rerun skips finished cells", computes=False)
    p.add_argument("config", metavar="CONFIG.yaml",
                   help="audit config: the grid is models x attacks x modes x batch sizes x images x seeds, "
                        "plus inference, layers, defenses")
    p.add_argument("--executor", choices=("local", "ray", "sequential"), default="local",
                   help="local: a process pool (default); ray: a Ray cluster (pip install 'segaudit[ray]')")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (auto, HOST:6379, ray://HOST:10001); "
                                                     "without it a local Ray instance is started")
    p.add_argument("--max-parallel", type=int, metavar="N", help="cells at once (default: CPU cores, or the cluster's)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads per cell (default: cores / N locally, 1 on Ray)")
    p.add_argument("--redact", action="store_true", help="leave client images out of the report")
    p.add_argument("--out", metavar="DIR", required=True, help="sweep folder (resumed when it holds a store)")
    p.add_argument("--force", action="store_true", help="start afresh in a non-empty --out")
    p.set_defaults(func=cmd_sweep)

    p = command("report", "write the self-contained HTML report of an audit (results.json or a .sqlite results store)",
                computes=False)
    p.add_argument("results", metavar="RESULTS", help="results.json (or its folder), or a .sqlite results store")
    p.add_argument("--out", metavar="FILE", help="output .html file (default: report.html beside RESULTS)")
    p.add_argument("--redact", action="store_true", help="leave out the reconstruction images (they show patient data)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_report)

    p = command("demo", "the main job on the bundled data, written under reports/demo/")
    _add_out_args(p, default="reports/demo")
    p.add_argument("--quick", action="store_true", help="one model, a small budget (about 3 CPU minutes)")
    p.add_argument("--redact", action="store_true", help="leave client images out of the report")
    p.set_defaults(func=cmd_demo)

    p = command("privacy", "privacy accounting with Opacus: epsilon of a DP-SGD run, or the noise for a target epsilon",
                computes=False)
    what = p.add_subparsers(dest="what", required=True, parser_class=_Parser)
    for name, help in (("epsilon", "epsilon of T noisy steps at sample rate q; the last line is the number"),
                       ("noise",
                        "the noise multiplier sigma that spends a target epsilon; the last line is the number")):
        q = what.add_parser(name, help=help, description=help, parents=[quiet])
        if name == "epsilon":
            q.add_argument("--noise-multiplier", type=float, required=True, help="sigma")
        else:
            q.add_argument("--target-epsilon", type=float, required=True, help="epsilon to spend")
        q.add_argument("--sample-rate", type=float, required=True, help="q = batch size / dataset size, in (0, 1]")
        q.add_argument("--steps", type=int, required=True, help="T, the number of noisy steps")
        q.add_argument("--delta", type=float, default=1e-5, help="delta (default: 1e-5)")
        q.add_argument("--accountant", choices=("rdp", "prv"), default="rdp", help="default: rdp")
        q.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_privacy)

    p = command("info", "list architectures, attacks, defenses and bundled datasets", computes=False)
    p.set_defaults(func=cmd_info)
    return parser


_INPUTS = ("data", "model", "image", "mask", "update", "config", "results")


def _protect_inputs(args) -> None:
    """``--force`` replaces ``--out``: refuse when that would delete one of this run's own inputs."""
    from .io import check_replaceable

    out = getattr(args, "out", None)
    if out and getattr(args, "force", False):
        check_replaceable(out, {key: getattr(args, key) for key in _INPUTS
                                if isinstance(getattr(args, key, None), str)})


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when it is set, else the cores this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _set_threads_and_seed(args) -> None:
    """Pin torch's threads (``--threads``; results record them) and seed every generator with ``--seed``
    before anything is built, so the same command gives the same numbers."""
    seed = getattr(args, "seed", None)
    if "threads" not in args and not isinstance(seed, int):
        return
    import random

    import numpy as np
    import torch

    if "threads" in args:
        if args.threads is not None and args.threads < 1:
            raise SegauditError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads or default_threads())
    if isinstance(seed, int):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)


def main(argv: list[str] | None = None) -> int:
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


if __name__ == "__main__":
    sys.exit(main())
