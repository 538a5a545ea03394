"""Why gradient matching fails on a train-mode client: how far its update turns when the image moves a little.

For one held-out nuclei crop and an untrained Unet-resnet18, adds Gaussian noise of ``eps`` times the image's
standard deviation and prints, per client mode and image size, the median over shared tensors of
``1 - cos(g(x + noise), g(x))`` (the distance the `layer_cosine` objective sees). A smooth landscape turns little
for small noise; one that turns by 0.1 at 0.1 % noise gives an optimiser no slope towards the truth.
The BatchNorm statistics a train-mode client reveals are printed alongside as the relative change of their
distance (`BatchNormPrior.distance`), which `seg` matches instead there.

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/train_mode_sensitivity.py [--sizes 64,128,256] [--threads 1]
"""
import argparse
import copy

import torch
import torch.nn.functional as F

from segaudit.attacks.objectives import simulate_update
from segaudit.attacks.priors import BatchNormPrior, client_batch_stats
from segaudit.data import load_dataset, make_batch, split
from segaudit.fl import client_update
from segaudit.models import build_model
from segaudit.preprocessing import normalisation

NOISE = (1e-5, 1e-3, 1e-2, 1e-1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="64,128,256")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("nuclei")
    _, heldout = split(data, seed=0)
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, classes=data.num_classes)
    params = {k: p.detach() for k, p in model.named_parameters()}
    print(f"median over tensors of 1 - cos(g(x + eps * std * noise), g(x)); untrained unet-resnet18, nuclei, "
          f"{torch.get_num_threads()} thread(s)")
    print("| px | client | what | " + " | ".join(f"eps = {e:g}" for e in NOISE) + " |")
    print("|" + "---|" * (3 + len(NOISE)))
    for size in map(int, args.sizes.split(",")):
        batch = make_batch(data, heldout[:1], size=size, fit="crop", seed=0, **normalisation(model))
        noisy = [batch.images + e * batch.images.std() * torch.randn(batch.images.shape,
                                                                     generator=torch.Generator().manual_seed(1))
                 for e in NOISE]
        for train in (False, True):
            update = client_update(model, batch, train_mode=train)
            turns = []
            for x in noisy:
                sim = simulate_update(model, params, dict(model.named_buffers()), x, batch.masks, update.meta,
                                      create_graph=False)
                cos = [F.cosine_similarity(sim[k].flatten(), t.flatten(), 0) for k, t in update.tensors.items()]
                turns.append(float((1 - torch.stack(cos)).median()))
            client = "train" if train else "eval"
            print(f"| {size} | {client} | update | " + " | ".join(f"{t:.2g}" for t in turns) + " |", flush=True)
            if train:
                print(f"| {size} | {client} | BatchNorm statistics | "
                      + " | ".join(f"{_statistics_distance(model, update, x):.2g}" for x in noisy) + " |", flush=True)


def _statistics_distance(model, update, images) -> float:
    """``BatchNormPrior.distance`` of ``images``' statistics to the client's (train mode, on a copy)."""
    copied = copy.deepcopy(model).train()
    stats = BatchNormPrior(copied, client_batch_stats(model, update))
    with torch.no_grad():
        copied(images)
    return float(stats.distance())


if __name__ == "__main__":
    main()
