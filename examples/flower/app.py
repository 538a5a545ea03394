"""The Flower app of segaudit's example: FedAvg of a small U-Net, every client behind the leakage gate.

* :func:`client_app`: a ``ClientApp`` whose train function loads the received global weights into a copy of the
  model, trains it on the client's own images (``torch.optim.SGD`` for ``local-steps`` steps at ``lr`` over
  mini-batches of ``batch-size``, in segaudit's mini-batch order, :func:`segaudit.fl.local_batches`) and replies
  with its weights and ``num-examples``. Mods: ``[leakage_gate_mod, capture_mod]``: Flower runs the first mod
  outermost, so the capture saves every update the client computed (blocked ones too, to attack what would have
  leaked) and the gate is the last to look at what leaves.
* :func:`server_app`: a ``ServerApp`` running Flower's ``FedAvg``, which aggregates only the replies that carry
  content: an update the gate blocked arrives as an error reply and is left out. It saves the global model of
  every round as a segaudit checkpoint, ``<out>/models/global-<R>`` (``global-0``: the initial weights; round R's
  clients trained from ``global-<R-1>``).

Shapes: client i holds ``[B_i, C, size, size]`` images and ``[B_i, size, size]`` masks.
"""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from torch import nn

from segaudit.data import Dataset, load_dataset, make_batch
from segaudit.fl import local_batches
from segaudit.integrations.flower import KEY_NUM_EXAMPLES, capture_mod, leakage_gate_mod, train_settings
from segaudit.losses import task_loss
from segaudit.models import build_model, save_model
from segaudit.preprocessing import normalisation
from segaudit.types import Batch, UpdateMeta


def small_unet(channels: int, classes: int) -> nn.Module:
    """The example's seeded U-Net (resnet18 encoder, depth 3, decoder 16/8/4; no pretrained weights):
    ``[N, C, H, W]`` -> ``[N, K, H, W]``, fast at 32 px on CPU."""
    torch.manual_seed(0)
    return build_model("unet", in_channels=channels, classes=classes, encoder_weights=None, encoder_depth=3,
                       decoder_channels=[16, 8, 4])


def client_images(batch_sizes: list[int], clients: int) -> list[list[int]]:
    """Dataset positions of each client's images: client i takes ``batch_sizes[i % len(batch_sizes)]`` images
    after those of the clients before it (no image is shared)."""
    sizes = [batch_sizes[i % len(batch_sizes)] for i in range(clients)]
    starts = [sum(sizes[:i]) for i in range(clients)]
    return [list(range(start, start + n)) for start, n in zip(starts, sizes)]


@lru_cache(maxsize=4)
def cached_dataset(data: str, classes: int | None) -> Dataset:
    """The dataset, read once per process (each simulated client runs in a Ray worker)."""
    return load_dataset(data, classes=classes)


def local_train(model: nn.Module, batch: Batch, settings: dict) -> float:
    """Train ``model`` in place on ``batch`` with plain SGD, as :func:`segaudit.fl.client_update` simulates it;
    the last step's loss. ``settings``: :func:`segaudit.integrations.flower.train_settings`."""
    meta = UpdateMeta("fedavg", len(batch), settings["loss"], lr=settings["lr"], local_steps=settings["local_steps"],
                      local_batch_size=min(settings["batch_size"], len(batch)), train_mode=settings["train_mode"])
    model.train(meta.train_mode)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=meta.lr)
    for idx in local_batches(len(batch), meta):
        optimizer.zero_grad()
        value = task_loss(model(batch.images[idx]), batch.masks[idx], meta.loss, meta.reduction)
        value.backward()
        optimizer.step()
    return float(value)


def client_app(model: nn.Module, data: str, classes: int | None, size: int, images: list[list[int]],
               out: Path, threshold: float = 0.5, action: str = "block") -> ClientApp:
    """The ClientApp: partition i trains on ``images[i]`` of ``data`` at ``size`` px; the gate logs its decisions
    to ``out/gate`` and the capture writes ``out/updates``."""
    app = ClientApp(mods=[leakage_gate_mod(model, size, threshold, action, log_dir=out / "gate"),
                          capture_mod(model, out / "updates")])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        settings = train_settings(msg)
        torch.set_num_threads(1)
        client = copy.deepcopy(model)
        client.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        batch = make_batch(cached_dataset(data, classes), images[int(context.node_config["partition-id"])],
                           size=size, **normalisation(client))
        loss = local_train(client, batch, settings)
        metrics = MetricRecord({KEY_NUM_EXAMPLES: len(batch), "train-loss": loss})
        return Message(RecordDict({"arrays": ArrayRecord(client.state_dict()), "metrics": metrics}), reply_to=msg)

    return app


def server_app(model: nn.Module, clients: int, rounds: int, config: dict, out: Path) -> ServerApp:
    """The ServerApp: ``rounds`` of FedAvg over all ``clients`` from ``model``'s weights, sending ``config`` (the
    train ConfigRecord: ``lr``, ``local-steps``, ``batch-size``, ``client-mode``); saves ``out/models/global-<R>``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        global_model = copy.deepcopy(model)

        def save_global(server_round: int, arrays: ArrayRecord) -> None:
            global_model.load_state_dict(arrays.to_torch_state_dict())
            save_model(global_model, out / "models" / f"global-{server_round}")

        strategy = FedAvg(fraction_evaluate=0.0, min_train_nodes=clients, min_available_nodes=clients)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(global_model.state_dict()), num_rounds=rounds,
                       train_config=ConfigRecord(config), evaluate_fn=save_global)

    return app
