"""Output files that appear whole or not at all, and output folders that are never clobbered silently."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import SegauditError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (NaN becomes null)."""
    return write_text(path, json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float):
        return None if obj != obj or obj in (float("inf"), float("-inf")) else obj
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalars
        return _jsonable(obj.item())
    return obj


def check_out_dir(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse an output folder that exists and is not empty (unless ``force``), or that holds the working or home
    folder (it would be replaced); creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SegauditError(f"output path {path} exists and is not a folder; choose another --out")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise SegauditError(f"output folder {path} already exists and is not empty; pass --force to overwrite or choose another --out")
    if path.is_dir():
        check_replaceable(path)
    return path


def check_replaceable(path: str | os.PathLike, keep: Mapping[str, str | os.PathLike] | None = None) -> Path:
    """Refuse to replace (delete) the filesystem root, the home folder, the working folder, a folder above them,
    or a folder holding one of ``keep`` (what it is -> an existing path the run still needs, e.g. its data)."""
    target = Path(path).resolve()
    kept = [Path.cwd()]
    try:
        kept.append(Path.home())
    except (RuntimeError, KeyError):  # no home folder known (some containers)
        pass
    if target == Path(target.anchor) or any(p.resolve().is_relative_to(target) for p in kept):
        raise SegauditError(f"refusing to replace {os.fspath(path)!r}: it is or holds the working or home folder; "
                            "give --out a new sub-folder")
    for what, needed in (keep or {}).items():
        if Path(needed).exists() and Path(needed).resolve().is_relative_to(target):
            raise SegauditError(f"--out {os.fspath(path)} holds this run's {what} {os.fspath(needed)}; --force would "
                                "delete it; choose another --out")
    return Path(path)


def inside(root: str | os.PathLike, rel: str | os.PathLike) -> Path:
    """``root / rel``, refusing a ``rel`` that is empty, absolute or leads outside ``root`` (``..``, links)."""
    base, target = Path(root).resolve(), (Path(root) / rel).resolve()
    if not os.fspath(rel) or Path(rel).is_absolute() or target == base or not target.is_relative_to(base):
        raise SegauditError(f"refusing to write {os.fspath(rel)!r}: output names must stay inside {os.fspath(root)}")
    return Path(root) / rel


def check_out_file(path: str | os.PathLike, force: bool = False, suffix: str | None = None) -> Path:
    """Refuse an output file that exists (unless ``force``) or lacks ``suffix``; creates nothing."""
    path = Path(path)
    if suffix and path.suffix != suffix:
        raise SegauditError(f"output file {path} must end in {suffix}")
    if path.is_dir():
        raise SegauditError(f"output path {path} is a folder; give a file name")
    if path.exists() and not force:
        raise SegauditError(f"{path} already exists; pass --force to overwrite")
    return path


@contextmanager
def atomic_dir(path: str | os.PathLike, merge: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds.

    With ``merge``, an existing ``path`` is kept and each file made in the block is renamed into it
    (other files stay); a new ``path`` still appears whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if merge and path.is_dir():
            for item in tmp.iterdir():
                os.replace(item, path / item.name)
            return
        if path.exists():
            check_replaceable(path)
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
