"""Build, inspect, save and load the networks segaudit audits.

Two families of models:

* **segmentation**: the architectures of segmentation-models-pytorch (smp), built by
  their classes with ``encoder_weights=None`` unless asked otherwise, so nothing is downloaded.
  Output: logits ``[N, K, H, W]`` for images ``[N, C, H, W]``.
* **classification**: the baselines of the gradient-leakage literature (LeNet of Deep Leakage from
  Gradients, torchvision ResNet-18, DenseNet-121, Inception-v3). Output: logits ``[N, K]``.

Every model built here carries its spec (``model.segaudit_spec``, see :func:`model_spec`), a JSON-able
dict from which :func:`build_from_spec` rebuilds the same network, so weights can be saved with
:func:`save_model` and reloaded with :func:`load_model`. Loading reads safe formats only (safetensors,
JSON, ``torch.load(weights_only=True)``); no file can run code.

:func:`layer_groups` splits the parameters into named groups (encoder stages, decoder blocks, skip
paths, head) for per-layer leakage scores.

Example:
    >>> model = build_model("unet", "resnet18", in_channels=1, classes=3)
    >>> model(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 3, 64, 64])
    >>> [g.name for g in layer_groups(model)][:3]
    ['encoder.stem', 'encoder.layer1', 'encoder.layer2']
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import math
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from segaudit.errors import SegauditError
from segaudit.preprocessing import SEGAUDIT_DEFAULT, Preprocessing

__all__ = [
    "LayerGroup",
    "LeNet",
    "SizeRules",
    "available_archs",
    "build_from_spec",
    "build_model",
    "check_input_size",
    "is_segmentation",
    "layer_groups",
    "load_model",
    "min_size",
    "model_spec",
    "output_stride",
    "save_model",
    "size_rules",
]

GroupKind = Literal["encoder", "decoder", "skip", "head", "other"]

# Our names -> smp class names. DPT is left out: smp builds it only on a timm ViT encoder ("tu-vit_..."),
# refusing resnet18 and every other CNN encoder, and ViT-sized models are too heavy for CPU audits.
SEGMENTATION_ARCHS: dict[str, str] = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "manet": "MAnet",
    "linknet": "Linknet",
    "fpn": "FPN",
    "pspnet": "PSPNet",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
}
CLASSIFICATION_ARCHS: tuple[str, ...] = ("lenet", "resnet18", "densenet121", "inception_v3")
_ARCH_ALIASES = {"unet++": "unetplusplus", "deeplabv3+": "deeplabv3plus", "inceptionv3": "inception_v3"}
_ARCH_BY_SMP_CLASS = {cls: arch for arch, cls in SEGMENTATION_ARCHS.items()}

ACTIVATIONS = ("relu", "sigmoid")
# ReLU and ReLU6 are piecewise linear (zero curvature), which is what the sigmoid option removes.
_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_RELU_FUNCTIONS = frozenset({"relu", "relu_", "relu6", "hardtanh", "hardtanh_"})

# Archs with BatchNorm after a global pooling: in train mode they need at least 2 images per batch.
_GLOBAL_POOL_BN = frozenset({"deeplabv3", "deeplabv3plus", "pan", "upernet"})
# PAN's feature pyramid attention halves the deepest map three times: it needs at least 8x8 there.
_MIN_DEEPEST_MAP = {"pan": 8}

SPEC_FILE = "segaudit.json"
SMP_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
_SPEC_KEYS = ("arch", "encoder", "in_channels", "classes", "activation", "task", "options", "dp_compatible",
              "preprocessing")
# smp config keys that map onto our spec fields rather than onto options.
_SMP_SPEC_KEYS = ("encoder_name", "encoder_weights", "in_channels", "classes", "activation")


# --------------------------------------------------------------------------------------------------
# Lazy imports: smp (through timm) and torchvision take seconds to import.


def _smp():
    from segaudit._compat import patch_torchvision

    patch_torchvision()
    import segmentation_models_pytorch

    return segmentation_models_pytorch


def _torchvision_models():
    from segaudit._compat import patch_torchvision

    patch_torchvision()
    import torchvision.models

    return torchvision.models


# --------------------------------------------------------------------------------------------------
# Classification baselines


def _lenet_feature_size(size: int) -> int:
    """Side of LeNet's last feature map: two 5x5 convs with stride 2 and padding 2."""
    for _ in range(2):
        size = (size - 1) // 2 + 1
    return size


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    if isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return int(size[0]), int(size[1])
    raise SegauditError(f"size must be an int or [height, width], got {size!r}")


