"""Train the default nucleus U-Net, export it and write its Triton config (one command).

Usage (from the repository root)::

    .venv/bin/python -m training.train
        # 5.1.0 as shipped: first its measured twin (held-out quadrant and validation block
        # kept out: the figures of MODEL.md; <workdir>/heldout_model), then every labelled
        # pixel with the twin's thresholds and temperature -> models/nucleus_unet
    .venv/bin/python -m training.train --split heldout --model-dir /tmp/m5
        # the twin alone
    .venv/bin/python -m training.train --iterations 40      # quick smoke model

Fixed seeds; 2 torch threads. Each iteration (6000 by default): a batch of class-balanced,
augmented crops of the labelled tile (``training/data.py``, ``training/augment.py``: one
geometric warp, a re-staining with real stain vectors of unlabelled slides, the
degradations). ``--pairs N`` (4 by default) of them are labelled pairs: the same crop seen
twice, shifted by up to 31 px and degraded separately, both supervised and pulled together
by a symmetric consistency loss (``losses.pair_consistency_loss``, weight ``--w-pair``),
which teaches the network that a shift or a re-encoding changes nothing. With
``--consistency N`` (0 by default; runs A and B of EXPERIMENTS.md) also N mean-teacher pairs
(half from real unlabelled H&E, ``training/unlabelled.py``): the student on one view is
pulled towards an exponential moving average of itself on the other
(``losses.consistency_loss``). Either way the network exported is that moving average of
the trained weights (decay ``--ema``). The foreground cross-entropy counts the pixels of
connective nuclei twice (``--fg-weight-connective``). ``--distill N`` (0 by default; run K
of EXPERIMENTS.md) adds N iterations of self-distillation after the loop (``training/distill.py``).

Checkpoints go to ``--workdir`` every ``--checkpoint-every`` iterations and a rerun with the
same arguments resumes from the last one. At the end the network is exported to
``<model-dir>/1/model.onnx`` (opset 17, dynamic N/H/W), the post-processing thresholds are
set (``--thresholds``, scored on the validation block next to the grid search's best) and
the class probabilities calibrated on the validation block (``--split heldout``) or both
taken from ``--settings-from`` (``--split all``), and ``<model-dir>/config.pbtxt`` is
written. A rerun that differs only in export options (``--thresholds``, ``--version``,
``--model-dir``) resumes at the end and exports again.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from slicer_cli.nuclei.model import THRESHOLDS
from slicer_cli.nuclei.network import UNet, normalise, save_weights

from .augment import photometric
from .calibrate import calibrate
from .data import (
    CLASSES,
    RESERVED,
    VALIDATION,
    Box,
    CropSampler,
    Tile,
    load_tile,
    mirror_edges,
    region,
)
from .export import export_onnx, write_config
from .loader import batches
from .losses import (
    class_loss,
    consistency_loss,
    distance_loss,
    foreground_loss,
    pair_consistency_loss,
)
from .quantize import calibration_images, quantize
from .tune import tune_thresholds

#: the views of a consistency pair are cut from a crop this much larger (max shift + 1)
SHIFT_PX = 32
#: nuclei whose calibrated class probability is below this are shown as uncertain
UNCERTAIN_BELOW = 0.5
#: the connective class's value in the class maps (``--fg-weight-connective``)
CONNECTIVE = CLASSES.index("connective") + 1

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of the training run."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--iterations", type=int, default=6000, help="5.1.0: 6000; 5.0.0: 4800")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=256, help="crop side in px (multiple of 32)")
    p.add_argument("--width", type=int, default=12, help="U-Net channels of the first level")
    p.add_argument("--max-mult", type=int, default=16,
                   help="cap on the channel multiplier of the deep levels")
    p.add_argument("--stem", action=argparse.BooleanOptionalAction, default=True,
                   help="stride-2 stem, no 3x3 convolution at full resolution (3.0.0)")
    p.add_argument("--antialias", action=argparse.BooleanOptionalAction, default=True,
                   help="low-pass the input before the stride-2 stem (since 4.0.0)")
    p.add_argument("--stem-blur", type=int, choices=(3, 5), default=3,
                   help="side of the binomial low-pass before the stem (5.2.0: 3)")
    p.add_argument("--head-width", type=int, default=None,
                   help="channels of a transposed-convolution head (3.0.0: the first "
                        "level's 12)")
    p.add_argument("--blur-pools", type=int, default=4,
                   help="anti-aliased max-poolings, from the first (4.0.0: 2; 5.0.0: all 4)")
    p.add_argument("--bilinear-head", action=argparse.BooleanOptionalAction, default=True,
                   help="half-resolution logits, bilinear to full resolution (since 4.0.0)")
    p.add_argument("--bilinear-up", action=argparse.BooleanOptionalAction, default=True,
                   help="decoder upsampling by 1x1 conv + bilinear instead of transposed "
                        "convolutions (5.0.0)")
    p.add_argument("--chroma-blur", type=float, default=1.5, metavar="SIGMA",
                   help="Gaussian low-pass (px) of the input's chroma inside the network "
                        "(5.3.0: 1.5; 0: none, as before)")
    p.add_argument("--chroma-half", action=argparse.BooleanOptionalAction, default=False,
                   help="with --chroma-blur: the smoothed chroma enters at half resolution, "
                        "next to the stem, instead of at full resolution before it (less "
                        "full-resolution work; UNet's chroma_half; run N of EXPERIMENTS.md, not "
                        "shipped)")
    p.add_argument("--refine", type=int, default=0,
                   help="channels of a full-resolution refinement of the logits (0: none)")
    p.add_argument("--split", choices=("heldout", "all"), default="all",
                   help="heldout: keep the held-out quadrant and validation block out (the "
                        "measured twin); all (default): train on every labelled pixel (the "
                        "shipped run), with the twin's thresholds and temperature")
    p.add_argument("--exclude", type=_box, action="append", default=None,
                   metavar="ROW0,ROW1,COL0,COL1",
                   help="leave this rectangle of the labelled tile out of training as well, "
                        "as the reserved boxes are (repeatable; a learning curve: the same "
                        "recipe on less labelled tissue, EXPERIMENTS.md)")
    p.add_argument("--settings-from", type=Path, default=None,
                   help="with --split all: summary.json of a heldout run to take thresholds "
                        "and temperature from (default: train that twin first, with the same "
                        "options, in <workdir>/heldout, its model in <workdir>/heldout_model)")
    p.add_argument("--consistency", type=int, default=0,
                   help="mean-teacher consistency crop pairs per iteration (0, the default: "
                        "supervised only; runs A and B of EXPERIMENTS.md used 4)")
    p.add_argument("--thresholds", default="0.4,0.4,32,0.7", type=_thresholds,
                   help="post-processing fg_threshold,seed_threshold,min_area_px[,"
                        "fg_peak_threshold] (peak 0 when left out), or 'tune' for the grid "
                        "search on the validation block (training/tune.py); the default is "
                        "3.0.0's setting, which keeps nuclei out of the training tissue, with "
                        "5.2.0's peak (EXPERIMENTS.md, 'Hysteresis, 5.2.0')")
    p.add_argument("--pairs", type=int, default=4,
                   help="crops of the batch seen twice, shifted by up to 31 px and degraded "
                        "separately, both supervised and pulled together (5.0.0: 4 pairs, "
                        "8 views; 0: --batch independent crops)")
    p.add_argument("--w-pair", type=float, default=2.0, help="weight of the pair consistency")
    p.add_argument("--pair-views", choices=("independent", "rescan"), default="independent",
                   help="how the two views of a labelled pair differ (data.CropSampler.pair): "
                        "independent (the default, 5.0.0-5.3.0), each its own whole chain of "
                        "degradations, stain included; rescan (run O of EXPERIMENTS.md, not "
                        "shipped), the same stain, colour and focus and each its own noise "
                        "and JPEG file, as a re-scan or a re-encoded copy")
    p.add_argument("--pair-edges", type=_fraction, default=0.0,
                   help="probability per labelled pair that view B meets the network as a "
                        "lone tile does with the grid anchor: each of its four edges, with "
                        "probability 1/2, a band of 1-31 px mirrored (data.mirror_edges), "
                        "left out of the pair's consistency (run U of EXPERIMENTS.md; 0: none)")
    p.add_argument("--stain-transfer", type=float, default=0.7,
                   help="probability of re-staining a crop with real stain vectors of the "
                        "unlabelled slides (5.0.0: 0.7; 0 before)")
    p.add_argument("--jpeg-p", type=_fraction, default=0.5,
                   help="probability of a JPEG re-compression (quality 40-95) per crop and per "
                        "view of a pair (run S of EXPERIMENTS.md: 0.9)")
    p.add_argument("--scale-range", type=_scale_range, default=(0.7, 1.4),
                   help="MIN,MAX source pixels per crop pixel, log-uniform (5.0.0 and 4.0.0: "
                        "0.7,1.4; run F of EXPERIMENTS.md: 0.7,2.0)")
    p.add_argument("--unlabelled-fraction", type=float, default=0.5)
    p.add_argument("--w-cons", type=float, default=1.0)
    p.add_argument("--ema", type=float, default=0.99, help="mean-teacher decay")
    p.add_argument("--swa-from", type=_swa_starts, default=(), metavar="F[,F...]",
                   help="also keep the plain mean of the trained weights from these fractions "
                        "of the run on (tail averaging; the run itself is unchanged), for "
                        "--export-weights")
    p.add_argument("--export-weights", default="ema", metavar="ema|swaF",
                   help="the weights exported: ema, the moving average (decay --ema; as "
                        "shipped), or swaF, the mean from fraction F of the run on (one of "
                        "--swa-from), its batch-norm statistics re-estimated on training crops")
    p.add_argument("--pseudo-labels", type=Path, default=None, metavar="TEACHER_DIR",
                   help="a twin model whose nuclei on the unlabelled H&E become training "
                        "targets (training/pseudo.py; run M of EXPERIMENTS.md; off by default)")
    p.add_argument("--pseudo-fraction", type=_fraction, default=0.25,
                   help="with --pseudo-labels: share of the labelled pairs cut from them")
    p.add_argument("--distill", type=int, default=0,
                   help="iterations of self-distillation after training (training/distill.py): "
                        "the network taught its own test-time average; 0: none")
    p.add_argument("--distill-crops", type=int, default=4,
                   help="distillation crops per batch (half real unlabelled H&E)")
    p.add_argument("--distill-sup", type=int, default=4,
                   help="supervised crops per distillation batch")
    p.add_argument("--distill-lr", type=float, default=5e-4)
    p.add_argument("--distill-bn", choices=("train", "frozen"), default="train",
                   help="batch-norm statistics during the distillation: updated by its batches "
                        "(run K) or kept as the trained network's")
    p.add_argument("--w-distill", type=float, default=4.0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--w-fg", type=float, default=1.0)
    p.add_argument("--w-dist", type=float, default=10.0)
    p.add_argument("--fg-weight-connective", type=float, default=2.0,
                   help="weight of connective nuclei's pixels in the foreground "
                        "cross-entropy, others 1 (5.1.0: 2; 1 before): the faint stromal "
                        "nuclei it missed")
    p.add_argument("--w-class", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where the network trains (cuda: a GPU machine, docs/GPU.md); crops "
                        "are made on the CPU either way, and export, tuning and calibration "
                        "run on the CPU")
    p.add_argument("--version", default="5.4.0")
    p.add_argument("--model-dir", type=Path, default=ROOT / "models" / "nucleus_unet")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/nucleus_unet_train"))
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--loader-workers", type=int, default=0, metavar="N",
                   help="make the batches ahead in N processes (training/loader.py: each "
                        "batch from its own seeded stream, the same for any N > 0; another "
                        "draw than 0's single stream); for a GPU, which they keep fed")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    args = p.parse_args(argv)
    if args.export_weights != "ema" and args.export_weights not in swa_names(args):
        p.error(f"--export-weights {args.export_weights}: not ema nor one of --swa-from's "
                f"{swa_names(args) or '(none)'}")
    return args


def _thresholds(text: str) -> dict | None:
    if text == "tune":
        return None
    try:
        fg, seed, area, *peak = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected FG,SEED,AREA[,PEAK] or 'tune', got {text!r}") from None
    peak = peak or [0.0]
    if not (0 < fg < 1 and 0 < seed < 1 and area >= 0 and area == int(area)
            and len(peak) == 1 and 0 <= peak[0] <= 1):
        raise argparse.ArgumentTypeError(f"thresholds out of range: {text!r}")
    return {"fg_threshold": fg, "seed_threshold": seed, "min_area_px": int(area),
            "fg_peak_threshold": peak[0]}


def _swa_starts(text: str) -> tuple[float, ...]:
    try:
        starts = tuple(sorted({float(t) for t in text.split(",") if t.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not fractions: {text!r}") from None
    if not all(0.0 <= f < 1.0 for f in starts):
        raise argparse.ArgumentTypeError(f"fractions must be in [0, 1): {text!r}")
    return starts


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a fraction in 0-1, got {text!r}")
    return value


def _box(text: str) -> Box:
    try:
        r0, r1, c0, c1 = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROW0,ROW1,COL0,COL1, got {text!r}") from None
    if not (0 <= r0 < r1 and 0 <= c0 < c1):
        raise argparse.ArgumentTypeError(f"empty or negative rectangle: {text!r}")
    return r0, r1, c0, c1


def _scale_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX, got {text!r}") from None
    if not (0.25 <= lo <= hi <= 4.0):
        raise argparse.ArgumentTypeError(f"scale range out of 0.25-4: {text!r}")
    return lo, hi


def kept_out(args: argparse.Namespace) -> tuple[Box, ...]:
    """The rectangles of the labelled tile this run never trains on: the reserved boxes
    with ``--split heldout``, and every ``--exclude``."""
    return (RESERVED if args.split == "heldout" else ()) + tuple(args.exclude or ())


def class_weights(tile: Tile, reserved: tuple = RESERVED) -> torch.Tensor:
    """Inverse square-root pixel frequency of each class in the training area (mean 1)."""
    classes = tile.classes.copy()
    for r0, r1, c0, c1 in reserved:
        classes[r0:r1, c0:c1] = 0
    counts = np.bincount(classes.ravel(), minlength=len(CLASSES) + 1)[1:].astype(float)
    w = 1.0 / np.sqrt(np.maximum(counts, 1.0))
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def lr_at(step: int, total: int, base: float, warmup: int = 30) -> float:
    """Linear warm-up then cosine decay to 1 % of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def consistency_views(raws: list[np.ndarray], size: int, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Two views of each ``(size + SHIFT_PX)``-sided crop: shifted, degraded separately.

    Returns views A and B (uint8 NHWC) and per pair the offset ``(dy, dx)``: B's pixel
    ``(y, x)`` shows A's ``(y + dy, x + dx)``.
    """
    views_a, views_b, offsets = [], [], []
    for raw in raws:
        oa = rng.integers(0, SHIFT_PX, 2)
        ob = rng.integers(0, SHIFT_PX, 2)
        views_a.append(photometric(np.ascontiguousarray(
            raw[oa[0]:oa[0] + size, oa[1]:oa[1] + size]), rng))
        views_b.append(photometric(np.ascontiguousarray(
            raw[ob[0]:ob[0] + size, ob[1]:ob[1] + size]), rng))
        offsets.append((int(ob[0] - oa[0]), int(ob[1] - oa[1])))
    return np.stack(views_a), np.stack(views_b), offsets


def supervised_loss(args: argparse.Namespace, logits: tuple, targets: tuple,
                    class_weights: torch.Tensor, device: torch.device,
                    fg_weight: torch.Tensor | None = None,
                    valid: torch.Tensor | None = None) -> tuple[dict, torch.Tensor]:
    """The labelled crops' loss: ``logits`` ``(fg, dist, cls)`` against ``targets`` (the
    crops' foreground and distance maps as NumPy, their class map as a tensor); foreground
    pixels weighted by ``fg_weight``, those where ``valid`` is 0 left out of it. Returns
    the terms and their sum weighted by ``--w-fg``, ``--w-dist``, ``--w-class``."""
    fg, dist, cls_t = targets
    fg_t = torch.from_numpy(fg).to(device)[:, None]
    dist_t = torch.from_numpy(dist).to(device)[:, None]
    terms = {"fg": foreground_loss(logits[0], fg_t, fg_weight, valid),
             "dist": distance_loss(logits[1], dist_t, fg_t),
             "cls": class_loss(logits[2], cls_t, class_weights)}
    return terms, (args.w_fg * terms["fg"] + args.w_dist * terms["dist"]
                   + args.w_class * terms["cls"])


def _ramp(step: int, total: int) -> float:
    """Consistency weight ramp-up: 0 -> 1 over the first quarter (sigmoid-shaped)."""
    t = min(1.0, step / max(1, total // 4))
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def _update_teacher(teacher: UNet, student: UNet, decay: float) -> None:
    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student.parameters()):
            t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
        for t, s in zip(teacher.buffers(), student.buffers()):
            t.copy_(s)


def train(args: argparse.Namespace) -> dict:
    """Train, export, tune, calibrate, write config; returns a summary (also saved as JSON)."""
    if args.split == "all" and args.settings_from is None:
        # the held-out twin first (its figures are the shipped model's), before this run
        # seeds anything: the run is the same whether the twin trains now or is resumed
        twin = argparse.Namespace(**{**vars(args), "split": "heldout",
                                     "workdir": args.workdir / "heldout",
                                     "model_dir": args.workdir / "heldout_model"})
        print(f"training the held-out twin first: {twin.workdir}", flush=True)
        train(twin)
        args.settings_from = twin.workdir / "summary.json"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda, but PyTorch sees no CUDA device")
    device = torch.device(args.device)
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

    settings = None
    if args.split == "all":
        settings = json.loads(args.settings_from.read_text())
    t_start = time.time()
    tile = load_tile()
    reserved = kept_out(args)
    weights = class_weights(tile, reserved).to(device)
    mean_teacher = bool(args.consistency and args.unlabelled_fraction > 0)
    unlabelled = stains = None
    if args.stain_transfer > 0 or mean_teacher or args.pseudo_labels:
        from .unlabelled import UnlabelledPool, stain_bank

        unlabelled = UnlabelledPool()
    if args.stain_transfer > 0:
        stains = stain_bank(unlabelled, np.random.default_rng(args.seed + 1))
    pool = unlabelled if args.consistency else None  # the mean teacher's unlabelled crops
    sampler = CropSampler(tile, reserved, stains=stains, p_stain=args.stain_transfer,
                          scale_range=args.scale_range, p_jpeg=args.jpeg_p)
    pseudo = []
    if args.pseudo_labels:
        from .pseudo import PseudoSampler, pseudo_tiles
        from .unlabelled import paint_out

        pseudo = [PseudoSampler(t, (), stains=stains, p_stain=args.stain_transfer,
                                scale_range=args.scale_range, p_jpeg=args.jpeg_p)
                  for t in pseudo_tiles(args.pseudo_labels, paint_out(unlabelled),
                                        threads=args.threads)]
        log(f"pseudo-labels of {args.pseudo_labels}: "
            f"{dict(zip(unlabelled.names, (len(p.centres[0]) for p in pseudo)))} nuclei")
    if not 0 <= 2 * args.pairs <= args.batch:
        raise SystemExit(f"error: --pairs {args.pairs} needs a --batch of at least "
                         f"{2 * args.pairs}")
    net = UNet(width=args.width, n_classes=len(CLASSES), max_mult=args.max_mult,
               stem=args.stem, antialias=args.antialias, head_width=args.head_width,
               blur_pools=args.blur_pools, bilinear_head=args.bilinear_head,
               bilinear_up=args.bilinear_up, refine=args.refine,
               stem_blur=args.stem_blur, chroma_blur=args.chroma_blur,
               chroma_half=args.chroma_half).to(device)
    teacher = copy.deepcopy(net)
    for param in teacher.parameters():
        param.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    # name -> {"from": first iteration, "n": iterations averaged, "params": their mean}
    swa = {name: {"from": round(f * args.iterations), "n": 0,
                  "params": [p.detach().clone() for p in net.parameters()]}
           for name, f in zip(swa_names(args), args.swa_from)}
    step, elapsed_before = 0, 0.0
    if ckpt_path.exists() and not args.fresh:
        state = torch.load(ckpt_path, weights_only=False, map_location=device)
        if state["args"] == _arg_key(args):
            net.load_state_dict(state["net"])
            teacher.load_state_dict(state["teacher"])
            opt.load_state_dict(state["opt"])
            rng.bit_generator.state = state["rng"]
            torch.set_rng_state(state["torch_rng"].cpu())  # map_location moved it
            step, elapsed_before = state["step"], state["elapsed_s"]
            swa = state.get("swa", swa)
            log(f"resumed from {ckpt_path} at iteration {step}")
        else:
            log("checkpoint was made with other arguments: starting afresh")
    log(f"args {vars(args)}; {sum(p.numel() for p in net.parameters())} parameters; "
        f"class weights {weights.tolist()}; class-balanced crops from "
        f"{sum(len(c) for c in sampler.centres)} nuclei; unlabelled images "
        f"{pool.names if pool else []}; {0 if stains is None else len(stains)} stain vectors")
    net.train()
    teacher.eval()
    running: dict[str, float] = {}
    n_sup = args.batch
    stream = batches(functools.partial(draw_batch, args, sampler, pseudo, pool), rng,
                     args.seed, step, args.iterations, args.loader_workers)
    t_loop = time.time()  # training time: the loop's, summed over resumed runs
    train_s = elapsed_before
    while step < args.iterations:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.iterations, args.lr)
        images, fg, dist, cls, pairing, views = next(stream)
        batch = images
        if args.consistency:
            view_a, view_b, offsets = views
            batch = np.concatenate([images, view_b])
        fg_l, dist_l, cls_l = net(normalise(torch.from_numpy(batch).to(device)))
        cls_t = torch.from_numpy(cls).to(device)
        fg_w = None
        if args.fg_weight_connective != 1.0:
            fg_w = 1.0 + (args.fg_weight_connective - 1.0) * (cls_t == CONNECTIVE).float()[:, None]
        valid = (cls_t >= 0).float()[:, None] if bool((cls_t < 0).any()) else None
        losses, loss = supervised_loss(args, (fg_l[:n_sup], dist_l[:n_sup], cls_l[:n_sup]),
                                       (fg, dist, cls_t), weights, device, fg_w, valid)
        if args.pairs:
            k0, k1 = n_sup - 2 * args.pairs, n_sup - args.pairs
            losses["pair"] = pair_consistency_loss(
                tuple(t[k0:k1] for t in (fg_l, dist_l, cls_l)),
                tuple(t[k1:n_sup] for t in (fg_l, dist_l, cls_l)), *pairing)
            loss = loss + args.w_pair * losses["pair"]
        if args.consistency:
            with torch.no_grad():
                t_fg, t_dist, t_cls = teacher(normalise(torch.from_numpy(view_a).to(device)))
                target = (torch.sigmoid(t_fg)[:, 0], torch.sigmoid(t_dist)[:, 0],
                          torch.softmax(t_cls, dim=1))
            losses["cons"] = consistency_loss(
                (fg_l[n_sup:], dist_l[n_sup:], cls_l[n_sup:]), target, offsets)
            loss = loss + args.w_cons * _ramp(step, args.iterations) * losses["cons"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        _update_teacher(teacher, net, min(args.ema, 1.0 - 1.0 / (step + 1)))
        for avg in swa.values():
            if step > avg["from"]:
                _accumulate(avg, net)
        for k, v in losses.items():
            running[k] = 0.9 * running.get(k, v.item()) + 0.1 * v.item()
        if step % 10 == 0 or step == args.iterations:
            el = elapsed_before + time.time() - t_loop
            log(f"it {step}/{args.iterations} lr {opt.param_groups[0]['lr']:.2e} "
                + " ".join(f"{k} {v:.4f}" for k, v in running.items()) + f" elapsed {el:.0f}s")
        if step % args.checkpoint_every == 0 or step == args.iterations:
            train_s = elapsed_before + time.time() - t_loop
            tmp = ckpt_path.with_suffix(".tmp")
            torch.save({"net": net.state_dict(), "teacher": teacher.state_dict(),
                        "opt": opt.state_dict(), "step": step,
                        "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                        "elapsed_s": train_s, "swa": swa,
                        "args": _arg_key(args)}, tmp)
            tmp.replace(ckpt_path)
    stream.close()  # the batch makers, if any, stop here
    if args.distill:
        from .distill import distill
        from .unlabelled import UnlabelledPool, paint_out

        teacher = distill(teacher, sampler, paint_out(unlabelled or UnlabelledPool()), weights,
                          args, args.workdir, log, device)
    if args.export_weights != "ema":
        teacher = averaged_network(net, swa[args.export_weights], sampler, args, device)
        log(f"exporting {args.export_weights}: the mean of iterations "
            f"{swa[args.export_weights]['from'] + 1}-{step} "
            f"({swa[args.export_weights]['n']} of them), batch-norm statistics re-estimated")
    teacher = teacher.cpu().eval()  # export, tuning and calibration run on the CPU
    onnx_path = args.model_dir / "1" / "model.onnx"
    if settings is None:
        export_onnx(teacher, onnx_path)
        # A provisional config so the backend can load the model for tuning.
        write_config(args.model_dir, version=args.version, fg_threshold=0.5,
                     seed_threshold=0.5, min_area_px=16)
        tuned = tune_thresholds(args.model_dir, tile, log=log, fixed=args.thresholds)
        thresholds = {k: tuned[k] for k in THRESHOLDS}  # without the validation scores
        image, labels, classes = region(tile, VALIDATION)
        calibration = calibrate(teacher, image, labels, classes, thresholds, log=log)
        temperature = calibration["temperature"]
    else:
        tuned = thresholds = {k: settings.get(k, 0.0) for k in THRESHOLDS}  # no peak < 5.2.0
        calibration = {"temperature": settings["temperature"], "from": str(args.settings_from)}
        temperature = settings["temperature"]
        log(f"thresholds {tuned} and temperature {temperature} from {args.settings_from}")
    onnx_file = export_onnx(teacher, onnx_path, temperature)
    # the in-process CPU's graph: levels 2-4 (the convolutions of more than 32 output
    # channels) in int8 (training/quantize.py)
    int8_file = quantize(onnx_file, calibration_images(tile.image))
    # the same network for the PyTorch backend (weights + architecture, no pickled code)
    save_weights(teacher, onnx_path.with_name("model.pt"), temperature)
    write_config(args.model_dir, version=args.version, **thresholds,
                 uncertain_below=UNCERTAIN_BELOW, temperature=temperature)
    torch.save(teacher.state_dict(), args.workdir / "teacher.pt")
    total_s = elapsed_before + time.time() - t_start
    summary = {"iterations": args.iterations, "distill": args.distill, "split": args.split,
               "weights": args.export_weights,
               "train_s": round(train_s, 1),
               "total_s": round(total_s, 1), "onnx": str(onnx_file),
               "onnx_bytes": onnx_file.stat().st_size, "int8": str(int8_file), **tuned,
               "temperature": temperature, "calibration": calibration}
    log(f"done: {json.dumps(summary)}")
    (args.workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def draw_batch(args: argparse.Namespace, sampler: CropSampler, pseudo: list, pool,
               rng: np.random.Generator) -> tuple:
    """One iteration's batch: ``(images, fg, dist, cls, (offsets, bands), views)``, the
    supervised crops (then all A, then all B of the labelled pairs) stacked, per pair B's
    offset and (``--pair-edges``; else None) B's mirrored edge bands, and with
    ``--consistency`` the mean-teacher views ``(view_a, view_b, offsets)`` (else None)."""
    crops = [sampler.crop(args.crop, rng) for _ in range(args.batch - 2 * args.pairs)]
    pairs = [_pair_sampler(sampler, pseudo, args.pseudo_fraction, rng).pair(
        args.crop, SHIFT_PX, rng, rescan=args.pair_views == "rescan")
        for _ in range(args.pairs)]
    bands = None
    if args.pair_edges:
        bands = [tuple(int(b) for b in rng.integers(1, SHIFT_PX, 4) * (rng.random(4) < 0.5))
                 if rng.random() < args.pair_edges else (0, 0, 0, 0) for _ in pairs]
        pairs = [(a, mirror_edges(b, band), off) for (a, b, off), band in zip(pairs, bands)]
    crops += [p[0] for p in pairs] + [p[1] for p in pairs]
    images, fg, dist, cls = (np.stack(c) for c in zip(*crops))
    views = None
    if args.consistency:
        big = args.crop + SHIFT_PX
        raws = [pool.image(big, rng) if pool is not None and
                rng.random() < args.unlabelled_fraction else sampler.image(big, rng)
                for _ in range(args.consistency)]
        views = consistency_views(raws, args.crop, rng)
    return images, fg, dist, cls, ([p[2] for p in pairs], bands), views


def swa_names(args: argparse.Namespace) -> list[str]:
    """``--export-weights`` names of the ``--swa-from`` averages: ``swa0.5`` for 0.5."""
    return [f"swa{f:g}" for f in args.swa_from]


def _accumulate(avg: dict, net: UNet) -> None:
    avg["n"] += 1
    with torch.no_grad():
        for a, p in zip(avg["params"], net.parameters()):
            a.add_(p.detach() - a, alpha=1.0 / avg["n"])  # the running mean


#: batches of training crops that re-estimate an average's batch-norm statistics
BN_BATCHES = 48


def averaged_network(net: UNet, avg: dict, sampler: CropSampler, args: argparse.Namespace,
                     device: torch.device) -> UNet:
    """A copy of ``net`` with the mean weights of ``avg`` and batch-norm statistics
    re-estimated (a cumulative mean over ``BN_BATCHES`` batches of training crops, drawn from
    their own stream): a mean of weights has no running statistics of its own."""
    if avg["n"] == 0:
        raise SystemExit("error: no iteration was averaged (the run stopped before --swa-from)")
    out = copy.deepcopy(net)
    with torch.no_grad():
        for p, a in zip(out.parameters(), avg["params"]):
            p.copy_(a)
    rng = np.random.default_rng([args.seed, 2 ** 31 - 1])
    crops = (normalise(torch.from_numpy(np.stack(
        [sampler.crop(args.crop, rng)[0] for _ in range(args.batch)])).to(device))
        for _ in range(BN_BATCHES))
    torch.optim.swa_utils.update_bn(crops, out)
    return out


def _pair_sampler(sampler: CropSampler, pseudo: list, fraction: float,
                  rng: np.random.Generator) -> CropSampler:
    """Where a labelled pair is cut: the labelled tile, or with ``fraction`` a pseudo-labelled
    image (no random draw at all without pseudo-labels, so other runs stay bit for bit)."""
    if pseudo and rng.random() < fraction:
        from .pseudo import choose

        return choose(pseudo, rng)
    return sampler


def _arg_key(args: argparse.Namespace) -> dict:
    # export-only options: a rerun with other values resumes and exports again
    skip = {"fresh", "workdir", "model_dir", "checkpoint_every", "version", "settings_from",
            "thresholds", "device", "export_weights",
            # the batch makers' number: any N > 0 is the same run (per-iteration streams)
            "loader_workers",
            # the distillation after the loop has its own checkpoint (training/distill.py)
            "distill", "distill_crops", "distill_sup", "distill_lr", "distill_bn", "w_distill"}
    key = {k: str(v) for k, v in vars(args).items() if k not in skip}
    if args.loader_workers > 0:  # per-iteration streams: another run than the one stream's
        key["batches"] = "per-iteration streams"
    # options added later, at the value that changes nothing: the checkpoints made before
    # them (5.1.0's) still resume
    for k, neutral in {"refine": "0", "stem_blur": "3", "chroma_blur": "0.0",
                       "chroma_half": "False",
                       "pseudo_labels": "None",
                       "pseudo_fraction": "0.25",
                       "pair_views": "independent",
                       "swa_from": "()",
                       "jpeg_p": "0.5",
                       "pair_edges": "0.0",
                       "exclude": "None"}.items():
        if key.get(k) == neutral:
            del key[k]
    return key


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m training.train``."""
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
