"""Calibrate the class probability of a nucleus (temperature scaling, Guo et al. 2017).

A nucleus's class probability is the mean of the per-pixel softmax over its pixels. On the
validation block (never trained on), the predicted nuclei that match a true nucleus
(IoU > 0.5) are scored for one temperature ``T`` (class logits divided by ``T``) after
another; the ``T`` of least negative log-likelihood of the true class is baked into the
exported graph. Then "probability 0.7" means right about 70 % of the time on data like the
validation block, and ``uncertain_below`` (0.5: less likely right than wrong) marks the rest.
"""
from __future__ import annotations

import numpy as np
import torch

from slicer_cli.nuclei.instances import extract_instances
from slicer_cli.nuclei.network import UNet, normalise

TEMPERATURES = tuple(sorted({1.0, *(float(t) for t in np.round(
    np.exp(np.linspace(np.log(0.4), np.log(4.0), 31)), 4))}))


def _logits(net: UNet, image: np.ndarray, multiple: int = 32) -> tuple[np.ndarray, ...]:
    h, w = image.shape[:2]
    padded = np.pad(image, ((0, -h % multiple), (0, -w % multiple), (0, 0)), mode="reflect")
    net.eval()
    with torch.no_grad():
        fg, dist, cls = net(normalise(torch.from_numpy(np.ascontiguousarray(padded[None]))))
    return (torch.sigmoid(fg)[0, 0, :h, :w].numpy(), torch.sigmoid(dist)[0, 0, :h, :w].numpy(),
            cls[0, :, :h, :w].numpy())


def matched_nuclei(true_labels: np.ndarray, pred_labels: np.ndarray) -> list[tuple[int, int]]:
    """``(true id, pred id)`` pairs of IoU > 0.5 (unique by construction)."""
    t, p = true_labels.ravel().astype(np.int64), pred_labels.ravel().astype(np.int64)
    both = (t > 0) & (p > 0)
    k = int(p.max()) + 1
    pairs, inter = np.unique(t[both] * k + p[both], return_counts=True)
    t_area = np.bincount(t)
    p_area = np.bincount(p, minlength=k)
    ti, pi = np.divmod(pairs, k)
    iou = inter / (t_area[ti] + p_area[pi] - inter)
    return [(int(a), int(b)) for a, b, q in zip(ti, pi, iou) if q > 0.5]


def nucleus_probabilities(cls_logits: np.ndarray, pred_labels: np.ndarray, ids: np.ndarray,
                          temperature: float) -> np.ndarray:
    """Mean softmax(logits / T) over each nucleus of ``ids``: ``(len(ids), C)``."""
    z = cls_logits / temperature
    z = z - z.max(axis=0, keepdims=True)
    e = np.exp(z)
    prob = e / e.sum(axis=0, keepdims=True)
    lab = pred_labels.ravel()
    n = int(lab.max()) + 1
    area = np.bincount(lab, minlength=n).astype(float)
    sums = np.stack([np.bincount(lab, prob[c].ravel(), minlength=n)
                     for c in range(prob.shape[0])], axis=1)
    return sums[ids] / area[ids, None]


def calibrate(net: UNet, image: np.ndarray, true_labels: np.ndarray, true_classes: np.ndarray,
              thresholds: dict, log=print) -> dict:
    """Fit the temperature on one labelled region; report reliability before and after.

    ``true_classes[k]`` is the 0-based class of true nucleus ``k + 1``.
    """
    fg, dist, cls = _logits(net, image)
    probs = cls - cls.max(axis=0, keepdims=True)
    probs = np.exp(probs) / np.exp(probs).sum(axis=0, keepdims=True)
    pred = extract_instances(fg, dist, np.moveaxis(probs, 0, -1), **thresholds).labels
    pairs = matched_nuclei(true_labels, pred)
    truth = np.array([true_classes[t - 1] for t, _ in pairs], dtype=np.int64)
    ids = np.array([p for _, p in pairs], dtype=np.int64)
    if len(ids) == 0:
        log("calibration: no predicted nucleus matches a true one; temperature stays 1")
        return {"temperature": 1.0, "nuclei_matched": 0}
    nll = {}
    for t in TEMPERATURES:
        p = nucleus_probabilities(cls, pred, ids, t)
        nll[t] = float(-np.mean(np.log(np.clip(p[np.arange(len(ids)), truth], 1e-9, 1))))
    best = min(nll, key=nll.get)

    def reliability(t: float) -> dict:
        p = nucleus_probabilities(cls, pred, ids, t)
        top, conf = p.argmax(axis=1), p.max(axis=1)
        right = top == truth
        sure = conf >= 0.5
        return {"accuracy": float(right.mean()), "mean_confidence": float(conf.mean()),
                "ece": _ece(conf, right), "n_confident": int(sure.sum()),
                "accuracy_confident": float(right[sure].mean()) if sure.any() else None,
                "accuracy_uncertain": float(right[~sure].mean()) if (~sure).any() else None}

    result = {"temperature": best, "nuclei_matched": len(ids), "nll_at_1": nll[1.0],
              "nll": nll[best], "before": reliability(1.0), "after": reliability(best)}
    log(f"calibration on {len(ids)} matched validation nuclei: T={best} NLL {nll[1.0]:.3f} "
        f"-> {nll[best]:.3f}; ECE {result['before']['ece']:.3f} -> {result['after']['ece']:.3f}")
    return result


def _ece(confidence: np.ndarray, right: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error over equal-width confidence bins."""
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            total += inside.mean() * abs(confidence[inside].mean() - right[inside].mean())
    return float(total)
