"""Build a model by arch name (or from its spec) and record its spec on it."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from segaudit.errors import SegauditError

from .activations import check_no_relu, replace_relu_with_sigmoid
from .catalog import MONAI_ARCHS, SEGMENTATION_ARCHS, canonical_arch, task_of
from .classifiers import build_classifier
from .dp_compatible import make_private_model
from .monai_nets import build_monai
from .preprocessing import SEGAUDIT_DEFAULT, Preprocessing
from .segmentation import build_smp
from .sizes import smp_facts
from .spec import check_count, jsonable, normalise_spec, unwrap

ACTIVATIONS = ("relu", "sigmoid")


def _check_activation(activation: str | None, arch: str) -> str:
    if activation is None:
        return "sigmoid" if arch == "lenet" else "relu"
    if activation not in ACTIVATIONS:
        raise SegauditError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    return activation


def build_model(
    arch: str,
    encoder: str | None = None,
    in_channels: int = 3,
    classes: int = 2,
    *,
    activation: str | None = None,
    encoder_weights: str | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    **options: Any,
) -> nn.Module:
    """Build a segmentation or classification model and record its spec on it.

    Args:
        arch: a name of :func:`available_archs`, case-insensitive (``"unet"``, ``"deeplabv3plus"``,
            ``"monai.unet"``, ``"lenet"``, ...). ``monai.*`` names build MONAI's 2-D networks
            (:mod:`segaudit.models.monai_nets`; ``pip install 'segaudit[monai]'``).
        encoder: smp encoder name for segmentation (default ``"resnet18"``; e.g. ``"efficientnet-b0"``,
            ``"mobilenet_v2"``, ``"tu-<timm model>"``); must be ``None`` for MONAI and classification.
        in_channels: C, channels of the input images.
        classes: K, output classes (mask channels for segmentation).
        activation: ``"relu"`` (default; ``"sigmoid"`` for LeNet) or ``"sigmoid"``, which replaces every
            ReLU/ReLU6 by a sigmoid. Gradient-matching attacks need twice-differentiable models; other
            activations (SiLU, GELU) are kept as they are.
        encoder_weights: smp pretrained encoder weights. ``None`` (default) never touches the network;
            a name such as ``"imagenet"`` downloads unless the weights are cached. Classification
            models take no pretrained weights: load trained ones with :func:`load_model`.
        preprocessing: the input normalisation the model is trained with, ``{"mean", "std", "scale"}``
            (see :mod:`segaudit.preprocessing`); default segaudit's own, ``(x - 0.5) / 0.5``.
        **options: JSON-able constructor options, e.g. ``decoder_channels=[128, 64, 32, 16, 8]``,
            ``encoder_depth=4`` (smp), ``head_activation="sigmoid"`` (smp's output ``activation``),
            ``channels=[8, 16, 32]``/``strides=[2, 2]`` (``monai.unet``), ``size=28`` (LeNet).

    Returns:
        The model, in train mode, with ``model.segaudit_spec`` set. Segmentation: ``[N, C, H, W]`` ->
        ``[N, K, H, W]``; classification: ``[N, C, H, W]`` -> ``[N, K]``. Parameters the forward never
        reaches get ``requires_grad=False`` (PSPNet's default ``encoder_depth=3`` leaves a ResNet's
        ``encoder.layer3``/``layer4`` unused), so every parameter that requires a gradient gets one.

    Raises:
        SegauditError: unknown arch or encoder, bad option, or a ReLU the sigmoid option cannot remove.

    Example:
        >>> net = build_model("lenet", classes=10)          # the DLG LeNet, sigmoid, 32x32
        >>> net(torch.zeros(1, 3, 32, 32)).shape
        torch.Size([1, 10])
    """
    name = canonical_arch(arch)
    check_count("in_channels", in_channels)
    check_count("classes", classes)
    activation = _check_activation(activation, name)
    options = jsonable(options)
    if name in SEGMENTATION_ARCHS:
        encoder = encoder or "resnet18"
        model = build_smp(name, encoder, in_channels, classes, encoder_weights, options)
        _freeze(model, smp_facts(name, encoder, options).unused)
    elif name in MONAI_ARCHS:
        if encoder is not None:
            raise SegauditError(f"{name} takes no encoder (its options set its widths, e.g. channels or "
                                f"feature_size); drop --encoder")
        model = build_monai(name, in_channels, classes, options)
    else:
        model = build_classifier(name, encoder, in_channels, classes, activation, encoder_weights, options)
    spec = {
        "arch": name,
        "encoder": encoder,
        "in_channels": in_channels,
        "classes": classes,
        "activation": activation,
        "task": task_of(name),
        "options": options,
        "preprocessing": Preprocessing.from_dict(preprocessing or SEGAUDIT_DEFAULT, in_channels).to_dict(),
    }
    if activation == "sigmoid":
        replace_relu_with_sigmoid(model)
        check_no_relu(model, spec)
    model.segaudit_spec = spec
    return model


def build_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Build the model a spec describes (see :func:`model_spec`); no weights are loaded.

    Args:
        spec: ``{"arch", "encoder", "in_channels", "classes", "activation", "task", "options"}``; only
            ``arch`` is required. Other keys are taken as options (handy in YAML). An smp
            ``config.json`` dict (with ``_model_class`` or ``encoder_name``) is accepted too.
    """
    spec = normalise_spec(spec, "the model spec")
    return build_normalised(spec, encoder_weights=spec.pop("encoder_weights", None))


def build_normalised(spec: Mapping[str, Any], encoder_weights: str | None = None) -> nn.Module:
    """build_model from a normalised spec (then Opacus's GroupNorm fix if the spec says ``dp_compatible``)."""
    model = build_model(
        spec["arch"],
        spec["encoder"],
        spec["in_channels"],
        spec["classes"],
        activation=spec["activation"],
        encoder_weights=encoder_weights,
        **spec["options"],
    )
    if spec.get("dp_compatible"):
        model = make_private_model(model)[0]
    # what the spec says, and nothing when it says nothing: a checkpoint's normalisation is never assumed
    unwrap(model)[0].segaudit_spec["preprocessing"] = spec.get("preprocessing")
    return model


def _freeze(model: nn.Module, names: frozenset[str]) -> None:
    """Why: gradient consumers (FedSGD updates keyed by name, Opacus per-sample gradients) expect every
    parameter that requires a gradient to get one; parameters the forward never reaches would not."""
    for name, parameter in model.named_parameters():
        if name in names:
            parameter.requires_grad_(False)
