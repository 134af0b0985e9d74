"""Self-distillation: teach the plain network what its test-time average says.

The network averaged over its four mirror images and four one-pixel phases (16 calls, the
CLI's ``--test-time-flips --test-time-shifts``) is more accurate and far steadier than one
call (MODEL.md, "Stability"), but 16 times the price. This phase trains the network, one
call, towards that average:

* a **teacher**: the trained network, frozen, run on a *clean* view of a crop at all 16
  flips x phases, its maps averaged (:func:`averaged_maps`, the twin of
  ``slicer_cli/nuclei/backends/test_time.py`` in PyTorch);
* a **student**: the same network, trained further on a view of the same crop *shifted* by
  0-31 px and *degraded* (re-staining, HED / HSV jitter, blur, noise, JPEG 40-95); pulled to
  the teacher's maps over the common region (``losses.consistency_loss``).

So the target does not move with the pixel phase, and what JPEG, blur or a stain does to
the student's view is a difference from it to unlearn. Half of the crops come from the real
unlabelled H&E (``training/unlabelled.py``, the CMU slide's evaluation and selection regions
painted out as glass, ``unlabelled.paint_out``), half from the labelled tile off its reserved
boxes; each batch keeps supervised crops so the labels still anchor the maps (the base
run's losses, without its connective foreground weight). The network exported is an
exponential moving average of the student.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slicer_cli.nuclei.backends import test_time
from slicer_cli.nuclei.network import UNet, normalise

from .augment import photometric
from .losses import consistency_loss
from .train import SHIFT_PX, lr_at, supervised_loss

#: the teacher's flips (spatial dims of NCHW: the NHWC axes of ``test_time.FLIPS`` moved one
#: on) and pixel phases (down, right): the CLI's --test-time-flips and --test-time-shifts
FLIPS = tuple(tuple(axis + 1 for axis in axes) for axes, _ in test_time.FLIPS[:4])
PHASES = test_time.SHIFTS[:4]


@torch.no_grad()
def averaged_maps(net: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Probabilities ``(fg [N,H,W], dist [N,H,W], cls [N,C,H,W])`` of ``net`` on ``images``
    (uint8 NHWC) averaged over the 4 flips x 4 one-pixel phases, as
    ``backends.test_time.infer_averaged`` does (reflected rows and columns in, the last
    row / column repeated out)."""
    x = normalise(images)
    h, w = x.shape[-2:]
    total = None
    for dy, dx in PHASES:
        moved = x
        if dy or dx:
            moved = F.pad(x, (dx, 0, dy, 0), mode="reflect")[..., :h, :w]
        for dims in FLIPS:
            fg, dist, cls = net(torch.flip(moved, dims) if dims else moved)
            maps = torch.cat([torch.sigmoid(fg), torch.sigmoid(dist), torch.softmax(cls, 1)], 1)
            if dims:
                maps = torch.flip(maps, dims)
            if dy or dx:
                maps = F.pad(maps[..., dy:, dx:], (0, dx, 0, dy), mode="replicate")
            total = maps if total is None else total + maps
    total = total / (len(PHASES) * len(FLIPS))
    return total[:, 0], total[:, 1], total[:, 2:]


def distill(net: UNet, sampler, pool, class_weights: torch.Tensor, args, workdir: Path,
            log: Callable[[str], None], device: torch.device) -> UNet:
    """``args.distill`` iterations of self-distillation from ``net`` (frozen as teacher);
    returns the moving average of the student (eval mode). Resumable from
    ``workdir/distill_checkpoint.pt`` (same arguments)."""
    teacher = copy.deepcopy(net).to(device).eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    student = copy.deepcopy(net).to(device).train()
    average = copy.deepcopy(net).to(device).eval()
    for param in student.parameters():  # ``net`` is an exported moving average: frozen
        param.requires_grad_(True)
    opt = torch.optim.AdamW(student.parameters(), lr=args.distill_lr,
                            weight_decay=args.weight_decay)
    rng = np.random.default_rng(args.seed + 2)
    key = {k: str(getattr(args, k)) for k in ("distill", "distill_crops", "distill_sup",
                                               "distill_lr", "w_distill", "seed", "crop")}
    frozen_bn = args.distill_bn == "frozen"
    if frozen_bn:  # (run K's key stays as it was)
        key["distill_bn"] = "frozen"
    ckpt = workdir / "distill_checkpoint.pt"
    step, elapsed = 0, 0.0
    if ckpt.exists() and not args.fresh:
        state = torch.load(ckpt, weights_only=False, map_location=device)
        if state["key"] == key:
            student.load_state_dict(state["student"])
            average.load_state_dict(state["average"])
            opt.load_state_dict(state["opt"])
            rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"].cpu())
            step, elapsed = state["step"], state["elapsed_s"]
            log(f"distillation resumed from {ckpt} at iteration {step}")
    shift, size = SHIFT_PX, args.crop
    t0 = time.time()
    running: dict[str, float] = {}
    if frozen_bn:  # the trained network's statistics, not those of the distilled batches
        for module in student.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    while step < args.distill:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.distill, args.distill_lr, warmup=20)
        sup = [sampler.crop(size, rng) for _ in range(args.distill_sup)]
        images, fg, dist, cls = (np.stack(c) for c in zip(*sup))
        clean, seen, offsets = [], [], []
        for _ in range(args.distill_crops):
            unlabelled = rng.random() < 0.5
            raw = pool.image(size + shift, rng) if unlabelled else sampler.image(size + shift, rng)
            oa, ob = rng.integers(0, shift, 2), rng.integers(0, shift, 2)
            clean.append(np.ascontiguousarray(raw[oa[0]:oa[0] + size, oa[1]:oa[1] + size]))
            view = np.ascontiguousarray(raw[ob[0]:ob[0] + size, ob[1]:ob[1] + size])
            seen.append(photometric(view, rng) if unlabelled else sampler._degrade(view, rng))
            offsets.append((int(ob[0] - oa[0]), int(ob[1] - oa[1])))
        target = averaged_maps(teacher, torch.from_numpy(np.stack(clean)).to(device))
        batch = torch.from_numpy(np.concatenate([images, np.stack(seen)])).to(device)
        fg_l, dist_l, cls_l = student(normalise(batch))
        n = len(sup)
        losses, loss = supervised_loss(args, (fg_l[:n], dist_l[:n], cls_l[:n]),
                                       (fg, dist, torch.from_numpy(cls).to(device)),
                                       class_weights, device)
        losses["distill"] = consistency_loss((fg_l[n:], dist_l[n:], cls_l[n:]), target, offsets)
        loss = loss + args.w_distill * losses["distill"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        with torch.no_grad():
            decay = min(args.ema, 1.0 - 1.0 / (step + 1))
            for a, s in zip(average.parameters(), student.parameters()):
                a.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
            for a, s in zip(average.buffers(), student.buffers()):
                a.copy_(s)
        for k, v in losses.items():
            running[k] = 0.9 * running.get(k, v.item()) + 0.1 * v.item()
        if step % 10 == 0 or step == args.distill:
            log(f"distill {step}/{args.distill} lr {opt.param_groups[0]['lr']:.2e} "
                + " ".join(f"{k} {v:.4f}" for k, v in running.items())
                + f" elapsed {elapsed + time.time() - t0:.0f}s")
        if step % args.checkpoint_every == 0 or step == args.distill:
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"student": student.state_dict(), "average": average.state_dict(),
                        "opt": opt.state_dict(), "step": step,
                        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                        "elapsed_s": elapsed + time.time() - t0, "key": key}, tmp)
            tmp.replace(ckpt)
    return average.eval()
