"""Train the default nucleus U-Net, export it and write its Triton config (one command).

Usage (from the repository root)::

    .venv/bin/python -m training.train                      # full run
    .venv/bin/python -m training.train --iterations 40      # quick smoke model

Fixed seeds; 2 torch threads. Checkpoints go to ``--workdir`` every ``--checkpoint-every``
iterations and a rerun with the same arguments resumes from the last one. At the end the
network is exported to ``<model-dir>/1/model.onnx`` (opset 17, dynamic N/H/W), the
post-processing thresholds are tuned on the validation block of the training quadrants, and
``<model-dir>/config.pbtxt`` is written.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .data import CLASSES, Tile, load_tile, sample_batch
from .export import export_onnx, write_config
from .losses import class_loss, distance_loss, foreground_loss
from .net import UNet, normalise
from .tune import tune_thresholds

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the training run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=2400)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256, help="crop side in px (multiple of 32)")
    p.add_argument("--width", type=int, default=12, help="U-Net channels of the first level")
    p.add_argument("--max-mult", type=int, default=16,
                   help="cap on the channel multiplier of the deep levels")
    p.add_argument("--stem", action=argparse.BooleanOptionalAction, default=True,
                   help="stride-2 stem, no 3x3 convolution at full resolution (3.0.0)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--w-fg", type=float, default=1.0)
    p.add_argument("--w-dist", type=float, default=10.0)
    p.add_argument("--w-class", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--version", default="3.0.0")
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "nucleus_unet")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/nucleus_unet_train"))
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    return p.parse_args(argv)


def class_weights(tile: Tile) -> torch.Tensor:
    """Inverse square-root pixel frequency of each class (mean 1)."""
    counts = np.bincount(tile.classes.ravel(), minlength=len(CLASSES) + 1)[1:].astype(float)
    w = 1.0 / np.sqrt(np.maximum(counts, 1.0))
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def lr_at(step: int, total: int, base: float, warmup: int = 30) -> float:
    """Linear warm-up then cosine decay to 1 % of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def train(args: argparse.Namespace) -> dict:
    """Train, export, tune, write config; returns a summary dict (also saved as JSON)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    args.workdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.workdir / "checkpoint.pt"
    log_file = open(args.workdir / "train.log", "a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    t_start = time.time()
    tile = load_tile()
    weights = class_weights(tile)
    net = UNet(width=args.width, n_classes=len(CLASSES), max_mult=args.max_mult,
               stem=args.stem)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    step, elapsed_before = 0, 0.0
    if ckpt_path.exists() and not args.fresh:
        state = torch.load(ckpt_path, weights_only=False)
        if state["args"] == _arg_key(args):
            net.load_state_dict(state["net"])
            opt.load_state_dict(state["opt"])
            rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"])
            step, elapsed_before = state["step"], state["elapsed_s"]
            log(f"resumed from {ckpt_path} at iteration {step}")
        else:
            log("checkpoint was made with other arguments: starting afresh")
    log(f"args {vars(args)}; {sum(p.numel() for p in net.parameters())} parameters; "
        f"class weights {weights.tolist()}")
    net.train()
    running: dict[str, float] = {}
    while step < args.iterations:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.iterations, args.lr)
        images, fg, dist, cls = sample_batch(tile, args.batch, args.crop, rng)
        x = normalise(torch.from_numpy(images))
        fg_t = torch.from_numpy(fg)[:, None]
        dist_t = torch.from_numpy(dist)[:, None]
        cls_t = torch.from_numpy(cls)
        fg_l, dist_l, cls_l = net(x)
        losses = {"fg": foreground_loss(fg_l, fg_t),
                  "dist": distance_loss(dist_l, dist_t, fg_t),
                  "cls": class_loss(cls_l, cls_t, weights)}
        loss = args.w_fg * losses["fg"] + args.w_dist * losses["dist"] + \
            args.w_class * losses["cls"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        for k, v in losses.items():
            running[k] = 0.9 * running.get(k, v.item()) + 0.1 * v.item()
        if step % 10 == 0 or step == args.iterations:
            el = elapsed_before + time.time() - t_start
            log(f"it {step}/{args.iterations} lr {opt.param_groups[0]['lr']:.2e} "
                + " ".join(f"{k} {v:.4f}" for k, v in running.items()) + f" elapsed {el:.0f}s")
        if step % args.checkpoint_every == 0 or step == args.iterations:
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "step": step,
                        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                        "elapsed_s": elapsed_before + time.time() - t_start,
                        "args": _arg_key(args)}, tmp)
            tmp.replace(ckpt_path)
    train_s = elapsed_before + time.time() - t_start
    net.eval()
    onnx_file = export_onnx(net, args.model_dir / "1" / "model.onnx")
    # A provisional config so the backend can load the model for tuning.
    write_config(args.model_dir, version=args.version, fg_threshold=0.5, seed_threshold=0.5,
                 min_area_px=16)
    tuned = tune_thresholds(args.model_dir, tile, log=log)
    write_config(args.model_dir, version=args.version, fg_threshold=tuned["fg_threshold"],
                 seed_threshold=tuned["seed_threshold"], min_area_px=tuned["min_area_px"])
    total_s = elapsed_before + time.time() - t_start
    summary = {"iterations": args.iterations, "train_s": round(train_s, 1),
               "total_s": round(total_s, 1), "onnx": str(onnx_file),
               "onnx_bytes": onnx_file.stat().st_size, **tuned}
    log(f"done: {json.dumps(summary)}")
    (args.workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _arg_key(args: argparse.Namespace) -> dict:
    skip = {"fresh", "workdir", "model_dir", "checkpoint_every", "version"}
    return {k: str(v) for k, v in vars(args).items() if k not in skip}


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m training.train``."""
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
