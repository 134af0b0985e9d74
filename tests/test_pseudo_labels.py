"""Pseudo-labels (``training/pseudo.py``, ``--pseudo-labels``; run M of EXPERIMENTS.md): the
teacher's nuclei on real unlabelled H&E become training targets, their uncertain pixels are
left out of the foreground loss, their classes are not learnt from, and nothing of the CMU
slide's evaluation and selection regions is read."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from slicer_cli.nuclei.model import DEFAULT_MODEL_DIR  # noqa: E402
from training import train as train_module  # noqa: E402
from training.augment import random_warp  # noqa: E402
from training.data import Tile, normalised_distance, warp_labelled  # noqa: E402
from training.losses import foreground_loss  # noqa: E402
from training.pseudo import PseudoSampler, choose, pseudo_tiles  # noqa: E402
from training.unlabelled import EXCLUDED_BOXES, UnlabelledPool, paint_out  # noqa: E402


def _tile(ignore: bool = True) -> Tile:
    """Two square nuclei and an 'unsure' square beside them, on a 200 px image."""
    inst = np.zeros((200, 200), np.int32)
    inst[40:60, 40:60], inst[120:140, 100:125] = 1, 2
    unsure = np.zeros((200, 200), bool)
    unsure[80:100, 150:170] = True
    unsure[38:62, 38:62] = True  # also over nucleus 1: a nucleus is never ignored
    image = np.full((200, 200, 3), 220, np.uint8)
    image[inst > 0] = 80
    return Tile(image=image, instances=inst, classes=np.zeros(inst.shape, np.int64),
                distance=normalised_distance(inst), ignore=unsure if ignore else None)


def test_unsure_pixels_off_the_nuclei_are_class_minus_one_after_any_warp():
    tile = _tile()
    rng = np.random.default_rng(3)
    for _ in range(5):
        warp = random_warp(128, (100.0, 100.0), rng)
        image, inst, cls, dist = warp_labelled(tile, warp)
        expect = (warp.labels(tile.ignore.astype(np.int32)) > 0) & (inst == 0)
        np.testing.assert_array_equal(cls == -1, expect)
        assert not np.any(cls[inst > 0])  # the nuclei keep class 0: no class is learnt
        assert np.all(dist[cls == -1] == 0)
    plain = warp_labelled(_tile(ignore=False), warp)
    assert plain[2].min() == 0  # without ``ignore`` nothing changes


def test_foreground_loss_leaves_out_the_pixels_that_are_not_valid():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 32, 32, generator=g)
    target = (torch.rand(2, 1, 32, 32, generator=g) > 0.7).float()
    valid = torch.ones_like(target)
    assert foreground_loss(logits, target, valid=valid).item() == pytest.approx(
        foreground_loss(logits, target).item(), rel=1e-6)
    valid[:, :, :10] = 0
    changed = logits.clone()
    changed[:, :, :10] = torch.randn(2, 1, 10, 32, generator=g) * 10
    assert foreground_loss(changed, target, valid=valid).item() == pytest.approx(
        foreground_loss(logits, target, valid=valid).item(), rel=1e-6)
    assert foreground_loss(changed, target).item() != pytest.approx(
        foreground_loss(logits, target).item(), rel=1e-3)


def test_pseudo_sampler_centres_on_every_nucleus_and_choose_draws_by_their_count():
    sampler = PseudoSampler(_tile(), ())
    np.testing.assert_allclose(np.sort(sampler.centres[0], axis=0),
                               [[49.5, 49.5], [129.5, 112.0]])
    other = PseudoSampler(Tile(**{**_tile().__dict__, "instances": np.zeros((200, 200),
                                                                             np.int32)}), ())
    assert len(other.centres[0]) == 0
    rng = np.random.default_rng(0)
    assert all(choose([sampler, other], rng) is sampler for _ in range(20))
    a, b, _ = sampler.pair(64, 8, rng)
    assert a[0].shape == (64, 64, 3) and set(np.unique(a[3])) <= {-1, 0}


def test_shipped_model_outlines_a_real_unlabelled_image_and_the_cmu_boxes_stay_glass():
    """The teacher on real H&E (the napari skin sample's top left 256 px, the CMU slide with
    its evaluation and selection boxes painted out): a plausible number of nuclei, none in a
    painted box, the unsure pixels off the nuclei."""
    pool = paint_out(UnlabelledPool())
    k = pool.names.index("cmu_small_region.svs")
    for left, top, width, height in EXCLUDED_BOXES:
        assert np.all(pool.images[k][top:top + height, left:left + width] == 255)

    class Small:
        images = [pool.images[pool.names.index("napari_skin.tif")][400:656, 100:356]]

    (tile,) = pseudo_tiles(DEFAULT_MODEL_DIR, Small, flips=1, shifts=1)
    n = int(tile.instances.max())
    assert 20 <= n <= 200, n  # 256 px of skin epithelium at 0.5 um/px
    assert not np.any(tile.ignore & (tile.instances > 0))
    assert tile.classes.max() == 0
    assert 0 < tile.ignore.mean() < 0.5  # some unsure pixels, far from all of them


def test_training_with_pseudo_labels_runs_and_records_its_teacher(tmp_path):
    """Two iterations, every pair cut from the pseudo-labelled images (the shipped model as
    teacher): the run finishes, exports, and resumes only with the same options."""
    work, model = tmp_path / "work", tmp_path / "model"
    argv = ["--iterations", "2", "--split", "heldout", "--workdir", str(work),
            "--model-dir", str(model), "--version", "0.0.1-test", "--pseudo-labels",
            str(DEFAULT_MODEL_DIR), "--pseudo-fraction", "1.0"]
    summary = train_module.train(train_module.parse_args(argv))
    assert (model / "1" / "model.onnx").exists() and summary["iterations"] == 2
    log = (work / "train.log").read_text()
    assert "pseudo-labels of" in log and "cmu_small_region.svs" in log
    key = train_module._arg_key(train_module.parse_args(argv))
    assert key["pseudo_labels"] == str(DEFAULT_MODEL_DIR)
    plain = train_module._arg_key(train_module.parse_args(argv[:-4]))
    assert "pseudo_labels" not in plain and "pseudo_fraction" not in plain
    assert json.loads((work / "summary.json").read_text())["split"] == "heldout"
    for bad in ("1.5", "-0.1", "nan", "half"):
        with pytest.raises(SystemExit):
            train_module.parse_args(["--pseudo-fraction", bad])
