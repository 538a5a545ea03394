"""Output files that appear whole or not at all, and output folders that are never clobbered silently."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import SegauditError

_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def _fresh(folder: Path, prefix: str, suffix: str, create) -> Path:
    """Create a new, uniquely named entry in ``folder`` with ``create(path)`` and return its path.

    Unlike ``tempfile.mkstemp``/``mkdtemp`` (always 0600/0700), ``create`` passes 0o666/0o777 so the entry
    gets the mode the umask (and any default ACL) gives, as for any other file the user writes: these
    temporary entries are renamed into place as the outputs themselves.
    """
    for _ in range(100):
        candidate = folder / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not create a temporary name in {folder}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The file ends with the mode the umask gives (e.g. 0644), even if the writer made it private (safetensors
    writes 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = _fresh(path.parent, f".{path.name}.", ".tmp", lambda p: os.close(os.open(p, _NEW_FILE, 0o666)))
    try:
        mode = stat.S_IMODE(tmp_path.stat().st_mode)  # 0o666 less the umask
        yield tmp_path
        _set_mode(tmp_path, mode)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _set_mode(path: Path, mode: int) -> None:
    """Give the file or folder ``path`` the permission bits ``mode`` (files keep any execute bits ``mode``
    allows); links are left alone."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return
    want = mode if stat.S_ISDIR(st.st_mode) else (0o666 | (st.st_mode & 0o111)) & mode
    if stat.S_IMODE(st.st_mode) != want:
        os.chmod(path, want)


def _set_modes(folder: Path, mode: int) -> None:
    """:func:`_set_mode` on ``folder`` and everything in it (links not followed)."""
    _set_mode(folder, mode)
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            _set_mode(Path(root) / name, mode)


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
        raise SegauditError(f"output folder {path} already exists and is not empty; "
                            "pass --force to overwrite or choose another --out")
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
    (other files stay); a new ``path`` still appears whole. What the block made gets the modes the umask
    gives (e.g. 0755 folders, 0644 files), even where a writer made it private.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh(path.parent, f".{path.name}.", "", lambda p: os.mkdir(p, 0o777))
    try:
        mode = stat.S_IMODE(tmp.stat().st_mode)  # 0o777 less the umask
        yield tmp
        _set_modes(tmp, mode)
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
