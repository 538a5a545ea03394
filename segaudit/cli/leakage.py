"""``segaudit layers`` (per-layer leakage scores) and ``segaudit check-update`` (the leakage gate)."""
from __future__ import annotations

from ..data import make_batch
from ..errors import SegauditError
from ..io import atomic_dir, check_out_dir, write_json
from ..leakage import gate_update, layer_scores
from ..models import load_model
from ..preprocessing import normalisation
from ..report.plots import layer_scores_chart
from ..types import ClientProtocol
from ..updates import load_update
from .inputs import attack_data, batch_fit, batch_stride, environment, model_for
from .options import add_client_mode, add_command, add_data_args, add_model_args, add_out_args, add_seed


def add_layers_parser(sub) -> None:
    p = add_command(sub, "layers", "per-layer leakage scores of a model (attack, analytic, sensitivity); "
                                   "writes layers.json and layers.png")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--image", metavar="FILE", help="score one image instead of --data crops")
    p.add_argument("--mask", metavar="FILE", help="the mask of --image")
    p.add_argument("--batch-size", type=int, default=1)
    add_client_mode(p)
    p.add_argument("--steps", type=int, default=30, help="attack steps per layer group (default: 30)")
    add_seed(p)
    add_out_args(p)
    p.set_defaults(func=cmd_layers)


def cmd_layers(args) -> int:
    out = check_out_dir(args.out, args.force)
    data = attack_data(args)
    model = model_for(args, data)
    if args.batch_size < 1:
        raise SegauditError(f"--batch-size must be at least 1, got {args.batch_size}")
    batch = make_batch(data, [i % len(data) for i in range(args.batch_size)], size=args.size, seed=args.seed,
                       fit=batch_fit(data, args.size), stride=batch_stride(model), **normalisation(model))
    report = layer_scores(model, batch, ClientProtocol(client_mode=args.client_mode), data=data, steps=args.steps,
                          seed=args.seed, show_progress=not args.quiet)
    with atomic_dir(out) as tmp:
        write_json(tmp / "layers.json", {**report.to_dict(), **environment()})
        layer_scores_chart(report, tmp / "layers.png")
    print(f"most exposed: {', '.join(report.ranking()[:3])} ({report.runtime_s['total']:.0f} s) -> {out}")
    return 0


def add_check_update_parser(sub) -> None:
    p = add_command(sub, "check-update", "leakage gate: risk score of a client update before it is shared; "
                                         "exit 0 below the threshold, 3 above it")
    p.add_argument("--model", metavar="DIR", required=True, help="the global model the update was computed on")
    p.add_argument("--update", metavar="FILE", required=True,
                   help="the update (.safetensors, gradients or weight delta)")
    p.add_argument("--threshold", type=float, default=0.5, help="risk above which the update is refused (default: 0.5)")
    p.add_argument("--size", type=int, default=64, help="side of the client's images in pixels (default: 64)")
    p.set_defaults(func=cmd_check_update)


def cmd_check_update(args) -> int:
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
