"""A model's spec: the JSON-able dict recorded on it at build time, from which the same network is rebuilt.

Also reads specs from smp ``save_pretrained`` configs, and sees through the wrappers (Opacus
``GradSampleModule``, ``DataParallel``) a model may come in.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from torch import nn

from segaudit.errors import SegauditError

from .catalog import ARCH_BY_SMP_CLASS, SEGMENTATION_ARCHS, available_archs, canonical_arch, task_of
from .preprocessing import Preprocessing

_SPEC_KEYS = ("arch", "encoder", "in_channels", "classes", "activation", "task", "options", "dp_compatible",
              "preprocessing")
# smp config keys that map onto our spec fields rather than onto options.
_SMP_SPEC_KEYS = ("encoder_name", "encoder_weights", "in_channels", "classes", "activation")


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The JSON-able spec recorded on a model at build time (a copy).

    Returns:
        ``{"arch", "encoder", "in_channels", "classes", "activation", "task", "options"}``;
        ``build_from_spec(model_spec(m))`` builds the same network (fresh weights). For an smp model
        built outside segaudit the spec is read from its smp config (activation ``"relu"``).

    Raises:
        SegauditError: the model was not built by segaudit nor by smp.
    """
    inner, _ = unwrap(model)
    spec = getattr(inner, "segaudit_spec", None)
    if spec is not None:
        return json.loads(json.dumps(spec))
    config = getattr(inner, "config", None) if looks_like_smp(inner) else None
    if isinstance(config, Mapping):
        return spec_from_smp_config({**config, "_model_class": type(inner).__name__}, "the smp model")
    raise SegauditError(
        f"{type(inner).__name__} has no segaudit spec: build it with segaudit.models.build_model "
        f"or load it with load_model(path, spec=...)"
    )


def is_segmentation(model: nn.Module) -> bool:
    """True for a segmentation model (logits ``[N, K, H, W]``), False for a classifier."""
    return model_task(unwrap(model)[0]) == "segmentation"


def looks_like_smp(model: nn.Module) -> bool:
    """Duck-typed smp ``SegmentationModel`` check that does not import smp."""
    return all(isinstance(getattr(model, n, None), nn.Module) for n in ("encoder", "decoder", "segmentation_head"))


def normalise_spec(spec: Any, source: str) -> dict[str, Any]:
    """Validate a spec mapping and fill in defaults."""
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        spec = dataclasses.asdict(spec)
    if not isinstance(spec, Mapping):
        raise SegauditError(f"{source} must be a mapping with at least an 'arch' key, got {type(spec).__name__}")
    if "_model_class" in spec or "encoder_name" in spec:
        return spec_from_smp_config(spec, source)
    if "arch" not in spec:
        raise SegauditError(f"{source} has no 'arch'; add one of {', '.join(sum(available_archs().values(), []))}")
    arch = canonical_arch(spec["arch"])
    options = spec.get("options") or {}
    if not isinstance(options, Mapping):
        raise SegauditError(f"'options' in {source} must be a mapping, got {options!r}")
    options = {**options, **{k: v for k, v in spec.items() if k not in _SPEC_KEYS}}
    task = spec.get("task")
    if task is not None and task != task_of(arch):
        raise SegauditError(f"{source} says task {task!r} but {arch} is a {task_of(arch)} model; fix 'task' or 'arch'")
    default_encoder = "resnet18" if arch in SEGMENTATION_ARCHS else None
    encoder_weights = options.pop("encoder_weights", None)  # a build choice, not part of the network
    return {
        "arch": arch,
        "encoder": spec.get("encoder", default_encoder),
        "in_channels": check_count("in_channels", spec.get("in_channels", 3)),
        "classes": check_count("classes", spec.get("classes", 2)),
        "activation": spec.get("activation"),
        "task": task_of(arch),
        "options": jsonable(options),
        "encoder_weights": encoder_weights,
        # made trainable by Opacus (BatchNorm -> GroupNorm), see segaudit.privacy.make_private_model
        **({"dp_compatible": True} if spec.get("dp_compatible") else {}),
        "preprocessing": _checked_preprocessing(spec.get("preprocessing"), spec.get("in_channels", 3), source),
    }


def _checked_preprocessing(raw: Any, channels: int, source: str) -> dict[str, Any] | None:
    if raw is None:
        return None
    return Preprocessing.from_dict(raw, check_count("in_channels", channels), f"'preprocessing' in {source}").to_dict()


def spec_from_smp_config(config: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Our spec from an smp ``save_pretrained`` config (``_model_class`` + the init arguments)."""
    class_name = config.get("_model_class")
    if class_name not in ARCH_BY_SMP_CLASS:
        raise SegauditError(
            f"{source} names model class {class_name!r}, which segaudit does not build; "
            f"allowed: {', '.join(ARCH_BY_SMP_CLASS)}"
        )
    options = {k: v for k, v in config.items() if not k.startswith("_") and k not in _SMP_SPEC_KEYS}
    if config.get("activation") is not None:
        options["head_activation"] = config["activation"]
    # Defaults are smp's own, as smp.from_pretrained would use them.
    return {
        "arch": ARCH_BY_SMP_CLASS[class_name],
        "encoder": config.get("encoder_name", "resnet34"),
        "in_channels": check_count("in_channels", config.get("in_channels", 3)),
        "classes": check_count("classes", config.get("classes", 1)),
        "activation": "relu",
        "task": "segmentation",
        "options": jsonable(options),
        # smp's own loader ignores keys that start with "_": the preprocessing can live there
        "preprocessing": _checked_preprocessing(config.get("_preprocessing"), config.get("in_channels", 3), source),
    }


def describe(spec: Mapping[str, Any]) -> str:
    """``arch/encoder (in_channels=C, classes=K)``, for error messages."""
    encoder = f"/{spec['encoder']}" if spec.get("encoder") else ""
    return f"{spec['arch']}{encoder} (in_channels={spec['in_channels']}, classes={spec['classes']})"


def model_task(model: nn.Module) -> str | None:
    """``"segmentation"``, ``"classification"``, or ``None`` for a model neither segaudit nor smp built."""
    spec = getattr(model, "segaudit_spec", None)
    if spec is not None:
        return spec.get("task")
    return "segmentation" if looks_like_smp(model) else None


def unwrap(model: nn.Module) -> tuple[nn.Module, str]:
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


def check_count(name: str, value: Any) -> int:
    """``value`` if it is a positive integer (``in_channels``, ``classes``); refused otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SegauditError(f"{name} must be a positive integer, got {value!r}")
    return value


def jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options as JSON would give them back (tuples become lists), so specs round-trip exactly."""
    try:
        return json.loads(json.dumps(dict(options)))
    except (TypeError, ValueError) as error:
        raise SegauditError(
            f"model options must be JSON values (numbers, strings, lists, dicts) so the model can be "
            f"saved and reloaded: {error}"
        ) from None
