"""Where each training iteration's batch comes from (``--loader-workers``).

Making a batch (8 augmented crops: warp, re-staining, degradations, JPEG) takes about 0.1 s
on one core: a third of a CPU iteration, and all of a GPU one. So ``training.train`` takes
its batches from :func:`batches`:

* ``workers=0`` (the default, the CPU recipe): each batch drawn in turn from the run's one
  random stream, in the training process (what every shipped model was trained with; its
  checkpoint saves that stream).
* ``workers=N``: N processes make the batches ahead, in order; batch ``i`` is drawn from its
  own stream, ``numpy.random.default_rng([seed, i])``, so the run is the same whatever N is
  and whether it resumes (the training process's stream is not used). Its batches differ
  from ``workers=0``'s: another draw of the same recipe.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator

import numpy as np

_DRAW: Callable | None = None  # a worker's batch maker (set once, by _start)


def step_rng(seed: int, step: int) -> np.random.Generator:
    """Iteration ``step``'s own random stream (``workers > 0``)."""
    return np.random.default_rng([seed, step])


def _start(draw: Callable) -> None:
    global _DRAW
    import cv2

    cv2.setNumThreads(1)  # N workers, one core each
    _DRAW = draw


def _make(seed: int, step: int):
    return _DRAW(step_rng(seed, step))


def batches(draw: Callable[[np.random.Generator], tuple], rng: np.random.Generator, seed: int,
            start: int, stop: int, workers: int = 0) -> Iterator[tuple]:
    """``draw(rng)`` for the iterations ``start .. stop - 1``, in order.

    ``draw`` must pickle (a module-level function, or a ``functools.partial`` of one) when
    ``workers > 0``: the workers are spawned, not forked, so that nothing of the training
    process (CUDA, torch's thread pool) is copied into them.
    """
    if workers <= 0:
        for _ in range(start, stop):
            yield draw(rng)
        return
    pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_start, initargs=(draw,))
    ahead: deque[cf.Future] = deque()
    try:
        nxt = start
        for _ in range(start, stop):
            while nxt < stop and len(ahead) < 2 * workers:
                ahead.append(pool.submit(_make, seed, nxt))
                nxt += 1
            yield ahead.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
