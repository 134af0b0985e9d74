"""extract_instances on constructed network maps (and CuPy against NumPy on a GPU)."""
from __future__ import annotations

import numpy as np
import pytest

from slicer_cli.nuclei.instances import Instances, extract_instances


def _disc_maps(discs, shape=(64, 96), n_classes=3):
    """Maps a perfect network would give for ``discs`` = [(cy, cx, r, class, prob), ...]."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    fg = np.zeros(shape, np.float32)
    dist = np.zeros(shape, np.float32)
    cls = np.full(shape + (n_classes,), 1.0 / n_classes, np.float32)
    owner = np.zeros(shape, np.int32)
    for k, (cy, cx, r, c, p) in enumerate(discs, start=1):
        cone = np.clip(1.0 - np.hypot(yy - cy, xx - cx) / r, 0.0, 1.0).astype(np.float32)
        inside = cone > 0
        closer = inside & (cone > dist)
        dist = np.where(closer, cone, dist)
        owner = np.where(closer, k, owner)
        fg[inside] = 0.95
        probs = np.full(n_classes, (1 - p) / (n_classes - 1), np.float32)
        probs[c] = p
        cls[closer] = probs
    return fg, dist, cls, owner


def test_two_touching_discs_are_two_nuclei_with_their_classes():
    # centres 18 px apart, radius 11: the discs overlap by 4 px along the centre line
    fg, dist, cls, owner = _disc_maps([(32, 30, 11, 0, 0.8), (32, 48, 11, 2, 0.7)])
    inst = extract_instances(fg, dist, cls)
    assert isinstance(inst, Instances)
    assert inst.labels.dtype == np.int32 and inst.labels.shape == fg.shape
    assert int(inst.labels.max()) == 2
    assert set(np.unique(inst.labels)) == {0, 1, 2}
    assert inst.class_index.tolist() == [0, 2]  # numbered in raster order: left disc first
    assert inst.class_prob == pytest.approx([0.8, 0.7], abs=0.03)
    # The split follows the true boundary: almost every pixel goes to its own disc.
    agree = (inst.labels == owner)[owner > 0].mean()
    assert agree > 0.97
    # Together they cover exactly the foreground.
    assert ((inst.labels > 0) == (fg > 0.5)).all()


def test_min_area_drops_small_nuclei():
    fg, dist, cls, _ = _disc_maps([(20, 20, 10, 1, 0.9), (40, 70, 2.5, 1, 0.9)])
    small_area = int(((dist > 0)[30:50, 60:80]).sum())
    assert 4 < small_area < 40
    kept = extract_instances(fg, dist, cls, min_area_px=small_area)
    assert int(kept.labels.max()) == 2
    dropped = extract_instances(fg, dist, cls, min_area_px=small_area + 1)
    assert int(dropped.labels.max()) == 1
    assert dropped.class_index.tolist() == [1]
    assert (dropped.labels[30:50, 60:80] == 0).all()


def test_peak_threshold_drops_faint_nuclei_only():
    fg, dist, cls, _ = _disc_maps([(20, 20, 10, 0, 0.9), (40, 70, 10, 2, 0.9)])
    fg[25:60, 55:90] *= 0.6 / 0.95  # the right disc is faint: 0.6 everywhere
    both = extract_instances(fg, dist, cls)
    assert int(both.labels.max()) == 2
    for no_effect in (0.0, 0.5, 0.55):  # at or below fg_threshold, or below the faint peak
        same = extract_instances(fg, dist, cls, fg_peak_threshold=no_effect)
        np.testing.assert_array_equal(same.labels, both.labels)
    bright = extract_instances(fg, dist, cls, fg_peak_threshold=0.7)
    assert int(bright.labels.max()) == 1 and bright.class_index.tolist() == [0]
    assert (bright.labels[25:60, 55:90] == 0).all()
    np.testing.assert_array_equal(bright.labels > 0, (both.labels > 0) & (fg > 0.9))


def test_peak_threshold_steadies_a_faint_blob_under_noise():
    """A faint blob near ``fg_threshold`` comes and goes with noise (as with JPEG noise on a
    slide); with the peak check it is never a nucleus, and the bright one always is."""
    fg, dist, cls, _ = _disc_maps([(20, 20, 8, 0, 0.9), (40, 70, 6, 1, 0.9)])
    fg[28:54, 58:84] *= 0.5 / 0.95
    counts, steady = set(), set()
    for seed in range(20):
        noise = np.random.default_rng(seed).normal(0, 0.03, fg.shape).astype(np.float32)
        noisy = np.clip(fg + noise, 0, 1)
        counts.add(int(extract_instances(noisy, dist, cls, min_area_px=32).labels.max()))
        steady.add(int(extract_instances(noisy, dist, cls, min_area_px=32,
                                         fg_peak_threshold=0.7).labels.max()))
    assert counts == {1, 2}  # without it the faint blob flickers (its area nears min_area_px)
    assert steady == {1}


def test_foreground_without_a_seed_is_still_a_nucleus():
    fg, dist, cls, _ = _disc_maps([(32, 48, 10, 1, 0.9)])
    inst = extract_instances(fg, dist * 0.3, cls, seed_threshold=0.5)  # no pixel above 0.5
    assert int(inst.labels.max()) == 1
    assert ((inst.labels > 0) == (fg > 0.5)).all()


def test_thresholds_change_what_is_foreground():
    fg, dist, cls, _ = _disc_maps([(32, 48, 10, 1, 0.9)])
    assert int(extract_instances(fg, dist, cls, fg_threshold=0.99).labels.max()) == 0
    assert int(extract_instances(fg, dist, cls, fg_threshold=0.5).labels.max()) == 1


def test_empty_maps_give_no_nuclei():
    shape = (32, 32)
    inst = extract_instances(np.zeros(shape, np.float32), np.zeros(shape, np.float32),
                             np.full(shape + (3,), 1 / 3, np.float32))
    assert inst.labels.shape == shape and not inst.labels.any()
    assert len(inst.class_index) == 0 and len(inst.class_prob) == 0


def test_instances_are_frozen_and_shapes_are_checked():
    fg, dist, cls, _ = _disc_maps([(32, 48, 10, 1, 0.9)])
    inst = extract_instances(fg, dist, cls)
    with pytest.raises(AttributeError):
        inst.labels = None  # type: ignore[misc]
    with pytest.raises(ValueError):
        extract_instances(fg, dist[:10], cls)
    with pytest.raises(ValueError):
        extract_instances(fg, dist, cls[..., 0])


def _random_maps(seed: int, shape=(256, 256)):
    rng = np.random.default_rng(seed)
    discs = [(rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(3, 14),
              int(rng.integers(3)), rng.uniform(0.4, 0.95)) for _ in range(120)]
    fg, dist, cls, _ = _disc_maps(discs, shape)
    noise = rng.normal(0, 0.05, shape).astype(np.float32)
    return np.clip(fg + noise, 0, 1), np.clip(dist + noise, 0, 1), cls


@pytest.mark.gpu
def test_cupy_matches_numpy():
    cp = pytest.importorskip("cupy")
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except cp.cuda.runtime.CUDARuntimeError:
        pytest.skip("no CUDA device")
    for seed in range(3):
        fg, dist, cls = _random_maps(seed)
        ref = extract_instances(fg, dist, cls, fg_threshold=0.5, seed_threshold=0.4,
                                min_area_px=10, fg_peak_threshold=0.9)
        gpu = extract_instances(cp.asarray(fg), cp.asarray(dist), cp.asarray(cls),
                                fg_threshold=0.5, seed_threshold=0.4, min_area_px=10,
                                fg_peak_threshold=0.9)
        assert isinstance(gpu.labels, cp.ndarray)
        np.testing.assert_array_equal(cp.asnumpy(gpu.labels), ref.labels)
        np.testing.assert_array_equal(cp.asnumpy(gpu.class_index), ref.class_index)
        np.testing.assert_allclose(cp.asnumpy(gpu.class_prob), ref.class_prob, rtol=1e-5)


def test_gpu_code_path_on_the_numpy_twin_gives_identical_labels(hgsc_labels):
    """extract_instances written against xp: the NumPy twin (the GPU's code) equals NumPy."""
    from slicer_cli.nuclei.instances import extract_instances

    from .conftest import NUMPY_TWIN

    rng = np.random.default_rng(0)
    truth = hgsc_labels[:384, :384]
    fg = (truth > 0).astype(np.float32) * 0.8 + rng.uniform(0, 0.2, truth.shape).astype(
        np.float32)
    dist = np.zeros(truth.shape, np.float32)
    from scipy import ndimage as ndi

    for k, sl in enumerate(ndi.find_objects(truth), start=1):
        if sl is not None:
            d = ndi.distance_transform_edt(truth[sl] == k)
            dist[sl][truth[sl] == k] = (d / d.max())[truth[sl] == k]
    cls = np.stack([fg, 1 - fg, np.full_like(fg, 0.5)], axis=-1)
    cls = cls / cls.sum(-1, keepdims=True)
    ref = extract_instances(fg, dist, cls, fg_threshold=0.5, seed_threshold=0.5,
                            fg_peak_threshold=0.95)
    twin = extract_instances(fg, dist, cls, fg_threshold=0.5, seed_threshold=0.5,
                             fg_peak_threshold=0.95, xp=NUMPY_TWIN)
    assert int(ref.labels.max()) > 50
    np.testing.assert_array_equal(twin.labels, ref.labels)
    np.testing.assert_array_equal(twin.class_index, ref.class_index)
    np.testing.assert_array_equal(twin.class_prob, ref.class_prob)
