"""What the sub-commands load from their options: the model, the client's images, the run's environment."""
from __future__ import annotations

import torch

from ..checks import check_model_fits_data, model_source
from ..data import load_dataset, load_pair
from ..errors import SegauditError
from ..models import build_model, is_segmentation, load_model, model_spec, size_rules
from ..preprocessing import Preprocessing, declare
from ..preprocessing import of as preprocessing_of


def preprocessing_from_args(args, channels: int):
    """The ``--mean/--std/--scale`` flags as a :class:`~segaudit.preprocessing.Preprocessing`, or None."""
    mean, std, scale = (getattr(args, k, None) for k in ("mean", "std", "scale"))
    if mean is None and std is None:
        if scale is not None:
            raise SegauditError("--scale needs --mean and --std (the normalisation it refers to)")
        return None
    return Preprocessing.parse(mean, std, scale, channels=channels)


def model_for(args, data):
    """The trained ``--model`` or a fresh ``--arch`` model for the data, checked against the data's channels and
    classes and with a known input normalisation (``--mean/--std`` override its spec) before any work."""
    path = getattr(args, "model", None)
    if path:
        model = load_model(path)
        declared = preprocessing_from_args(args, model.segaudit_spec["in_channels"])
        if declared is not None:
            declare(model, declared)
    else:
        extra = {"size": args.size} if args.arch.lower() == "lenet" else {}
        channels = getattr(args, "in_channels", None) or data.channels
        declared = preprocessing_from_args(args, channels)
        model = build_model(args.arch, encoder=args.encoder, classes=args.classes or data.num_classes,
                            in_channels=channels, preprocessing=declared and declared.to_dict(), **extra)
    check_model_fits_data(model, data, model_source(path) if path else "--in-channels/--classes")
    preprocessing_of(model, source=path)
    return model


def environment() -> dict:
    """What else determines a run's numbers, recorded beside them."""
    return {"threads": torch.get_num_threads()}


def attack_data(args):
    """The images ``segaudit attack`` (or ``layers``) draws the client's batch from: one --image or a --data set."""
    if args.image:
        if args.batch_size != 1:
            raise SegauditError("--image gives one image: use --batch-size 1, or --data for larger batches")
        return load_pair(args.image, args.mask, args.classes or 2)
    return load_dataset(args.data, classes=args.classes)


def batch_fit(data, size: int) -> str:
    """Random ``size`` crops when every image side is at least ``size`` (any aspect ratio), else scale the longer
    side to ``size`` and zero-pad the shorter one (see :func:`segaudit.data.make_batch`)."""
    return "crop" if data.min_size >= size else "resize"


def batch_stride(model) -> int:
    """What ``--size`` must be a multiple of: a segmentation model's output stride (as ``train`` and ``audit``
    require, even where smp would interpolate), else whatever the classifier needs."""
    spec = model_spec(model)
    rules = size_rules(spec["arch"], spec["encoder"], **spec["options"])
    return rules.output_stride if is_segmentation(model) else rules.multiple
