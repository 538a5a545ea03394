"""The audit's configuration: frozen dataclasses, built from YAML, flags or Python — the same objects.

Example YAML (every key optional; unknown keys are errors that name the key)::

    name: nuclei audit
    data: nuclei            # a bundled name or a folder with images/ and masks/
    size: 64
    models:
      - {name: unet, arch: unet, train_steps: 300}
      - {name: my-model, checkpoint: runs/model}   # a trained model folder
    attacks: [seg]
    batch_sizes: [1, 4]
    modes: [fedsgd, fedavg]
    images: 2               # client batches per cell (confidence intervals over images and seeds)
    seeds: [0]
    defenses: [none, noise:0.01, dp:eps=8]
    inference: [composition]
    layers: true
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .attacks import ATTACKS
from .attacks.base import HONEST_SERVER as HONEST_SERVER  # the attackers (``Attack.threat``), re-exported
from .attacks.base import MALICIOUS_SERVER as MALICIOUS_SERVER
from .attacks.inference import INFERENCE
from .defenses import parse_defense
from .errors import SegauditError
from .preprocessing import Preprocessing
from .types import CLIENT_MODE as CLIENT_MODE  # re-exported: tests and callers import it from here
from .types import CLIENT_MODES, FL_MODES

TRAIN_STEPS = 300  # a model's training budget when the audit trains it and the config names none


@dataclass(frozen=True)
class ModelConfig:
    """One audited model: a trained ``checkpoint`` folder or file, an in-memory ``model``, or ``arch``/``encoder``
    trained on the data first.

    Attributes:
        name: its label in the report (untrusted text: escaped when rendered).
        train_steps: training budget when the audit trains the model (default 300); refused for a checkpoint,
            whose training segaudit does not know.
        preprocessing: ``{"mean", "std", "scale"}`` the model was trained with; overrides its spec (see
            :mod:`segaudit.preprocessing`). A checkpoint that records none needs it.
        model: a model in memory (``nn.Module`` built or loaded by segaudit); the audit saves it into its folder
            and audits that copy. Not part of :meth:`AuditConfig.to_dict`: the saved copy's hash is recorded.
        intended_use: one line for the model card.
    """

    name: str = "unet"
    arch: str = "unet"
    encoder: str | None = None
    checkpoint: str | None = None
    train_steps: int | None = None
    preprocessing: dict | None = None
    intended_use: str = ""
    model: Any = field(default=None, compare=False, repr=False)

    @property
    def trains(self) -> bool:
        """Whether the audit trains this model (neither a checkpoint nor an in-memory model)."""
        return self.checkpoint is None and self.model is None

    @property
    def steps(self) -> int | None:
        """The training budget (None for a model the audit does not train)."""
        return (self.train_steps or TRAIN_STEPS) if self.trains else None


@dataclass(frozen=True)
class AuditConfig:
    """Everything an audit runs. Cells: models x attacks x modes x batch sizes x images x seeds.

    Attributes:
        data, classes, size: the client data (see :func:`segaudit.data.load_dataset`) and crop size in pixels.
        attacks, attack_steps, restarts: inversion attacks (names in ``ATTACKS``) and their budget.
        modes, local_steps, lr: FedSGD and/or FedAvg (``local_steps`` SGD steps at ``lr``).
        client_mode: ``"train"`` (the default: BatchNorm on the batch's statistics, as real clients train) or
            ``"eval"`` (running statistics; the easier case for the attacker).
        images, seeds: client batches per cell (at least 3 for an interval) and random seeds (intervals are
            over both).
        defenses: defense specs compared on utility and leakage (``"none"`` is the baseline).
        tradeoff_train_steps: training budget of each defended model.
        inference, inference_batch_sizes, inference_updates, property: inference attacks and their settings.
        layers, layer_attack_steps: per-layer leakage scores and the attack budget per group.
    """

    name: str = "segaudit audit"
    data: str = "nuclei"
    classes: int | None = None
    size: int = 64
    models: tuple[ModelConfig, ...] = (ModelConfig(),)
    attacks: tuple[str, ...] = ("seg",)
    attack_steps: int = 200
    restarts: int = 1
    batch_sizes: tuple[int, ...] = (1, 4)
    modes: tuple[str, ...] = ("fedsgd",)
    local_steps: int = 4
    lr: float = 0.01
    client_mode: str = CLIENT_MODE
    images: int = 3
    seeds: tuple[int, ...] = (0,)
    defenses: tuple[str, ...] = ("none",)
    tradeoff_train_steps: int = 150
    inference: tuple[str, ...] = ("composition",)
    inference_batch_sizes: tuple[int, ...] = (8,)
    inference_updates: int = 100
    property: str | None = None
    layers: bool = True
    layer_attack_steps: int = 30

    def __post_init__(self):
        if not self.models:
            raise SegauditError("the config lists no models; add one under 'models'")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise SegauditError(f"model names must be unique, got {names}")
        for key in ("size", "attack_steps", "restarts", "local_steps", "images", "inference_updates",
                    "tradeoff_train_steps", "layer_attack_steps"):
            if getattr(self, key) < 1:
                raise SegauditError(f"'{key}' must be at least 1, got {getattr(self, key)}")
        for key in ("batch_sizes", "inference_batch_sizes"):
            if any(b < 1 for b in getattr(self, key)):
                raise SegauditError(f"'{key}' must hold positive batch sizes, got {list(getattr(self, key))}")
        for m in self.models:
            _check_model_name(m.name)
            if m.checkpoint is not None and m.model is not None:
                raise SegauditError(f"model {m.name!r}: give a checkpoint or an in-memory model, not both")
            if m.train_steps is not None and not m.trains:
                raise SegauditError(f"model {m.name!r}: 'train_steps' applies to models the audit trains; drop it "
                                    "for a checkpoint (segaudit does not know how it was trained)")
            if m.train_steps is not None and m.train_steps < 1:
                raise SegauditError(f"model {m.name!r}: 'train_steps' must be at least 1, got {m.train_steps}")
            if m.preprocessing is not None:
                _check_preprocessing(m)
        for mode in self.modes:
            if mode not in FL_MODES:
                raise SegauditError(f"unknown mode {mode!r} in 'modes'; use fedsgd and/or fedavg")
        if self.client_mode not in CLIENT_MODES:
            raise SegauditError(f"'client_mode' must be train or eval, got {self.client_mode!r}")
        for a in self.attacks:
            ATTACKS.get(a)
        for a in self.inference:
            INFERENCE.get(a)
        for d in self.defenses:
            parse_defense(d)

    @classmethod
    def quick(cls, **overrides) -> AuditConfig:
        """A small budget for a first look (minutes on a laptop CPU)."""
        base = dict(attack_steps=60, batch_sizes=(1,), images=1, defenses=("none", "noise:0.01"),
                    tradeoff_train_steps=40, inference_updates=30, layer_attack_steps=8,
                    models=(ModelConfig(train_steps=60),))
        if "models" in overrides:  # the quick budget also trains the models it names for fewer steps
            overrides["models"] = tuple(dataclasses.replace(m, train_steps=m.train_steps or 60) if m.trains else m
                                        for m in overrides["models"])
        return cls(**{**base, **overrides})

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AuditConfig:
        """Build from plain values (YAML/JSON); unknown keys and wrong types are one-line errors naming the key."""
        if not isinstance(raw, dict):
            raise SegauditError("the config must be a mapping of keys to values")
        values = _checked(cls, raw, "")
        if "models" in values:
            models = values["models"]
            if not isinstance(models, list):
                raise SegauditError("'models' must be a list of mappings (name, arch, checkpoint, ...)")
            values["models"] = tuple(ModelConfig(**_checked(ModelConfig, m, f"models[{i}]."))
                                     for i, m in enumerate(models))
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> AuditConfig:
        """Read a YAML config (safe loader: no Python objects are ever constructed)."""
        import yaml

        try:
            with open(path, encoding="utf-8") as f:
                raw = yaml.safe_load(f)
        except FileNotFoundError:
            raise SegauditError(f"config file {os.fspath(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            reason = " ".join(str(e).split())[:200]
            raise SegauditError(f"cannot read config {os.fspath(path)!r}: {reason}") from None
        return cls.from_dict(raw or {})

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, not tuples) that :meth:`from_dict` turns back into an equal config (an in-memory
        model is left out: see :attr:`ModelConfig.model`)."""
        plain = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "models"}
        plain["models"] = [{f.name: getattr(m, f.name) for f in dataclasses.fields(m) if f.name != "model"}
                           for m in self.models]
        return json.loads(json.dumps(plain))

    def differences(self, other: AuditConfig) -> list[str]:
        """The keys whose values differ between this config and ``other`` (``models[0].checkpoint``, ``size``)."""
        mine, theirs = self.to_dict(), other.to_dict()
        keys = [k for k in mine if k != "models" and mine[k] != theirs.get(k)]
        if len(mine["models"]) != len(theirs["models"]):
            return keys + ["models"]
        return keys + [f"models[{i}].{k}" for i, (a, b) in enumerate(zip(mine["models"], theirs["models"]))
                       for k in a if a[k] != b.get(k)]

    def digest(self) -> str:
        """A short hash of the config, recorded in the report for reproducibility."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


def _check_preprocessing(m: ModelConfig) -> None:
    """A well-formed ``preprocessing`` (its channel count is checked against the model's when it is loaded)."""
    raw = m.preprocessing
    channels = len(raw["mean"]) if isinstance(raw, dict) and isinstance(raw.get("mean"), list) else 1
    Preprocessing.from_dict(raw, channels, f"model {m.name!r}: 'preprocessing'")


def _check_model_name(name: str) -> None:
    """A model name is a label that also names its folder under ``models/``: no path parts, no control characters."""
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or any(
            c in "/\\" or ord(c) < 32 or ord(c) == 127 for c in name):
        raise SegauditError(f"model name {name!r} is not a plain label (it also names a folder under models/); "
                            "drop / and \\ and control characters, and do not use '.' or '..'")


_SEQUENCES = {"attacks", "batch_sizes", "modes", "seeds", "defenses", "inference", "inference_batch_sizes"}


def _checked(cls, raw: Any, where: str) -> dict[str, Any]:
    """``raw`` restricted to ``cls``'s fields, with list fields made tuples and basic types checked."""
    if not isinstance(raw, dict):
        raise SegauditError(f"'{where.rstrip('.') or 'config'}' must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = {}
    for key, value in raw.items():
        if key not in fields:
            raise SegauditError(f"unknown config key '{where}{key}'; known keys: {', '.join(fields)}")
        if key in _SEQUENCES:
            value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        elif key != "models":
            value = _typed(fields[key], value, f"{where}{key}")
        out[key] = value
    return out


def _typed(f: dataclasses.Field, value: Any, key: str) -> Any:
    kind = str(f.type)
    if value is None and "None" in kind:
        return None
    if kind.startswith("bool"):
        ok = isinstance(value, bool)
    elif kind.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind.startswith("dict"):
        ok = isinstance(value, dict)
    elif kind.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:  # str fields
        ok = isinstance(value, str)
    if not ok:
        raise SegauditError(f"config key '{key}' must be {kind.replace(' | None', ' or null')}, got {value!r}")
    return value
