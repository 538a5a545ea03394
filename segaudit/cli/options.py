"""The option groups the sub-commands share, and the parser that turns a bad option into one line.

Choices come from the registries (:data:`~segaudit.losses.LOSSES`, ...), so a newly registered entry appears here.
"""
from __future__ import annotations

import argparse
import os

from ..errors import SegauditError
from ..losses import LOSSES
from ..preprocessing import SCALES
from ..types import CLIENT_MODE, CLIENT_MODES, FL_MODES, ClientProtocol


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        raise SegauditError(f"{message} (see '{self.prog} --help')")


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when it is set, else the cores this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def quiet_option() -> Parser:
    """``--quiet`` on a sub-command (a parent parser; the top-level ``--quiet`` is the same flag)."""
    quiet = Parser(add_help=False)
    quiet.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    return quiet


def threads_option() -> Parser:
    """``--threads`` on a command that computes (a parent parser)."""
    compute = Parser(add_help=False)
    compute.add_argument("--threads", type=int, metavar="N",
                         help="torch threads (default: OMP_NUM_THREADS, else this machine's cores: "
                              f"{default_threads()}); on a machine where other jobs hold cores, fewer threads run "
                              "much faster")
    return compute


def add_command(sub, name: str, help: str, computes: bool = True) -> Parser:
    """A sub-command of ``sub``: every command takes --quiet; those that compute also --threads."""
    parents = [quiet_option(), threads_option()] if computes else [quiet_option()]
    return sub.add_parser(name, help=help, description=help, parents=parents)


def add_seed(p) -> None:
    """``--seed``: seeds every generator before anything is built (see :func:`segaudit.cli.app.main`)."""
    p.add_argument("--seed", type=int, default=0)


def add_model_args(p: argparse.ArgumentParser, arch: str | None = "unet") -> None:
    """The ``model`` group: a trained ``--model`` or a fresh ``--arch``/``--encoder``, and its input normalisation."""
    g = p.add_argument_group("model")
    g.add_argument("--model", metavar="DIR", help="a trained model folder (save_pretrained) or checkpoint")
    g.add_argument("--arch", default=arch, help=f"architecture when no --model is given (default: {arch})")
    g.add_argument("--encoder", help="smp encoder (default: resnet18 for segmentation archs)")
    add_preprocessing_args(g)


def add_preprocessing_args(g) -> None:
    """The input normalisation the model was trained with; overrides what its spec records."""
    g.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean the model's inputs were normalised with, "
                   "in the units of --scale (overrides the model's spec; e.g. 0 with --std 1 for x/255)")
    g.add_argument("--std", metavar="S[,S,S]", help="per-channel std, with --mean")
    g.add_argument("--scale", type=float, choices=SCALES, metavar="1|255",
                   help="pixel value range --mean/--std refer to: 1 ([0, 1], default) or 255 ([0, 255])")


def add_data_args(p: argparse.ArgumentParser, size: int = 64) -> None:
    """The ``data`` group: a bundled dataset or a folder, its classes and the image size."""
    g = p.add_argument_group("data")
    g.add_argument("--data", default="nuclei", metavar="NAME|DIR",
                   help="bundled dataset name or folder with images/ and masks/")
    g.add_argument("--classes", type=int, help="number of classes when the folder has no classes.json")
    g.add_argument("--size", type=int, default=size, help=f"image size in pixels (default: {size})")


def add_protocol_args(p: argparse.ArgumentParser, group: str | None = "client protocol", loss: bool = False) -> None:
    """The client's protocol: FedSGD or FedAvg (local steps, learning rate), with ``loss`` its ``--loss``, and the
    model's mode. ``group=None`` puts them among ``p``'s own options, without help texts (as ``update`` shows them)."""
    target = p.add_argument_group(group) if group else p
    described = group is not None
    target.add_argument("--mode", choices=FL_MODES, default="fedsgd")
    target.add_argument("--local-steps", type=int, default=1, help="FedAvg local steps" if described else None)
    target.add_argument("--lr", type=float, default=0.01,
                        help="the client's FedAvg learning rate" if described else None)
    if loss:
        target.add_argument("--loss", choices=LOSSES, default="ce")
    add_client_mode(target)


def add_client_mode(p, default: str | None = CLIENT_MODE) -> None:
    """``--client-mode``: the same default for every command (see :data:`segaudit.types.CLIENT_MODE`)."""
    p.add_argument("--client-mode", choices=CLIENT_MODES, default=default,
                   help=f"the client's model mode: train (BatchNorm on the batch's statistics, as real clients "
                        f"train) or eval (running statistics, the easier case for the attacker); default {CLIENT_MODE}")


def client_protocol(args) -> ClientProtocol:
    """The client's protocol from the options :func:`add_protocol_args` adds (``--loss`` where there is one)."""
    return ClientProtocol(args.mode, getattr(args, "loss", "ce"), local_steps=args.local_steps, lr=args.lr,
                          client_mode=args.client_mode)


def add_out_args(p: argparse.ArgumentParser, default: str | None = None, metavar: str = "DIR",
                 help: str = "output folder", force_help: str = "overwrite a non-empty output folder") -> None:
    """``--out`` (required unless it has a ``default``) and ``--force``."""
    p.add_argument("--out", metavar=metavar, required=default is None, default=default, help=help)
    p.add_argument("--force", action="store_true", help=force_help)
