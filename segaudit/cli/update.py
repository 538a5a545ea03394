"""``segaudit update``: simulate one client's update and save it as safetensors."""
from __future__ import annotations

from ..data import load_dataset, make_batch
from ..fl import client_update
from ..io import check_out_file
from ..preprocessing import normalisation
from ..updates import save_update
from .inputs import model_for
from .options import (
    add_command,
    add_data_args,
    add_model_args,
    add_out_args,
    add_protocol_args,
    add_seed,
    client_protocol,
)


def add_update_parser(sub) -> None:
    p = add_command(sub, "update", "simulate one client's update and save it as safetensors")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--batch-size", type=int, default=1)
    add_protocol_args(p, group=None, loss=True)
    add_seed(p)
    add_out_args(p, metavar="FILE", help="output .safetensors file", force_help="overwrite an existing file")
    p.set_defaults(func=cmd_update)


def cmd_update(args) -> int:
    check_out_file(args.out, args.force, ".safetensors")
    data = load_dataset(args.data, classes=args.classes)
    model = model_for(args, data)
    batch = make_batch(data, list(range(args.batch_size)), size=args.size, seed=args.seed, fit="crop",
                       **normalisation(model))
    update = client_update(model, batch, client_protocol(args))
    path = save_update(update, args.out, force=args.force)
    print(f"{update.kind} of {len(update.tensors)} tensors, norm {update.norm():.4g} -> {path}")
    return 0
