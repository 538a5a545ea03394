"""Client updates on disk: safetensors files, as a federated client would save them (never pickle)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .errors import SegauditError
from .io import atomic_path, check_out_file
from .types import ClientUpdate, UpdateMeta

_BUFFER_PREFIX = "buffers::"
_META_KEY = "segaudit.update_meta"


def save_update(update: ClientUpdate, path: str | Path, force: bool = False) -> Path:
    """Write ``update`` to ``path`` (.safetensors): tensors by parameter name, buffers prefixed, meta as JSON."""
    from safetensors.torch import save_file

    path = check_out_file(path, force, ".safetensors")
    tensors = {k: v.contiguous() for k, v in update.tensors.items()}
    tensors.update({_BUFFER_PREFIX + k: v.contiguous() for k, v in update.buffers.items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(dataclasses.asdict(update.meta))})
    return path


def load_update(path: str | Path, default_meta: UpdateMeta | None = None) -> ClientUpdate:
    """Read a safetensors update; files from other clients without segaudit metadata get ``default_meta``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SegauditError(f"update file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta_json = (f.metadata() or {}).get(_META_KEY)
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for corrupt headers/data
        raise SegauditError(f"update file {path} is not a readable safetensors file ({type(e).__name__})") from None
    if meta_json:
        try:
            meta = UpdateMeta(**json.loads(meta_json))
        except (TypeError, ValueError):
            raise SegauditError(f"update file {path} has malformed segaudit metadata") from None
    elif default_meta is not None:
        meta = default_meta
    else:
        meta = UpdateMeta("fedsgd", batch_size=1)
    tensors = {k: v for k, v in raw.items() if not k.startswith(_BUFFER_PREFIX)}
    buffers = {k[len(_BUFFER_PREFIX):]: v for k, v in raw.items() if k.startswith(_BUFFER_PREFIX)}
    return ClientUpdate(tensors, meta, buffers)
