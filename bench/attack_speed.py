"""Seconds per attack step, as ratios measured in the same run.

* overhead: one step of segaudit's `seg` attack (simulate the client's update with functional_call, match
  per layer, backpropagate to the image and mask) / the bare minimum — a plain-torch forward + double
  backward of the same model at the same size (target <= 1.15);
* restarts: time(R=8 restarts) / time(R=1) for the attack as implemented, the 8 restarts optimised together
  in one batched pass (target <= 3), and the same 8 restarts run one after another (``restart_batch=1``);
  for scale, what batching buys plain torch on this machine: a forward + backward of 8 images / of 1.

Run: .venv/bin/python bench/attack_speed.py [--size 64] [--steps 10]
"""
import argparse
import time

import torch
import torch.nn.functional as F

from segaudit.attacks import ATTACKS
from segaudit.data import load_dataset, make_batch
from segaudit.fl import client_update
from segaudit.models import build_model
from segaudit.types import Prior


def plain_step_seconds(model, x, target_grads, steps):
    """Forward + double backward in plain torch: the least any gradient-matching step can cost."""
    params = [p for p in model.parameters()]
    x = x.clone().requires_grad_()
    logits = torch.zeros(x.shape[0], 2, *x.shape[2:], requires_grad=True)

    def step():
        loss = F.cross_entropy(model(x), logits.softmax(1))
        grads = torch.autograd.grad(loss, params, create_graph=True)
        match = sum(1 - F.cosine_similarity(g.flatten(), t.flatten(), dim=0) for g, t in zip(grads, target_grads))
        match.backward()

    return seconds_per_call(step, steps)


def seconds_per_call(fn, calls):
    """Mean seconds of ``fn()`` over ``calls`` calls, after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def batching_ratio(model, size, steps):
    """time(forward + backward of 8 images) / time(of 1 image) in plain torch: what batching alone buys."""
    def fwd_bwd(n):
        x = torch.randn(n, 1, size, size, requires_grad=True)
        return seconds_per_call(lambda: model(x).square().mean().backward(), steps)

    one = fwd_bwd(1)
    return fwd_bwd(8) / one


def default_loss(prior):
    """The objective and ReLU curvature a default (200-step) `seg` run uses, whatever the few steps timed here."""
    return ATTACKS.create("seg").loss_settings(prior)


def attack_seconds(model, update, prior, steps, restarts, restart_batch=8):
    objective, curvature = default_loss(prior)
    attack = ATTACKS.create("seg", steps=steps, restarts=restarts, restart_batch=restart_batch,
                            objective=objective, relu_curvature=curvature)
    return seconds_per_call(lambda: attack.run(model, update, prior), 1)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--train-mode", action="store_true", help="client in train mode (default: eval)")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, classes=2)
    batch = make_batch(load_dataset("nuclei"), [0], size=args.size, fit="crop", seed=0)
    update = client_update(model, batch, train_mode=args.train_mode)
    prior = Prior.from_batch_shape(batch)
    model.train(args.train_mode)
    base = plain_step_seconds(model, batch.images, list(update.tensors.values()), args.steps)
    one = attack_seconds(model, update, prior, args.steps, 1)
    eight = attack_seconds(model, update, prior, args.steps, 8)
    eight_one_by_one = attack_seconds(model, update, prior, args.steps, 8, restart_batch=1)
    plain_batching = batching_ratio(model, args.size, args.steps)
    print(f"Unet-resnet18, {args.size} px, batch 1, {'train' if args.train_mode else 'eval'} mode, "
          f"{torch.get_num_threads()} threads, seg loss {default_loss(prior)}")
    print(f"plain torch fwd + double bwd : {base:.3f} s/step")
    print(f"seg attack step              : {one / args.steps:.3f} s/step  "
          f"overhead {one / args.steps / base:.2f}x (target <= 1.15)")
    print(f"8 restarts / 1 restart       : {eight / one:.2f}x batched (target <= 3), "
          f"{eight_one_by_one / one:.2f}x one after another")
    print(f"plain torch fwd + bwd, 8 / 1 : {plain_batching:.2f}x (what batching alone buys on this machine)")