class LeNet(nn.Module):
    """The LeNet of Deep Leakage from Gradients (Zhu et al., NeurIPS 2019), layer for layer.

    ``body``: conv(C, 12, 5, stride 2) -> act -> conv(12, 12, 5, stride 2) -> act -> conv(12, 12, 5,
    stride 1) -> act, all with padding 2; ``fc``: linear(12 * H/4 * W/4 -> K), i.e. 768 -> K for 32x32.
    The activation is a sigmoid as in the paper (twice differentiable, which gradient matching needs).

    Args:
        in_channels: C.
        classes: K.
        size: input side (or ``[height, width]``) the linear layer is sized for; inputs must match it.
        activation: ``"sigmoid"`` (paper) or ``"relu"``.
        dlg_init: initialise every weight and bias uniformly in [-0.5, 0.5] as the DLG code does.

    Shapes:
        ``[N, C, H, W]`` -> ``[N, K]``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        classes: int = 10,
        size: int | Sequence[int] = 32,
        activation: str = "sigmoid",
        dlg_init: bool = True,
    ):
        super().__init__()
        act = nn.Sigmoid if activation == "sigmoid" else nn.ReLU
        self.size = _pair(size)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 12, kernel_size=5, padding=5 // 2, stride=2),
            act(),
            nn.Conv2d(12, 12, kernel_size=5, padding=5 // 2, stride=2),
            act(),
            nn.Conv2d(12, 12, kernel_size=5, padding=5 // 2, stride=1),
            act(),
        )
        hidden = 12 * _lenet_feature_size(self.size[0]) * _lenet_feature_size(self.size[1])
        self.fc = nn.Sequential(nn.Linear(hidden, classes))
        if dlg_init:
            for parameter in self.parameters():
                nn.init.uniform_(parameter, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            h, w = x.shape[-2:]
            raise SegauditError(
                f"this LeNet takes {self.size[0]}x{self.size[1]} images, got {h}x{w}: "
                f"resize the images or build it with size={h if h == w else [h, w]}"
            )
        return self.fc(self.body(x).flatten(1))


@functools.cache
def _torchvision_blocks() -> tuple[type, type]:
    """DenseNet and Inception building blocks whose every ReLU is a module.

    Why: torchvision's DenseNet applies its last ReLU with ``F.relu`` in ``forward`` and Inception's
    ``BasicConv2d`` does the same, so swapping ``nn.ReLU`` modules would miss them. These subclasses
    keep the parameter names (state dicts stay compatible) and route those ReLUs through modules.
    """
    tvm = _torchvision_models()
    from torchvision.models.inception import BasicConv2d

    class DenseNet(tvm.DenseNet):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.final_act = nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.final_act(self.features(x))
            out = nn.functional.adaptive_avg_pool2d(out, (1, 1))
            return self.classifier(torch.flatten(out, 1))

    class ActBasicConv2d(BasicConv2d):
        def __init__(self, in_channels: int, out_channels: int, **kwargs):
            super().__init__(in_channels, out_channels, **kwargs)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.bn(self.conv(x)))

    return DenseNet, ActBasicConv2d


def _resnet18(in_channels: int, classes: int, **options) -> nn.Module:
    model = _torchvision_models().resnet18(weights=None, num_classes=classes, **options)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def _densenet121(in_channels: int, classes: int, **options) -> nn.Module:
    densenet, _ = _torchvision_blocks()
    model = densenet(32, (6, 12, 24, 16), 64, num_classes=classes, **options)
    if in_channels != 3:
        model.features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.features.conv0.weight)
    return model


def _inception_v3(in_channels: int, classes: int, **options) -> nn.Module:
    from torchvision.models import inception as tv_inception

    _, basic_conv = _torchvision_blocks()
    # Inception3 hands its conv block to the stem only: the Mixed blocks need it passed explicitly.
    mixed = ("InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE", "InceptionAux")
    blocks = [basic_conv] + [functools.partial(getattr(tv_inception, n), conv_block=basic_conv) for n in mixed]
    options = {"aux_logits": False, "init_weights": True, **options}
    model = tv_inception.Inception3(num_classes=classes, inception_blocks=blocks, **options)
    if in_channels != 3:
        model.Conv2d_1a_3x3 = basic_conv(in_channels, 32, kernel_size=3, stride=2)
        nn.init.trunc_normal_(model.Conv2d_1a_3x3.conv.weight, mean=0.0, std=0.1, a=-2, b=2)
    return model


def _lenet(in_channels: int, classes: int, activation: str = "sigmoid", **options) -> nn.Module:
    return LeNet(in_channels, classes, activation=activation, **options)


_CLASSIFIER_FACTORIES = {
    "lenet": _lenet,
    "resnet18": _resnet18,
    "densenet121": _densenet121,
    "inception_v3": _inception_v3,
}


# --------------------------------------------------------------------------------------------------
# Building


def available_archs() -> dict[str, list[str]]:
    """Architecture names by task.

    Returns:
        ``{"segmentation": [...], "classification": [...]}``; names are case-insensitive in
        :func:`build_model`.
    """
    return {"segmentation": list(SEGMENTATION_ARCHS), "classification": list(CLASSIFICATION_ARCHS)}


def _canonical_arch(arch: str) -> str:
    if not isinstance(arch, str):
        raise SegauditError(f"model arch must be a name, got {arch!r}")
    name = arch.strip().lower().replace("-", "_")
    name = _ARCH_ALIASES.get(name, name)
    if name in SEGMENTATION_ARCHS or name in CLASSIFICATION_ARCHS:
        return name
    archs = available_archs()
    raise SegauditError(
        f"unknown model arch {arch!r}; available: segmentation: {', '.join(archs['segmentation'])}; "
        f"classification: {', '.join(archs['classification'])}"
    )


def _task_of(arch: str) -> str:
    return "segmentation" if arch in SEGMENTATION_ARCHS else "classification"


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SegauditError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_activation(activation: str | None, arch: str) -> str:
    if activation is None:
        return "sigmoid" if arch == "lenet" else "relu"
    if activation not in ACTIVATIONS:
        raise SegauditError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    return activation


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options as JSON would give them back (tuples become lists), so specs round-trip exactly."""
    try:
        return json.loads(json.dumps(dict(options)))
    except (TypeError, ValueError) as error:
        raise SegauditError(
            f"model options must be JSON values (numbers, strings, lists, dicts) so the model can be "
            f"saved and reloaded: {error}"
        ) from None


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
            ``"lenet"``, ...).
        encoder: smp encoder name for segmentation (default ``"resnet18"``; e.g. ``"efficientnet-b0"``,
            ``"mobilenet_v2"``, ``"tu-<timm model>"``); must be ``None`` for classification.
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
            ``size=28`` (LeNet).

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
    name = _canonical_arch(arch)
    _check_count("in_channels", in_channels)
    _check_count("classes", classes)
    activation = _check_activation(activation, name)
    options = _jsonable(options)
    if name in SEGMENTATION_ARCHS:
        encoder = encoder or "resnet18"
        model = _build_smp(name, encoder, in_channels, classes, encoder_weights, options)
        _freeze(model, _smp_facts(name, encoder, options).unused)
    else:
        model = _build_classifier(name, encoder, in_channels, classes, activation, encoder_weights, options)
    spec = {
        "arch": name,
        "encoder": encoder,
        "in_channels": in_channels,
        "classes": classes,
        "activation": activation,
        "task": _task_of(name),
        "options": options,
        "preprocessing": Preprocessing.from_dict(preprocessing or SEGAUDIT_DEFAULT, in_channels).to_dict(),
    }
    if activation == "sigmoid":
        _replace_relu_with_sigmoid(model)
        _check_no_relu(model, spec)
    model.segaudit_spec = spec
    return model


