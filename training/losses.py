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
                     offsets: list[tuple[int, int]]) -> torch.Tensor:
    """Mean-teacher consistency between two shifted, differently degraded views.

    ``student`` holds the raw logits ``(fg, dist, cls)`` of view B, ``teacher`` the
    probabilities ``(fg, dist, cls)`` of view A (no gradient); B's pixel ``(y, x)`` shows A's
    ``(y + dy, x + dx)`` (``offsets[i] = (dy, dx)``). Over each pair's common region: squared
    error of the foreground probability everywhere, of the distance map and the class
    probabilities where the teacher sees a nucleus (weighted by its foreground).
    """
    total = student[0].new_zeros(())
    for i, (dy, dx) in enumerate(offsets):
        h, w = student[0].shape[-2:]
        a = (slice(max(0, dy), min(h, h + dy)), slice(max(0, dx), min(w, w + dx)))
        b = (slice(a[0].start - dy, a[0].stop - dy), slice(a[1].start - dx, a[1].stop - dx))
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
                          offsets: list[tuple[int, int]]) -> torch.Tensor:
    """Symmetric consistency between two views of the same labelled crops.

    ``logits_a``, ``logits_b``: raw ``(fg, dist, cls)`` of views A and B; B's pixel
    ``(y, x)`` shows A's ``(y + dy, x + dx)``. Each view is pulled towards the other's
    (detached) probabilities with :func:`consistency_loss`, so a shift by an odd number of
    pixels or a re-encoding costs the network what it changes in its maps.
    """
    def probs(logits):
        fg, dist, cls = logits
        return (torch.sigmoid(fg)[:, 0].detach(), torch.sigmoid(dist)[:, 0].detach(),
                torch.softmax(cls, dim=1).detach())

    back = [(-dy, -dx) for dy, dx in offsets]
    return 0.5 * (consistency_loss(logits_b, probs(logits_a), offsets)
                  + consistency_loss(logits_a, probs(logits_b), back))
