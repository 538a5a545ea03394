"""``segaudit audit`` (one audit), ``segaudit sweep`` (its grid in parallel) and ``segaudit demo`` (the bundled one)."""
from __future__ import annotations

import dataclasses
import shlex
import sys

from ..attacks.inference import INFERENCE
from ..audit import run as run_audit
from ..config import AuditConfig, ModelConfig
from ..demo import run_demo
from ..errors import SegauditError
from ..sweep import EXECUTORS
from ..sweep import run as run_sweep
from .inputs import preprocessing_from_args
from .options import add_client_mode, add_command, add_out_args, add_preprocessing_args


def add_audit_parser(sub) -> None:
    p = add_command(sub, "audit", "audit a model: attacks, inference, layer scores and defenses -> results.json and "
                                  "report.html")
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
    add_client_mode(p, default=None)  # None: the config's
    p.add_argument("--inference", metavar="A,A", help=f"inference attacks ({', '.join(INFERENCE.available())}); "
                                                      "'' for none")
    p.add_argument("--property", metavar="SPEC", help="the inference property, e.g. 'nucleus>0.2' "
                                                      "(default: the last class above its median share)")
    add_preprocessing_args(p.add_argument_group("the model's input normalisation (overrides its spec)"))
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer scores")
    p.add_argument("--quick", action="store_true", help="a small budget for a first look")
    p.add_argument("--redact", action="store_true", help="leave client images out of the report")
    add_out_args(p, help="audit folder (resumed when it holds a store)", force_help="start afresh in a non-empty --out")
    p.set_defaults(func=cmd_audit)


def _audit_config(args) -> AuditConfig:
    """The audit config: ``CONFIG.yaml`` (or the default, or ``--quick``'s) with the flags given applied over it."""
    overrides = {}
    prep = preprocessing_from_args(args, len(args.mean.split(",")) if args.mean else 1)
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
    return config


def cmd_audit(args) -> int:
    if args.model and not args.data and not args.config:
        raise SegauditError("--model needs --data: the folder of images and masks to audit it on "
                            "(--data nuclei for the bundled crops)")
    config = _audit_config(args)
    result = run_audit(config, args.out, force=args.force, redact=args.redact, progress=not args.quiet,
                       command=_command(args), log=lambda m: print(m, file=sys.stderr))
    where = result.report or result.out / "results.json"
    if result.nothing_worked:
        raise SegauditError(f"no cell of the audit measured anything (see {where}); fix the first error above "
                            "and rerun")
    few = (f" ({config.images} image{'s' if config.images > 1 else ''} per cell: no intervals)"
           if config.images < 3 else "")
    print(f"audit {config.name!r}: risk {result.risk or 'not rated'}{few} -> {where}")
    return 0


def add_sweep_parser(sub) -> None:
    p = add_command(sub, "sweep", "run an audit config's grid of cells in parallel (process pool or Ray); same store "
                                  "and report as 'audit'; a rerun skips finished cells", computes=False)
    p.add_argument("config", metavar="CONFIG.yaml",
                   help="audit config: the grid is models x attacks x modes x batch sizes x images x seeds, "
                        "plus inference, layers, defenses")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: a process pool (default); ray: a Ray cluster (pip install 'segaudit[ray]')")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (auto, HOST:6379, ray://HOST:10001); "
                                                     "without it a local Ray instance is started")
    p.add_argument("--max-parallel", type=int, metavar="N", help="cells at once (default: CPU cores, or the cluster's)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch threads per cell (default: cores / N locally, 1 on Ray)")
    p.add_argument("--redact", action="store_true", help="leave client images out of the report")
    add_out_args(p, help="sweep folder (resumed when it holds a store)", force_help="start afresh in a non-empty --out")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    config = AuditConfig.from_yaml(args.config)
    result = run_sweep(config, args.out, executor=args.executor, max_parallel=args.max_parallel, address=args.address,
                       threads=args.threads, force=args.force, redact=args.redact, progress=not args.quiet,
                       command=_command(args), log=lambda m: print(m, file=sys.stderr))
    n = result.cells
    where = result.report or result.out / "results.json"
    print(f"sweep {config.name!r} ({args.executor}): {n['planned']} cells, {n['run']} run now, {n['failed']} failed, "
          f"{n['left_out']} left out; risk {result.risk or 'not rated'} -> {where}")
    return 0


def _command(args) -> str:
    """The command line that ran, quoted so that a shell runs it again (recorded in results.json)."""
    return shlex.join(["segaudit", *args.argv])


def add_demo_parser(sub) -> None:
    p = add_command(sub, "demo", "the main job on the bundled data, written under reports/demo/")
    add_out_args(p, default="reports/demo")
    p.add_argument("--quick", action="store_true", help="one model, a small budget (about 3 CPU minutes)")
    p.add_argument("--redact", action="store_true", help="leave client images out of the report")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    result = run_demo(args.out, quick=args.quick, force=args.force, progress=not args.quiet, redact=args.redact)
    print(f"demo audit: risk {result.risk or 'not rated'} -> {result.report or result.out}")
    return 0
