"""Test-session setup: with pytest-xdist workers (``make test`` runs two), each worker's torch uses one thread,
so two workers share the two cores instead of fighting over them (see the README's note on threads)."""
import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # also for the CLI subprocesses the tests start
    torch.set_num_threads(1)