def build_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Build the model a spec describes (see :func:`model_spec`); no weights are loaded.

    Args:
        spec: ``{"arch", "encoder", "in_channels", "classes", "activation", "task", "options"}``; only
            ``arch`` is required. Other keys are taken as options (handy in YAML). An smp
            ``config.json`` dict (with ``_model_class`` or ``encoder_name``) is accepted too.
    """
    spec = _normalise_spec(spec, "the model spec")
    return _build(spec, encoder_weights=spec.pop("encoder_weights", None))


def _build(spec: Mapping[str, Any], encoder_weights: str | None = None) -> nn.Module:
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
        from .privacy import make_private_model

        model = make_private_model(model)[0]
    # what the spec says, and nothing when it says nothing: a checkpoint's normalisation is never assumed
    _unwrap(model)[0].segaudit_spec["preprocessing"] = spec.get("preprocessing")
    return model


def _smp_class_options(model_class: type, encoder: str) -> set[str] | None:
    """Option names the smp class takes; ``None`` when any name goes (timm encoders take **kwargs)."""
    if encoder.startswith("tu-"):
        return None
    parameters = inspect.signature(model_class.__init__).parameters
    return {n for n, p in parameters.items() if n != "self" and p.kind is not p.VAR_KEYWORD}


def _build_smp(
    arch: str,
    encoder: str,
    in_channels: int,
    classes: int,
    encoder_weights: str | None,
    options: dict[str, Any],
) -> nn.Module:
    smp = _smp()
    if not isinstance(encoder, str) or not (encoder in smp.encoders.get_encoder_names() or encoder.startswith("tu-")):
        raise SegauditError(
            f"unknown encoder {encoder!r}; use a name of segmentation_models_pytorch.encoders."
            f"get_encoder_names() (e.g. resnet18, resnet34, efficientnet-b0, mobilenet_v2) or 'tu-<timm model>'"
        )
    model_class = getattr(smp, SEGMENTATION_ARCHS[arch])
    smp_options = dict(options)
    if "head_activation" in smp_options:
        smp_options["activation"] = smp_options.pop("head_activation")
    accepted = _smp_class_options(model_class, encoder)
    for key in smp_options:
        reserved = key in ("encoder_name", "encoder_weights", "in_channels", "classes")
        if reserved or (accepted is not None and key not in accepted):
            shown = "head_activation" if key == "activation" else key
            raise SegauditError(
                f"{arch} takes no option {shown!r}; options: "
                f"{', '.join(sorted(_public_smp_options(accepted)))}"
            )
    try:
        return model_class(
            encoder_name=encoder,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=classes,
            **smp_options,
        )
    except (KeyError, ValueError, TypeError, RuntimeError, OSError) as error:
        raise SegauditError(f"cannot build {arch} with encoder {encoder}: {_first_line(error)}") from None


def _public_smp_options(accepted: set[str] | None) -> set[str]:
    names = set(accepted or ()) - {"encoder_name", "encoder_weights", "in_channels", "classes", "activation"}
    return names | {"head_activation"}


def _build_classifier(
    arch: str,
    encoder: str | None,
    in_channels: int,
    classes: int,
    activation: str,
    encoder_weights: str | None,
    options: dict[str, Any],
) -> nn.Module:
    if encoder is not None:
        raise SegauditError(f"{arch} is a classification model and takes no encoder; drop encoder={encoder!r}")
    if encoder_weights is not None:
        raise SegauditError(
            f"{arch} takes no pretrained weights here; build it and load trained weights with load_model"
        )
    factory = _CLASSIFIER_FACTORIES[arch]
    if arch == "lenet":
        options = {**options, "activation": activation}
    try:
        return factory(in_channels, classes, **options)
    except TypeError as error:
        raise SegauditError(f"bad option for {arch}: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().strip("\"'")
    return text.splitlines()[0] if text else type(error).__name__


def _freeze(model: nn.Module, names: frozenset[str]) -> None:
    """Why: gradient consumers (FedSGD updates keyed by name, Opacus per-sample gradients) expect every
    parameter that requires a gradient to get one; parameters the forward never reaches would not."""
    for name, parameter in model.named_parameters():
        if name in names:
            parameter.requires_grad_(False)


# --------------------------------------------------------------------------------------------------
# Activations


def _replace_relu_with_sigmoid(module: nn.Module) -> None:
    """Swap every ``nn.ReLU``/``nn.ReLU6`` submodule for ``nn.Sigmoid``, in place."""
    for name, child in module.named_children():
        if isinstance(child, _RELU_MODULES):
            setattr(module, name, nn.Sigmoid())
        else:
            _replace_relu_with_sigmoid(child)


class _CallRecorder(torch.overrides.TorchFunctionMode):
    """Records the names of the torch functions a forward pass calls (``F.relu``, ``Tensor.relu_``...)."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", ""))
        return func(*args, **(kwargs or {}))


def _relu_calls(model: nn.Module, x: torch.Tensor) -> set[str]:
    """ReLU-like functions called by ``model(x)``, run in eval mode without touching BN statistics."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _CallRecorder() as recorder:
            model(x)
    finally:
        model.train(was_training)
    return recorder.names & _RELU_FUNCTIONS


def _probe_input(spec: Mapping[str, Any]) -> torch.Tensor:
    rules = size_rules(spec["arch"], spec["encoder"], **spec["options"])
    height, width = rules.fixed_size or (rules.min_size, rules.min_size)
    return torch.zeros(1, spec["in_channels"], height, width)


def _check_no_relu(model: nn.Module, spec: Mapping[str, Any]) -> None:
    """Why: some encoders call ``F.relu`` inside ``forward``; no module swap can reach those."""
    left = _relu_calls(model, _probe_input(spec))
    if left:
        what = spec["arch"] + (f" with encoder {spec['encoder']}" if spec["encoder"] else "")
        raise SegauditError(
            f"{what} applies ReLU functionally ({', '.join(sorted(left))}), so activation='sigmoid' "
            f"cannot remove it; pick another encoder or use activation='relu'"
        )


# --------------------------------------------------------------------------------------------------
# Specs


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The JSON-able spec recorded on a model at build time (a copy).

    Returns:
        ``{"arch", "encoder", "in_channels", "classes", "activation", "task", "options"}``;
        ``build_from_spec(model_spec(m))`` builds the same network (fresh weights). For an smp model
        built outside segaudit the spec is read from its smp config (activation ``"relu"``).

    Raises:
        SegauditError: the model was not built by segaudit nor by smp.
    """
    inner, _ = _unwrap(model)
    spec = getattr(inner, "segaudit_spec", None)
    if spec is not None:
        return json.loads(json.dumps(spec))
    config = getattr(inner, "config", None) if _looks_like_smp(inner) else None
    if isinstance(config, Mapping):
        return _spec_from_smp_config({**config, "_model_class": type(inner).__name__}, "the smp model")
    raise SegauditError(
        f"{type(inner).__name__} has no segaudit spec: build it with segaudit.models.build_model "
        f"or load it with load_model(path, spec=...)"
    )


