"""Training losses: BCE + soft Dice (foreground), MSE (distance), masked weighted CE (class)."""
from __future__ import annotations

import torch
from torch.nn import functional as F


def foreground_loss(logits: torch.Tensor, target: torch.Tensor,
                    weight: torch.Tensor | None = None,
                    valid: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice loss on the nucleus foreground.

    ``weight`` (broadcastable to ``target``), if given, weighs each pixel's cross-entropy
    (e.g. more on the pixels of a class the network tends to miss). ``valid`` (0/1, the
    shape of ``target``), if given, leaves the pixels at 0 out of both terms (pseudo-labels'
    uncertain pixels, ``training/pseudo.py``).
    """
    if valid is not None:
        weight = valid if weight is None else weight * valid
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight)
    prob = torch.sigmoid(logits)
    if valid is not None:
        prob = prob * valid
    inter = (prob * target).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (prob.sum() + target.sum() + 1.0)
    return bce + dice


def distance_loss(logits: torch.Tensor, target: torch.Tensor, fg: torch.Tensor,
                  background_weight: float = 0.1) -> torch.Tensor:
    """Mean squared error of the sigmoid distance map, mostly over nucleus pixels.

    Background pixels (target 0, easy) count ``background_weight`` each, so the loss is not
    diluted by the ~80 % of pixels that are background and the peaks at nucleus centres
    (which make the seeds) are learnt.
    """
    weight = fg + background_weight * (1.0 - fg)
    return (weight * (torch.sigmoid(logits) - target) ** 2).sum() / weight.sum()


def class_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
               ) -> torch.Tensor:
    """Cross-entropy over nucleus pixels only (``target`` 0 = background is ignored).

    ``target`` holds 1..C; ``weights`` (C,) re-balances the classes.
    """
    mask = target > 0
    if not bool(mask.any()):
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits, (target - 1).clamp(min=0), weight=weights, reduction="none")
    w = weights[(target - 1).clamp(min=0)]
    return (ce * mask).sum() / (w * mask).sum()


def consistency_loss(student: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                     teacher: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                     offsets: list[tuple[int, int]],
                     bands: tuple[list | None, list | None] = (None, None)) -> torch.Tensor:
    """Mean-teacher consistency between two shifted, differently degraded views.

    ``student`` holds the raw logits ``(fg, dist, cls)`` of view B, ``teacher`` the
    probabilities ``(fg, dist, cls)`` of view A (no gradient); B's pixel ``(y, x)`` shows A's
    ``(y + dy, x + dx)`` (``offsets[i] = (dy, dx)``). Over each pair's common region: squared
    error of the foreground probability everywhere, of the distance map and the class
    probabilities where the teacher sees a nucleus (weighted by its foreground).

    ``bands``: per pair, the ``(top, bottom, left, right)`` edge bands of the student's and
    of the teacher's view that show no tissue of the other (mirrored padding,
    ``data.mirror_edges``), or None for none; they are left out of the common region.
    """
    total = student[0].new_zeros(())
    h, w = student[0].shape[-2:]
    for i, (dy, dx) in enumerate(offsets):
        # the common region in the teacher's pixels, less either view's bands
        s_band = bands[0][i] if bands[0] is not None else (0, 0, 0, 0)
        t_band = bands[1][i] if bands[1] is not None else (0, 0, 0, 0)
        y0 = max(0, dy, t_band[0], s_band[0] + dy)
        y1 = min(h, h + dy, h - t_band[1], h - s_band[1] + dy)
        x0 = max(0, dx, t_band[2], s_band[2] + dx)
        x1 = min(w, w + dx, w - t_band[3], w - s_band[3] + dx)
        if y1 <= y0 or x1 <= x0:
            continue
        a = (slice(y0, y1), slice(x0, x1))
        b = (slice(y0 - dy, y1 - dy), slice(x0 - dx, x1 - dx))
        s_fg = torch.sigmoid(student[0][i, 0][b])
        s_dist = torch.sigmoid(student[1][i, 0][b])
        s_cls = torch.softmax(student[2][i][(slice(None), *b)], dim=0)
        t_fg, t_dist = teacher[0][i][a], teacher[1][i][a]
        t_cls = teacher[2][i][(slice(None), *a)]
        weight = t_fg.detach()
        fg_term = ((s_fg - t_fg) ** 2).mean()
        norm = weight.sum() + 1.0
        dist_term = (weight * (s_dist - t_dist) ** 2).sum() / norm
        cls_term = (weight * ((s_cls - t_cls) ** 2).sum(dim=0)).sum() / norm
        total = total + fg_term + dist_term + cls_term
    return total / max(len(offsets), 1)


def pair_consistency_loss(logits_a: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                          logits_b: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                          offsets: list[tuple[int, int]],
                          bands_b: list | None = None) -> torch.Tensor:
    """Symmetric consistency between two views of the same labelled crops.

    ``logits_a``, ``logits_b``: raw ``(fg, dist, cls)`` of views A and B; B's pixel
    ``(y, x)`` shows A's ``(y + dy, x + dx)``. Each view is pulled towards the other's
    (detached) probabilities with :func:`consistency_loss`, so a shift by an odd number of
    pixels or a re-encoding costs the network what it changes in its maps. ``bands_b``: per
    pair, B's mirrored edge bands ``(top, bottom, left, right)`` (``--pair-edges``), left
    out of the comparison: next to them B has to give the maps A gives with real tissue.
    """
    def probs(logits):
        fg, dist, cls = logits
        return (torch.sigmoid(fg)[:, 0].detach(), torch.sigmoid(dist)[:, 0].detach(),
                torch.softmax(cls, dim=1).detach())

    back = [(-dy, -dx) for dy, dx in offsets]
    return 0.5 * (consistency_loss(logits_b, probs(logits_a), offsets, (bands_b, None))
                  + consistency_loss(logits_a, probs(logits_b), back, (None, bands_b)))
