"""Shared fixtures, and the test-session setup: with pytest-xdist workers (``make test`` runs two), each worker's
torch uses one thread, so two workers share the two cores instead of fighting over them (see docs/benchmarks.md).

The folders under ``tests/`` mirror the package (``tests/attacks`` tests ``segaudit/attacks``, ...); tests of a
top-level module (``fl``, ``defenses``, ``audit``, ...) and of the whole house (layout, Makefile, notebooks) sit here.
"""
import os

import pytest
import torch

from segaudit.data import load_dataset
from segaudit.models import build_model

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # also for the CLI subprocesses the tests start
    torch.set_num_threads(1)


def _tiny_unet(classes: int = 2):
    """A seeded 1-channel smp U-Net, encoder depth 3, decoder channels 16/8/4: fast at 32 px."""
    torch.manual_seed(0)
    return build_model("unet", in_channels=1, classes=classes, encoder_depth=3, decoder_channels=[16, 8, 4])


@pytest.fixture(scope="session")
def tiny_unet():
    """The factory of the tests' small real model: ``tiny_unet(classes=2)`` builds a fresh, seeded one."""
    return _tiny_unet


@pytest.fixture(scope="session")
def nuclei():
    """The bundled nuclei dataset."""
    return load_dataset("nuclei")
