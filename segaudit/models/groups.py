"""Split a model's parameters into named groups (encoder stages, decoder blocks, skip paths, head)."""
from __future__ import annotations

import dataclasses
import re
from typing import Literal

from torch import nn

from .catalog import ARCH_BY_SMP_CLASS, MONAI_ARCHS
from .monai_nets import NESTED_UNETS, nested_unet_group
from .spec import model_task, unwrap

GroupKind = Literal["encoder", "decoder", "skip", "head", "other"]


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


# MONAI networks other than the nested U-Nets (whose levels monai_nets.nested_unet_group reads): every group by rule.
_MONAI_RULES: dict[str, tuple[_Rule, ...]] = {
    "monai.basicunet": (_Rule(r"conv_0|down_\d+", "encoder"), _Rule(r"upcat_\d+", "decoder"),
                        _Rule(r"final_conv", "head")),
    "monai.segresnet": (_Rule(r"convInit|down_layers\.\d+", "encoder"),
                        _Rule(r"up_samples\.\d+|up_layers\.\d+", "decoder"), _Rule(r"conv_final", "head")),
    # SwinUNETR: the transformer is the encoder; encoder1..4 are conv blocks on the input and on the transformer's
    # stage outputs that reach the decoder only through its skips; encoder10 processes the deepest map.
    "monai.swinunetr": (_Rule(r"swinViT\.(?:patch_embed|layers\d+)", "encoder"), _Rule(r"encoder10", "decoder"),
                        _Rule(r"encoder\d+", "skip"), _Rule(r"decoder\d+", "decoder"), _Rule(r"out", "head")),
}


def _monai_group(arch: str, param: str) -> tuple[str, GroupKind]:
    """``(group name, kind)`` of parameter ``param`` of a MONAI network built as ``arch``."""
    if arch in NESTED_UNETS:
        return nested_unet_group(arch, param)
    for rule in _MONAI_RULES[arch]:
        group = rule.match(param)
        if group is not None:
            return group, rule.kind
    return param.rsplit(".", 1)[0], "other"


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
    return ARCH_BY_SMP_CLASS.get(type(model).__name__)


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
        * MONAI networks (``_MONAI_RULES``; :func:`segaudit.models.monai_nets.nested_unet_group` for UNet and
          AttentionUnet): one group per level of down blocks
          (encoder), up blocks (decoder) and the output block (head); the attention gates' ``W_x`` of
          ``monai.attentionunet`` and ``encoder1..4`` of ``monai.swinunetr`` process skip features (skip).
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
    inner, prefix = unwrap(model)
    order = {name: i for i, (name, _) in enumerate(inner.named_parameters())}
    arch = _arch_of(inner)
    if arch in MONAI_ARCHS:
        return _collect({param: _monai_group(arch, param) for param in order}, order, prefix)
    assigned: dict[str, tuple[str, GroupKind]] = {}
    task = model_task(inner)
    segmentation = task == "segmentation"
    if segmentation:
        rules = _HEAD_RULES + _decoder_rules(arch, inner)
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
