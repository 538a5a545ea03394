"""Run the Flower example (app.py) in Flower's simulation engine, every client behind segaudit's leakage gate.

    python examples/flower/run.py --data nuclei --size 32 --clients 2 --rounds 1 --batch-sizes 1,8 --out runs/flower

Client i trains on ``B[i % len(B)]`` images of ``--data`` (a bundled dataset name or a folder; each client its
own images). Writes, under ``--out`` (which appears whole, when the run ends):

* ``rounds.json``: ``{"clients": [{"round", "client", "node", "batch_size", "risk", "blocked", "update"}, ...]}``,
  one row per gate decision (``client``: the simulation's partition id; ``update``: the captured file);
* ``updates/round-<R>-node-<node>.safetensors``: every update a client computed, blocked ones included;
* ``gate/round-<R>-node-<node>.json``: the gate's decisions;
* ``models/global-<R>``: the global model after round R (``global-0``: the initial one), the model round R + 1's
  clients trained from. ``segaudit check-update --model OUT/models/global-0 --update
  OUT/updates/round-1-node-<node>.safetensors --size 32`` scores what Flower really sent in round 1, and
  ``ATTACKS.create("seg").run(load_model(...), load_update(...), prior)`` attacks it (docs/integrations.md).

Bad arguments: one line ``error: ...`` on stderr, exit code 2. Flower's telemetry is off unless
``FLWR_TELEMETRY_ENABLED`` says otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # before flwr is imported: no network calls
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # app.py sits beside this file; Flower passes sys.path on to its Ray workers
    sys.path.insert(0, HERE)

from segaudit.errors import SegauditError  # noqa: E402


class Parser(argparse.ArgumentParser):
    """Argument errors as :class:`SegauditError` (one line, exit 2) instead of argparse's usage text."""

    def error(self, message: str):
        raise SegauditError(message)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="a bundled dataset name (nuclei, brain_mri) or a folder")
    p.add_argument("--classes", type=int, help="class count of a folder without classes.json")
    p.add_argument("--size", type=int, default=32, help="image side in pixels, a multiple of 32 (default: 32)")
    p.add_argument("--clients", type=int, default=2, help="simulated clients (default: 2)")
    p.add_argument("--rounds", type=int, default=1, help="FedAvg rounds (default: 1)")
    p.add_argument("--batch-sizes", default="1,8", metavar="B,B",
                   help="images per client, client i taking B[i %% len(B)] (default: 1,8)")
    p.add_argument("--lr", type=float, default=0.01, help="the clients' SGD learning rate (default: 0.01)")
    p.add_argument("--local-steps", type=int, default=2, help="local SGD steps per round (default: 2)")
    p.add_argument("--local-batch-size", type=int,
                   help="local mini-batch size (default: the largest B, i.e. each client's whole batch)")
    p.add_argument("--client-mode", choices=("train", "eval"), default="train")
    p.add_argument("--threshold", type=float, default=0.5, help="the gate's risk threshold (default: 0.5)")
    p.add_argument("--action", choices=("block", "flag"), default="block")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    return p.parse_args(argv)


def batch_sizes(text: str) -> list[int]:
    """``"1,8"`` -> ``[1, 8]``, refusing anything but positive integers."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise SegauditError(f"--batch-sizes must be positive integers separated by commas, got {text!r}")
    return sizes


def check_args(args: argparse.Namespace) -> list[int]:
    """Refuse bad numbers with one line each; the batch sizes."""
    from segaudit.data import check_size_multiple

    for name in ("clients", "rounds", "local_steps"):
        if getattr(args, name) < 1:
            raise SegauditError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.local_batch_size is not None and args.local_batch_size < 1:
        raise SegauditError(f"--local-batch-size must be at least 1, got {args.local_batch_size}")
    if not args.lr > 0:
        raise SegauditError(f"--lr must be positive, got {args.lr}")
    if not 0 <= args.threshold <= 1:
        raise SegauditError(f"--threshold must be in [0, 1], got {args.threshold}")
    check_size_multiple(args.size, 32)
    return batch_sizes(args.batch_sizes)


def simulate(server_app, client_app, clients: int) -> None:
    """Run the apps in Flower's simulation engine on a new local Ray instance (never a cluster ``RAY_ADDRESS`` or
    ``ray start`` names), one CPU per client, as many at once as the machine has cores; the instance is shut down
    after if this call started it."""
    import ray
    from flwr.simulation import run_simulation

    started = not ray.is_initialized()
    init = {"address": "local", "num_cpus": min(clients, os.cpu_count() or 1), "include_dashboard": False,
            "log_to_driver": False}
    try:
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=clients,
                       backend_config={"init_args": init, "client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


def collect(out: Path) -> list[dict]:
    """The rows of ``rounds.json`` from the gate's decision files, by round then client."""
    rows = []
    for path in sorted((out / "gate").glob("round-*-node-*.json")):
        d = json.loads(path.read_text())
        update = Path("updates") / path.with_suffix(".safetensors").name
        rows.append({"round": d["round"], "client": d["partition"], "node": d["node"], "batch_size": d["batch_size"],
                     "risk": d["risk"], "blocked": d["blocked"],
                     "update": str(update) if (out / update).is_file() else None})
    return sorted(rows, key=lambda r: (str(r["round"]).zfill(9), r["client"] if r["client"] is not None else -1))


def run(args: argparse.Namespace) -> int:
    sizes = check_args(args)
    from segaudit.integrations.gating import require_extra

    require_extra("flwr", "flower")
    from app import client_app, client_images, server_app, small_unet  # noqa: I001 (this folder, on sys.path)
    from segaudit.data import load_dataset
    from segaudit.io import atomic_dir, check_out_dir, check_replaceable, write_json

    dataset = load_dataset(args.data, classes=args.classes)
    images = client_images(sizes, args.clients)
    needed = images[-1][-1] + 1
    if needed > len(dataset):
        raise SegauditError(f"{args.clients} clients with batch sizes {args.batch_sizes} need {needed} distinct images "
                            f"but {args.data} holds {len(dataset)}; use fewer clients or smaller batches")
    out = check_out_dir(args.out, args.force)
    if out.exists() and dataset.root is not None:
        check_replaceable(out, keep={"data": dataset.root})
    model = small_unet(dataset.channels, dataset.num_classes)
    config = {"lr": args.lr, "local-steps": args.local_steps, "batch-size": args.local_batch_size or max(sizes),
              "client-mode": args.client_mode}
    start = time.perf_counter()
    with atomic_dir(out) as tmp:
        simulate(server_app(model, args.clients, args.rounds, config, tmp),
                 client_app(model, args.data, args.classes, args.size, images, tmp, args.threshold, args.action),
                 args.clients)
        rows = collect(tmp)
        write_json(tmp / "rounds.json", {"clients": rows})
    print(f"{len(rows)} gate decisions in {time.perf_counter() - start:.1f} s -> {out / 'rounds.json'}")
    for r in rows:
        verdict = "blocked" if r["blocked"] else "sent"
        print(f"  round {r['round']} client {r['client']} (batch {r['batch_size']}): risk {r['risk']:.3f}, {verdict}")
    if len(rows) < args.clients * args.rounds:
        print(f"error: only {len(rows)} of {args.clients * args.rounds} client updates reached the gate; "
              "see Flower's log above", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run(parse_args(argv))
    except SegauditError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
