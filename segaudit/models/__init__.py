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

One module per job: :mod:`~.catalog` (arch names, lazy smp/torchvision imports), :mod:`~.classifiers` and
:mod:`~.segmentation` (the two families), :mod:`~.build` (build_model, build_from_spec), :mod:`~.activations`
(the sigmoid option), :mod:`~.spec`, :mod:`~.sizes`, :mod:`~.groups`, :mod:`~.checkpoints` (save/load),
:mod:`~.preprocessing` (the value type a spec records) and :mod:`~.dp_compatible` (Opacus fixes a DP spec needs).

Example:
    >>> model = build_model("unet", "resnet18", in_channels=1, classes=3)
    >>> model(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 3, 64, 64])
    >>> [g.name for g in layer_groups(model)][:3]
    ['encoder.stem', 'encoder.layer1', 'encoder.layer2']
"""
from __future__ import annotations

from .build import ACTIVATIONS, build_from_spec, build_model
from .catalog import CLASSIFICATION_ARCHS, SEGMENTATION_ARCHS, available_archs
from .checkpoints import CHECKPOINT_SUFFIXES, SMP_CONFIG_FILE, SPEC_FILE, WEIGHTS_FILE, load_model, save_model
from .classifiers import LeNet
from .groups import GroupKind, LayerGroup, layer_groups
from .sizes import SizeRules, check_input_size, min_size, output_stride, size_rules
from .spec import is_segmentation, model_spec

__all__ = [
    "ACTIVATIONS",
    "CHECKPOINT_SUFFIXES",
    "CLASSIFICATION_ARCHS",
    "GroupKind",
    "LayerGroup",
    "LeNet",
    "SEGMENTATION_ARCHS",
    "SMP_CONFIG_FILE",
    "SPEC_FILE",
    "SizeRules",
    "WEIGHTS_FILE",
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
