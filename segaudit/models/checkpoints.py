"""Save a model's weights and spec, and load them back from safe formats only (no file can run code).

Loading reads safetensors, JSON and ``torch.load(weights_only=True)`` checkpoints; the model is rebuilt from
its spec (see :mod:`segaudit.models.spec`) and must fit the weights exactly.
"""
from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segaudit.errors import SegauditError
from segaudit.io import atomic_dir

from .build import build_normalised
from .catalog import first_line
from .preprocessing import Preprocessing
from .spec import describe, looks_like_smp, model_spec, normalise_spec, spec_from_smp_config, unwrap

SPEC_FILE = "segaudit.json"
SMP_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def save_model(model: nn.Module, folder: str | Path) -> Path:
    """Save weights and spec to ``folder`` in a format :func:`load_model` (and smp) reads back.

    smp models: ``save_pretrained`` (``config.json`` + ``model.safetensors`` + model card) plus
    ``segaudit.json``; MONAI networks and classifiers: ``model.safetensors`` + ``segaudit.json``.

    The files are written aside and renamed in: a new folder appears whole, an existing one gets whole files
    (its other files stay).

    Returns:
        The folder.
    """
    folder = Path(folder)
    spec = model_spec(model)
    inner, _ = unwrap(model)
    with atomic_dir(folder, merge=True) as tmp:
        if hasattr(inner, "save_pretrained") and looks_like_smp(inner):
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
    model = build_normalised(normalise_spec(chosen, f"the spec for {path.name}"))  # never encoder_weights: no download
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
        raise SegauditError(f"{path} is not readable JSON ({first_line(error)}): rewrite it") from None


def _read_folder(folder: Path) -> tuple[dict[str, Any] | None, dict[str, torch.Tensor]]:
    config_path, spec_path = folder / SMP_CONFIG_FILE, folder / SPEC_FILE
    spec = None
    if config_path.exists():
        config = _read_json(config_path)
        if not isinstance(config, Mapping) or "_model_class" not in config:
            raise SegauditError(f"{config_path} has no _model_class: it is not an smp save_pretrained config")
        spec = spec_from_smp_config(config, str(config_path))  # refuses classes outside the allow-list
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
            f"{path} is truncated or not a safetensors file ({first_line(error)}): re-export it"
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
        raise SegauditError(f"checkpoint {path} is truncated or corrupt ({first_line(error)}): re-export it") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise SegauditError(f"checkpoint {path} is truncated or corrupt ({first_line(error)}): re-export it") from None
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
    what = f"weights in {source.name} do not fit {describe(model.segaudit_spec)}"
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