def is_segmentation(model: nn.Module) -> bool:
    """True for a segmentation model (logits ``[N, K, H, W]``), False for a classifier."""
    return _model_task(_unwrap(model)[0]) == "segmentation"


def _looks_like_smp(model: nn.Module) -> bool:
    """Duck-typed smp ``SegmentationModel`` check that does not import smp."""
    return all(isinstance(getattr(model, n, None), nn.Module) for n in ("encoder", "decoder", "segmentation_head"))


def _normalise_spec(spec: Any, source: str) -> dict[str, Any]:
    """Validate a spec mapping and fill in defaults."""
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        spec = dataclasses.asdict(spec)
    if not isinstance(spec, Mapping):
        raise SegauditError(f"{source} must be a mapping with at least an 'arch' key, got {type(spec).__name__}")
    if "_model_class" in spec or "encoder_name" in spec:
        return _spec_from_smp_config(spec, source)
    if "arch" not in spec:
        raise SegauditError(f"{source} has no 'arch'; add one of {', '.join(sum(available_archs().values(), []))}")
    arch = _canonical_arch(spec["arch"])
    options = spec.get("options") or {}
    if not isinstance(options, Mapping):
        raise SegauditError(f"'options' in {source} must be a mapping, got {options!r}")
    options = {**options, **{k: v for k, v in spec.items() if k not in _SPEC_KEYS}}
    task = spec.get("task")
    if task is not None and task != _task_of(arch):
        raise SegauditError(f"{source} says task {task!r} but {arch} is a {_task_of(arch)} model; fix 'task' or 'arch'")
    default_encoder = "resnet18" if arch in SEGMENTATION_ARCHS else None
    encoder_weights = options.pop("encoder_weights", None)  # a build choice, not part of the network
    return {
        "arch": arch,
        "encoder": spec.get("encoder", default_encoder),
        "in_channels": _check_count("in_channels", spec.get("in_channels", 3)),
        "classes": _check_count("classes", spec.get("classes", 2)),
        "activation": spec.get("activation"),
        "task": _task_of(arch),
        "options": _jsonable(options),
        "encoder_weights": encoder_weights,
        # made trainable by Opacus (BatchNorm -> GroupNorm), see segaudit.privacy.make_private_model
        **({"dp_compatible": True} if spec.get("dp_compatible") else {}),
        "preprocessing": _checked_preprocessing(spec.get("preprocessing"), spec.get("in_channels", 3), source),
    }


def _checked_preprocessing(raw: Any, channels: int, source: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    return Preprocessing.from_dict(raw, _check_count("in_channels", channels), f"'preprocessing' in {source}").to_dict()


def _spec_from_smp_config(config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Our spec from an smp ``save_pretrained`` config (``_model_class`` + the init arguments)."""
    class_name = config.get("_model_class")
    if class_name not in _ARCH_BY_SMP_CLASS:
        raise SegauditError(
            f"{source} names model class {class_name!r}, which segaudit does not build; "
            f"allowed: {', '.join(_ARCH_BY_SMP_CLASS)}"
        )
    options = {k: v for k, v in config.items() if not k.startswith("_") and k not in _SMP_SPEC_KEYS}
    if config.get("activation") is not None:
        options["head_activation"] = config["activation"]
    # Defaults are smp's own, as smp.from_pretrained would use them.
    return {
        "arch": _ARCH_BY_SMP_CLASS[class_name],
        "encoder": config.get("encoder_name", "resnet34"),
        "in_channels": _check_count("in_channels", config.get("in_channels", 3)),
        "classes": _check_count("classes", config.get("classes", 1)),
        "activation": "relu",
        "task": "segmentation",
        "options": _jsonable(options),
        # smp's own loader ignores keys that start with "_": the preprocessing can live there
        "preprocessing": _checked_preprocessing(config.get("_preprocessing"), config.get("in_channels", 3), source),
    }


def _describe(spec: Mapping[str, Any]) -> str:
    encoder = f"/{spec['encoder']}" if spec.get("encoder") else ""
    return f"{spec['arch']}{encoder} (in_channels={spec['in_channels']}, classes={spec['classes']})"


# --------------------------------------------------------------------------------------------------
# Input sizes


@dataclasses.dataclass(frozen=True)
class SizeRules:
    """What input sizes a model accepts.

    Attributes:
        output_stride: downsampling factor of the deepest feature map (32 for a depth-5 Unet, 8 for
            DeepLabV3 and PSPNet, 16 for DeepLabV3+ and PAN, 4 for LeNet; nominal 32 for Inception).
        multiple: H and W must be multiples of this (1: any size; smp's Unet interpolates).
        min_size: smallest H and W.
        fixed_size: ``(H, W)`` when only one size works (LeNet), else ``None``.
        min_train_batch: smallest batch in train mode; BatchNorm after a global pooling (DeepLabV3/V3+,
            PAN, UPerNet ASPP/PSP pooling branches) needs 2. Any model in train mode with batch 1 also
            needs a deepest feature map larger than 1x1: ``(H // output_stride) * (W // output_stride) > 1``.
    """

    output_stride: int
    multiple: int
    min_size: int
    fixed_size: tuple[int, int] | None = None
    min_train_batch: int = 1


_CLASSIFIER_SIZES = {
    "resnet18": SizeRules(output_stride=32, multiple=1, min_size=32),
    "densenet121": SizeRules(output_stride=32, multiple=1, min_size=32),
    # Inception's valid convolutions need 75 px; its last map stays 1x1 below 107 px, so batch >= 2.
    "inception_v3": SizeRules(output_stride=32, multiple=1, min_size=75, min_train_batch=2),
}


def size_rules(arch: str, encoder: str | None = None, **options: Any) -> SizeRules:
    """Input-size rules for an architecture (and encoder and options, which change the stride).

    Example:
        >>> size_rules("pan")
        SizeRules(output_stride=16, multiple=16, min_size=128, fixed_size=None, min_train_batch=2)
    """
    name = _canonical_arch(arch)
    if name == "lenet":
        height, width = _pair(options.get("size", 32))
        return SizeRules(output_stride=4, multiple=1, min_size=min(height, width), fixed_size=(height, width))
    if name in _CLASSIFIER_SIZES:
        return _CLASSIFIER_SIZES[name]
    stride, divisible, _ = _smp_facts(name, encoder or "resnet18", options)
    return SizeRules(
        output_stride=stride,
        multiple=stride if divisible else 1,
        min_size=stride * _MIN_DEEPEST_MAP.get(name, 1),
        min_train_batch=2 if name in _GLOBAL_POOL_BN else 1,
    )


def output_stride(arch: str, encoder: str | None = None, **options: Any) -> int:
    """Downsampling factor of the deepest feature map, e.g. 32 for ``unet``/``resnet18``, 8 for ``pspnet``."""
    return size_rules(arch, encoder, **options).output_stride


def min_size(arch: str, encoder: str | None = None, **options: Any) -> int:
    """Smallest input side that runs, e.g. 32 for ``unet``/``resnet18`` and 128 for ``pan``."""
    return size_rules(arch, encoder, **options).min_size


class _SmpFacts(NamedTuple):
    output_stride: int  # of the encoder's deepest feature map
    divisible: bool  # smp requires H and W divisible by output_stride
    unused: frozenset[str]  # parameters the forward never reaches


def _smp_facts(arch: str, encoder: str, options: Mapping[str, Any]) -> _SmpFacts:
    return _smp_facts_cached(arch, encoder, json.dumps(_jsonable(options), sort_keys=True))


@functools.lru_cache(maxsize=64)
def _smp_facts_cached(arch: str, encoder: str, options_json: str) -> _SmpFacts:
    """Facts about an smp configuration, from a weightless build on the meta device (no compute)."""
    options = json.loads(options_json)
    try:
        with torch.device("meta"):
            model = _build_smp(arch, encoder, 3, 1, None, options)
    except SegauditError:  # some encoders read tensor values at init (mit_b*): build for real
        model = _build_smp(arch, encoder, 3, 1, None, options)
    stride = int(model.encoder.output_stride)
    side = 2 * stride * _MIN_DEEPEST_MAP.get(arch, 1)  # deepest map 2x2: BatchNorm runs in train mode
    return _SmpFacts(stride, bool(model.requires_divisible_input_shape), _unused_parameters(model, side))


def _unused_parameters(model: nn.Module, side: int) -> frozenset[str]:
    """Parameters no gradient reaches (e.g. encoder stages beyond PSPNet's encoder_depth=3)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    device = named[0][1].device
    try:
        output = model.train()(torch.zeros(2, 3, side, side, device=device))
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        total = sum(o.sum() for o in outputs)
        grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    except (RuntimeError, NotImplementedError):  # an op without a meta kernel: cannot tell, freeze nothing
        return frozenset()
    return frozenset(n for (n, _), g in zip(named, grads) if g is None)


def _rules_for(model: nn.Module) -> tuple[str, SizeRules]:
    spec = model_spec(model)
    return spec["arch"], size_rules(spec["arch"], spec["encoder"], **spec["options"])


def check_input_size(model: nn.Module, height: int, width: int, batch: int | None = None) -> None:
    """Raise a SegauditError that says the fix when the model cannot take ``[batch, C, height, width]``.

    The batch rule applies only in train mode (``model.training``), where BatchNorm needs more than one
    value per channel.
    """
    arch, rules = _rules_for(model)
    if rules.fixed_size is not None and (height, width) != rules.fixed_size:
        fh, fw = rules.fixed_size
        raise SegauditError(f"{arch} was built for {fh}x{fw} images, got {height}x{width}: resize them or rebuild it")
    if min(height, width) < rules.min_size:
        side = rules.min_size
        raise SegauditError(
            f"{arch} needs images of at least {side}x{side}, got {height}x{width}: resize or pad them to "
            f"{max(height, side)}x{max(width, side)}"
        )
    m = rules.multiple
    if height % m or width % m:
        padded = (math.ceil(height / m) * m, math.ceil(width / m) * m)
        raise SegauditError(
            f"{arch} needs height and width divisible by {m}, got {height}x{width}: pad them to "
            f"{padded[0]}x{padded[1]}"
        )
    if batch is not None and batch < 2 and model.training:
        deepest = (height // rules.output_stride) * (width // rules.output_stride)
        if rules.min_train_batch > 1 or deepest <= 1:
            raise SegauditError(
                f"{arch} in train mode needs at least 2 images per batch at {height}x{width} (BatchNorm "
                f"needs more than one value per channel), got {batch}: use a larger batch or model.eval()"
            )


# --------------------------------------------------------------------------------------------------
# Layer groups


@dataclasses.dataclass(frozen=True)
class LayerGroup:
    """A named set of parameters scored together.

    Attributes:
        name: the parameters' common module path, e.g. ``"encoder.layer1"``, ``"decoder.blocks.0"``,
            ``"segmentation_head"``; ``"<prefix>.stem"`` for leading conv/norm layers of a stage list.
        kind: ``"encoder"``, ``"decoder"``, ``"skip"`` (parameters that only process skip/lateral
            features from the encoder), ``"head"`` or ``"other"``.
        params: names from ``model.named_parameters()``, in that order.
    """

    name: str
    kind: GroupKind
    params: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class _Rule:
    pattern: str  # regex matched at the start of a parameter name, up to a "." boundary
    kind: GroupKind
    name: str | None = None  # group name; None: the matched text

    def match(self, param: str) -> str | None:
        found = re.match(rf"(?:{self.pattern})(?=\.)", param)
        if found is None:
            return None
        return self.name or found.group(0)


_HEAD_RULES = (_Rule(r"segmentation_head", "head"), _Rule(r"classification_head", "head"))
_CLASSIFIER_HEAD_RULES = (_Rule(r"fc|classifier", "head"),)
_DECODER_RULES: dict[str, tuple[_Rule, ...]] = {
    # Unet: skips are parameterless concatenations feeding decoder.blocks.i.conv1.
    "unet": (_Rule(r"decoder\.center", "decoder"), _Rule(r"decoder\.blocks\.\d+", "decoder")),
    # Unet++: x_0_j is the main decoder path; x_d_j (d >= 1) are the nested dense-skip nodes.
    "unetplusplus": (
        _Rule(r"decoder\.center", "decoder"),
        _Rule(r"decoder\.blocks\.x_0_\d+", "decoder"),
        _Rule(r"decoder\.blocks\.x_\d+_\d+", "skip"),
    ),
    # Linknet adds skips without parameters.
    "linknet": (_Rule(r"decoder\.blocks\.\d+", "decoder"),),
    # MAnet: SE_ll is the squeeze-excitation on the low-level (skip) input of each fusion block.
    "manet": (
        _Rule(r"decoder\.center", "decoder"),
        _Rule(r"decoder\.blocks\.\d+\.SE_ll", "skip"),
        _Rule(r"decoder\.blocks\.\d+", "decoder"),
    ),
    # FPN: p5 projects the deepest map; p4..p2 hold only the lateral 1x1 skip_conv.
    "fpn": (
        _Rule(r"decoder\.p5", "decoder"),
        _Rule(r"decoder\.p\d+", "skip"),
        _Rule(r"decoder\.seg_blocks\.\d+", "decoder"),
    ),
    "pspnet": (_Rule(r"decoder\.psp", "decoder"), _Rule(r"decoder\.conv", "decoder")),
    "deeplabv3": (_Rule(r"decoder\.aspp", "decoder"), _Rule(r"decoder\.(?:conv|bn)", "decoder", "decoder.conv")),
    # DeepLabV3+: aspp.1/aspp.2 are the separable conv + BN after ASPP; block1 projects low-level features.
    "deeplabv3plus": (
        _Rule(r"decoder\.aspp\.0", "decoder"),
        _Rule(r"decoder\.aspp\.[12]", "decoder", "decoder.aspp.1"),
        _Rule(r"decoder\.block1", "skip"),
        _Rule(r"decoder\.block2", "decoder"),
    ),
    # PAN: each GAU block's conv2 reads the low-level (skip) map, conv1 the high-level one.
    "pan": (
        _Rule(r"decoder\.fpa", "decoder"),
        _Rule(r"decoder\.gau\d+\.conv2", "skip"),
        _Rule(r"decoder\.gau\d+\.conv1", "decoder"),
    ),
    # UPerNet: lateral blocks and the norms of the non-deepest maps carry skips (deepest: see below).
    "upernet": (
        _Rule(r"decoder\.feature_norms\.\d+", "skip"),
        _Rule(r"decoder\.psp", "decoder"),
        _Rule(r"decoder\.fpn_lateral_blocks\.\d+", "skip"),
        _Rule(r"decoder\.fpn_conv_blocks\.\d+", "decoder"),
        _Rule(r"decoder\.fusion_block", "decoder"),
    ),
    # Segformer: mlp_stage.0 projects the deepest map, the others project shallower (skip) maps.
    "segformer": (
        _Rule(r"decoder\.mlp_stage\.0", "decoder"),
        _Rule(r"decoder\.mlp_stage\.\d+", "skip"),
        _Rule(r"decoder\.fuse_stage", "decoder"),
    ),
}


def _decoder_rules(arch: str | None, model: nn.Module) -> tuple[_Rule, ...]:
    rules = _DECODER_RULES.get(arch or "", ())
    if arch == "upernet":  # the last feature norm feeds the PSP module on the deepest map
        last = len(model.decoder.feature_norms) - 1
        rules = (_Rule(rf"decoder\.feature_norms\.{last}", "decoder"),) + rules
    return rules


def _arch_of(model: nn.Module) -> str | None:
    spec = getattr(model, "segaudit_spec", None)
    if spec is not None:
        return spec.get("arch")
    return _ARCH_BY_SMP_CLASS.get(type(model).__name__)


def _n_tensors(module: nn.Module) -> int:
    return sum(1 for _ in module.parameters())


def _is_leaf(module: nn.Module) -> bool:
    """A module whose parameters are all its own (a conv, a norm...)."""
    return not any(_n_tensors(child) for child in module.children())


def _param_names(module: nn.Module, path: str) -> list[str]:
    return [f"{path}.{name}" for name, _ in module.named_parameters()]


def _path_groups(module: nn.Module, prefix: str) -> list[tuple[str, list[str]]]:
    """Group ``module``'s parameters by module path, one group per child.

    A child that holds more than half of the parameter tensors at its level and has children of its
    own (``features`` of mobilenet/DenseNet, ``_blocks`` of efficientnet, the ``model`` of a timm
    encoder) is split into its children instead. Leading conv/norm leaves before the first stage
    (``conv1``+``bn1``) become one ``<prefix>stem`` group.
    """
    groups = [(prefix + name, [prefix + name]) for name, _ in module.named_parameters(recurse=False)]
    children = [(name, child) for name, child in module.named_children() if _n_tensors(child)]
    total = sum(_n_tensors(child) for _, child in children)
    leading = 0
    if any(not _is_leaf(child) for _, child in children):
        while _is_leaf(children[leading][1]):
            leading += 1
    stem = prefix + "stem"
    if leading and all(prefix + name != stem for name, _ in children):
        groups.append((stem, [p for name, child in children[:leading] for p in _param_names(child, prefix + name)]))
        children = children[leading:]
    for name, child in children:
        path = prefix + name
        if not _is_leaf(child) and 2 * _n_tensors(child) > total:
            groups += _path_groups(child, path + ".")
        else:
            groups.append((path, _param_names(child, path)))
    return groups


def _unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """The user's model inside Opacus' GradSampleModule / DataParallel, and the name prefix they add."""
    prefix = ""
    while True:
        inner = getattr(model, "_module", None)  # opacus GradSampleModule
        if isinstance(inner, nn.Module):
            model, prefix = inner, prefix + "_module."
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model, prefix = model.module, prefix + "module."
        else:
            return model, prefix


def layer_groups(model: nn.Module) -> list[LayerGroup]:
    """Split a model's parameters into named groups, each parameter in exactly one group.

    Rules:
        * Encoder (smp) and classifier bodies: one group per stage, by module path: ``encoder.stem``
          (conv1+bn1), ``encoder.layer1``..``encoder.layer4`` for ResNets; ``encoder.features.i``
          (mobilenet), ``encoder._blocks.i`` (efficientnet), ``encoder.model.*`` (timm ``tu-``); kind
          ``"encoder"``. Classifiers: ``stem``/``layer1``..``layer4``/``fc`` (ResNet),
          ``features.stem``/``features.denseblockN``/``features.transitionN``/``classifier``
          (DenseNet), ``Conv2d_*``/``Mixed_*``/``fc`` (Inception), ``body.0``/``body.2``/``body.4``/``fc``
          (LeNet); the final linear layer is the ``"head"``.
        * Decoders: per-arch rules (see ``_DECODER_RULES``): one group per decoder block; parameters that
          only carry skip/lateral features are kind ``"skip"``: FPN ``decoder.p2``..``p4`` (skip_conv),
          DeepLabV3+ ``decoder.block1``, Unet++ nested nodes ``decoder.blocks.x_d_j`` (d >= 1), MAnet
          ``decoder.blocks.i.SE_ll``, PAN ``decoder.gauN.conv2``, UPerNet lateral blocks and norms,
          Segformer ``decoder.mlp_stage.1+``. Unet and Linknet skips have no parameters of their own:
          Unet concatenates them into the input of ``decoder.blocks.i.conv1`` (the skip path can be
          scored by slicing that conv's input channels), Linknet adds them.
        * ``segmentation_head`` / ``classification_head``: kind ``"head"``.
        * Anything else: grouped by module path, kind by top-level name (``"other"`` if unknown); a
          module segaudit did not build and smp did not make gets kind ``"other"`` (``fc``/``classifier``:
          ``"head"``).

    Args:
        model: a model of :func:`build_model`, any smp model, or another ``nn.Module`` (module-path
            groups); Opacus ``GradSampleModule`` and ``DataParallel`` wrappers are seen through.

    Returns:
        Groups in the order of their first parameter in ``model.named_parameters()``.

    Example (Unet, resnet18):
        ``encoder.stem, encoder.layer1..4`` (encoder), ``decoder.blocks.0..4`` (decoder),
        ``segmentation_head`` (head).
    """
    inner, prefix = _unwrap(model)
    order = {name: i for i, (name, _) in enumerate(inner.named_parameters())}
    assigned: dict[str, tuple[str, GroupKind]] = {}
    task = _model_task(inner)
    segmentation = task == "segmentation"
    if segmentation:
        rules = _HEAD_RULES + _decoder_rules(_arch_of(inner), inner)
    else:
        rules = _CLASSIFIER_HEAD_RULES
    for param in order:
        for rule in rules:
            group = rule.match(param)
            if group is not None:
                assigned[param] = (group, rule.kind)
                break
    parts = [(inner.encoder, "encoder."), (inner.decoder, "decoder.")] if segmentation else []
    for module, part_prefix in parts + [(inner, "")]:
        for group, params in _path_groups(module, part_prefix):
            for param in params:
                if param in order and param not in assigned:
                    assigned[param] = (group, _default_kind(group, task))
    return _collect(assigned, order, prefix)


def _model_task(model: nn.Module) -> str | None:
    spec = getattr(model, "segaudit_spec", None)
    if spec is not None:
        return spec.get("task")
    return "segmentation" if _looks_like_smp(model) else None


def _default_kind(group: str, task: str | None) -> GroupKind:
    if task == "classification":  # everything before the final linear layer extracts features
        return "encoder"
    top = group.split(".", 1)[0]
    return {"encoder": "encoder", "decoder": "decoder"}.get(top, "other") if task else "other"


def _collect(assigned: dict[str, tuple[str, GroupKind]], order: dict[str, int], prefix: str) -> list[LayerGroup]:
    if len(assigned) != len(order):  # every parameter gets a group by construction
        raise RuntimeError(f"layer_groups left out {sorted(set(order) - set(assigned))[:3]}")
    members: dict[tuple[str, GroupKind], list[str]] = {}
    for param in sorted(assigned, key=order.__getitem__):
        members.setdefault(assigned[param], []).append(prefix + param)
    return [LayerGroup(prefix + name, kind, tuple(params)) for (name, kind), params in members.items()]


# --------------------------------------------------------------------------------------------------
# Saving and loading


def save_model(model: nn.Module, folder: str | Path) -> Path:
    """Save weights and spec to ``folder`` in a format :func:`load_model` (and smp) reads back.

    smp models: ``save_pretrained`` (``config.json`` + ``model.safetensors`` + model card) plus
    ``segaudit.json``; classifiers: ``model.safetensors`` + ``segaudit.json``.

    The files are written aside and renamed in: a new folder appears whole, an existing one gets whole files
    (its other files stay).

    Returns:
        The folder.
    """
    from .io import atomic_dir

    folder = Path(folder)
    spec = model_spec(model)
    inner, _ = _unwrap(model)
    with atomic_dir(folder, merge=True) as tmp:
        if hasattr(inner, "save_pretrained") and _looks_like_smp(inner):
            inner.save_pretrained(tmp)
        else:
            from safetensors.torch import save_model as save_safetensors

            save_safetensors(inner, str(tmp / WEIGHTS_FILE))
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return folder


def load_model(path: str | Path, spec: Mapping[str, Any] | None = None,
               preprocessing: Preprocessing | None = None) -> nn.Module:
    """Load a model from safe formats only; nothing in the files is executed.

    Accepted:
        * a folder of smp ``save_pretrained`` / :func:`save_model` (``config.json`` and/or
          ``segaudit.json`` + ``model.safetensors``); ``_model_class`` must be an smp class segaudit
          builds (see :data:`SEGMENTATION_ARCHS`);
        * a ``.safetensors`` file with ``spec`` or a sidecar ``<file>.json`` / ``<stem>.json``;
        * a ``.pt``/``.pth``/``.ckpt``/``.bin`` state dict (also under ``"state_dict"``/``"model"``),
          read with ``torch.load(weights_only=True)``, with ``spec``, a sidecar or a ``"segaudit_spec"``
          entry.

    The model is built from the spec with ``encoder_weights=None``; the weights must fit it exactly
    (same keys and shapes) or nothing is loaded.

    Args:
        path: folder or file.
        spec: overrides any spec found next to the weights (see :func:`build_from_spec`).
        preprocessing: overrides the input normalisation the spec records (``--mean/--std/--scale``).
            A spec that records none loads, but :func:`segaudit.preprocessing.of` then refuses to guess it.

    Returns:
        The model in eval mode, with ``model.segaudit_spec`` set.

    Raises:
        SegauditError: missing/corrupt file, pickle that needs code, disallowed model class, missing spec,
            or weights that do not fit the spec (names the first bad key and the shapes).
    """
    path = Path(path)
    if not path.exists():
        raise SegauditError(f"model path {path} does not exist: give a save_pretrained folder or a weights file")
    if path.is_dir():
        found_spec, state = _read_folder(path)
    elif path.suffix == ".safetensors":
        found_spec, state = _sidecar_spec(path), _read_safetensors(path)
    elif path.suffix in CHECKPOINT_SUFFIXES:
        state, embedded = _read_checkpoint(path)
        found_spec = _sidecar_spec(path) or embedded
    else:
        raise SegauditError(
            f"cannot load {path.name}: give a save_pretrained folder, a .safetensors file or a "
            f"{'/'.join(CHECKPOINT_SUFFIXES)} state dict"
        )
    chosen = spec if spec is not None else found_spec
    if chosen is None:
        raise SegauditError(
            f"{path} holds bare weights: pass spec={{'arch': ..., 'encoder': ..., 'classes': ...}} "
            f"or write it to {path}.json"
        )
    model = _build(_normalise_spec(chosen, f"the spec for {path.name}"))  # never encoder_weights: no download
    state = _strip_wrapper_prefix(state, model.state_dict())
    _check_state_dict(model, state, path)
    model.load_state_dict(state, strict=True)
    if preprocessing is not None:
        model.segaudit_spec["preprocessing"] = preprocessing.to_dict()
    return model.eval()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SegauditError(f"{path} is not readable JSON ({_first_line(error)}): rewrite it") from None


def _read_folder(folder: Path) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    config_path, spec_path = folder / SMP_CONFIG_FILE, folder / SPEC_FILE
    spec = None
    if config_path.exists():
        config = _read_json(config_path)
        if not isinstance(config, Mapping) or "_model_class" not in config:
            raise SegauditError(f"{config_path} has no _model_class: it is not an smp save_pretrained config")
        spec = _spec_from_smp_config(config, str(config_path))  # refuses classes outside the allow-list
    if spec_path.exists():
        extra = _read_json(spec_path)
        # a segaudit.json without 'arch' beside smp's config.json adds to it (e.g. only the preprocessing)
        spec = {**spec, **extra} if spec is not None and isinstance(extra, Mapping) and "arch" not in extra else extra
    if spec is None:
        raise SegauditError(
            f"{folder} has neither {SMP_CONFIG_FILE} (smp save_pretrained) nor {SPEC_FILE} (segaudit save_model)"
        )
    weights = folder / WEIGHTS_FILE
    if not weights.exists():
        raise SegauditError(f"{folder} has no {WEIGHTS_FILE}; segaudit loads safetensors weights from folders")
    return spec, _read_safetensors(weights)


def _sidecar_spec(path: Path) -> Any:
    for sidecar in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if sidecar.exists():
            return _read_json(sidecar)
    return None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise SegauditError(
            f"{path} is truncated or not a safetensors file ({_first_line(error)}): re-export it"
        ) from None


def _read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], Any]:
    """State dict (and embedded spec, if any) of a torch checkpoint, unpickled without running code."""
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols would break the one-line error
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only load failed" in str(error).lower():
            raise SegauditError(
                f"checkpoint {path} needs code to load (pickle); segaudit loads weights only: save a "
                f"state_dict or use save_pretrained"
            ) from None
        raise SegauditError(f"checkpoint {path} is truncated or corrupt ({_first_line(error)}): re-export it") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise SegauditError(f"checkpoint {path} is truncated or corrupt ({_first_line(error)}): re-export it") from None
    embedded = payload.get("segaudit_spec") if isinstance(payload, Mapping) else None
    state = payload
    if isinstance(payload, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(payload.get(key), Mapping):
                state = payload[key]
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SegauditError(
            f"checkpoint {path} holds no state dict of tensors: save model.state_dict() "
            f"(optionally under 'state_dict')"
        )
    return dict(state), embedded


def _strip_wrapper_prefix(
    state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` (DataParallel) or ``model.`` (Lightning) prefix every key carries."""
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in expected):
            return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    """Refuse weights that do not fit exactly, naming the first bad key, before anything is copied."""
    expected = model.state_dict()
    what = f"weights in {source.name} do not fit {_describe(model.segaudit_spec)}"
    fix = "build the model with the spec the weights were saved with"
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise SegauditError(f"{what}: missing key {missing[0]}{_more(missing)}; {fix}")
    if unexpected:
        raise SegauditError(f"{what}: unexpected key {unexpected[0]}{_more(unexpected)}; {fix}")
    for key, tensor in expected.items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise SegauditError(
                f"{what}: {key} has shape {list(state[key].shape)} in the file but {list(tensor.shape)} "
                f"in the model; {fix}"
            )


def _more(keys: Sequence[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
