"""Training's data path on constructed cases: augmentations keep image and labels aligned,
crops never read a reserved rectangle, consistency views and labelled pairs are the shifts
they claim, re-staining changes colours and nothing else, the consistency losses and the
calibration do what they say."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from slicer_cli.nuclei.metrics import common_region  # noqa: E402
from slicer_cli.nuclei.stain import REFERENCE_STAINS  # noqa: E402
from training import train as train_module  # noqa: E402
from training.augment import (  # noqa: E402
    jpeg,
    photometric,
    random_warp,
    restain,
    stain_transfer,
)
from training.calibrate import TEMPERATURES, matched_nuclei, nucleus_probabilities  # noqa: E402
from training.data import (  # noqa: E402
    RESERVED,
    CropSampler,
    Tile,
    load_tile,
    mirror_edges,
    normalised_distance,
    overlaps,
)
from training.losses import (  # noqa: E402
    consistency_loss,
    foreground_loss,
    pair_consistency_loss,
)

ROOT = Path(__file__).resolve().parents[1]


def _disc_tile(n: int = 12, size: int = 400, seed: int = 1) -> Tile:
    """Dark discs (nuclei) on a light background, with their labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    instances = np.zeros((size, size), np.int32)
    for k in range(1, n + 1):
        cy, cx, r = rng.uniform(40, size - 40), rng.uniform(40, size - 40), rng.uniform(7, 12)
        instances[((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (instances == 0)] = k
    image = np.full((size, size, 3), (235, 200, 225), np.uint8)
    image[instances > 0] = (70, 40, 120)
    classes = np.where(instances > 0, 1 + instances % 3, 0).astype(np.int64)
    return Tile(image=image, instances=instances, classes=classes,
                distance=normalised_distance(instances))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


#: another lab's H&E: hematoxylin towards black-purple, eosin pinker (unit columns, OD space)
_OTHER_STAINS = np.array([[[0.77, 0.24], [0.51, 0.90], [0.29, 0.37]]], np.float32)
_OTHER_STAINS /= np.linalg.norm(_OTHER_STAINS, axis=1, keepdims=True)


@pytest.mark.parametrize("augment", [False, True])
def test_warped_crops_keep_image_and_labels_aligned(augment):
    sampler = CropSampler(_disc_tile(), reserved=(), stains=_OTHER_STAINS, p_stain=0.7)
    rng = np.random.default_rng(0)
    for _ in range(20):
        image, fg, dist, cls = sampler.crop(128, rng, augment=augment)
        grey = image.astype(float).mean(axis=2)
        # re-staining moves both colours: split halfway between the nuclei's (darkest 0.1 %)
        # and the background's (the median: nuclei cover a few per cent)
        dark = grey < (np.percentile(grey, 0.1) + np.median(grey)) / 2
        nuclei = fg > 0
        if nuclei.sum() < 50:
            continue
        # bilinear image edges against nearest-neighbour labels: one boundary pixel of
        # disagreement; degradations (blur, noise, JPEG, stain) widen it a little
        assert _iou(dark, nuclei) > (0.8 if augment else 0.9)
        assert (cls[nuclei] > 0).all() and (cls[~nuclei] == 0).all()
        assert (dist[~nuclei] == 0).all() and dist.max() <= 1.0
        assert dist[nuclei].mean() > 0.2


def test_crops_never_read_a_reserved_rectangle():
    tile = _disc_tile()
    reserved = ((100, 300, 100, 300),)
    sampler = CropSampler(tile, reserved=reserved)
    rng = np.random.default_rng(3)
    for _ in range(200):
        warp = sampler.warp(64, rng)
        assert not overlaps(warp.bounds(), reserved)
        assert np.floor(warp.map_y.min()) >= 0 and np.ceil(warp.map_y.max()) < 400
    # class-balanced centres come only from nuclei outside the reserved rectangle
    for centres in sampler.centres:
        for y, x in centres:
            assert not (100 <= y < 300 and 100 <= x < 300)


def test_warp_scale_and_rotation_range():
    rng = np.random.default_rng(5)
    for _ in range(50):
        warp = random_warp(100, (500.0, 500.0), rng, elastic_px=0)
        step = np.hypot(warp.map_x[0, 1] - warp.map_x[0, 0], warp.map_y[0, 1] - warp.map_y[0, 0])
        assert 0.7 - 1e-6 <= step <= 1.4 + 1e-6
        centre = (warp.map_y[49:51, 49:51].mean(), warp.map_x[49:51, 49:51].mean())
        assert np.allclose(centre, (500.0, 500.0), atol=1e-3)


def test_degradations_keep_the_image_shape_and_type():
    rng = np.random.default_rng(7)
    image = _disc_tile().image[:96, :80]
    for _ in range(10):
        out = photometric(image, rng)
        assert out.shape == image.shape and out.dtype == np.uint8
    assert np.abs(jpeg(image, 95).astype(int) - image).mean() < 3


def test_jpeg_probability_reaches_every_crop_and_view(monkeypatch):
    """``--jpeg-p``: the share of crops and pair views that are JPEG re-compressed."""
    from training import augment

    calls = []
    real = augment.jpeg
    monkeypatch.setattr(augment, "jpeg", lambda im, q: calls.append(q) or real(im, q))
    for p_jpeg, low, high in ((0.0, 0, 0), (1.0, 30, 30), (0.5, 5, 25)):
        calls.clear()
        sampler = CropSampler(_disc_tile(), (), p_jpeg=p_jpeg)
        rng = np.random.default_rng(3)
        for _ in range(10):
            sampler.crop(64, rng)
            sampler.pair(64, 8, rng)  # two views, each its own storage
        assert low <= len(calls) <= high, (p_jpeg, len(calls))
        assert all(40 <= q <= 95 for q in calls)
    assert train_module.parse_args([]).jpeg_p == 0.5
    with pytest.raises(SystemExit):
        train_module.parse_args(["--jpeg-p", "1.5"])


def test_consistency_views_are_the_shifts_they_claim(monkeypatch):
    monkeypatch.setattr(train_module, "photometric", lambda image, rng: image)
    rng = np.random.default_rng(11)
    raws = [np.random.default_rng(k).integers(0, 255, (96 + 32, 96 + 32, 3), np.uint8)
            for k in range(6)]
    view_a, view_b, offsets = train_module.consistency_views(raws, 96, rng)
    for a, b, (dy, dx) in zip(view_a, view_b, offsets):
        assert -32 < dy < 32 and -32 < dx < 32
        in_a, in_b = common_region(a.shape, b.shape, (dy, dx))
        np.testing.assert_array_equal(b[in_b], a[in_a])


def test_consistency_loss_is_zero_when_aligned_and_grows_when_not():
    g = torch.Generator().manual_seed(0)
    fg = torch.randn(1, 1, 40, 40, generator=g)
    dist = torch.randn(1, 1, 40, 40, generator=g)
    cls = torch.randn(1, 3, 40, 40, generator=g)
    teacher = (torch.sigmoid(fg)[:, 0], torch.sigmoid(dist)[:, 0], torch.softmax(cls, dim=1))
    assert consistency_loss((fg, dist, cls), teacher, [(0, 0)]).item() == pytest.approx(0.0)
    dy, dx = 3, -2
    # B's pixel (y, x) shows A's (y + dy, x + dx): shift the student's maps accordingly
    shifted = tuple(torch.roll(t, shifts=(-dy, -dx), dims=(-2, -1)) for t in (fg, dist, cls))
    assert consistency_loss(shifted, teacher, [(dy, dx)]).item() == pytest.approx(0.0, abs=1e-6)
    assert consistency_loss(shifted, teacher, [(0, 0)]).item() > 0.01


def test_calibration_helpers_on_constructed_nuclei():
    true = np.zeros((20, 20), np.int64)
    pred = np.zeros((20, 20), np.int64)
    true[2:8, 2:8], pred[2:8, 3:8] = 1, 5   # IoU 30/36: matched
    true[10:16, 10:16], pred[10:13, 10:16] = 2, 6   # IoU 18/36 = 0.5: not > 0.5
    assert matched_nuclei(true, pred) == [(1, 5)]
    logits = np.zeros((3, 20, 20))
    logits[1][pred == 5] = np.log(4.0)   # class 1 four times as likely as each other
    p = nucleus_probabilities(logits, pred, np.array([5]), 1.0)
    np.testing.assert_allclose(p[0], [1 / 6, 4 / 6, 1 / 6])
    hot = nucleus_probabilities(logits, pred, np.array([5]), 2.0)  # T = 2: 2 : 1 : 1
    np.testing.assert_allclose(hot[0], [0.25, 0.5, 0.25])
    assert 1.0 in TEMPERATURES


def test_threshold_option_parses_fixed_settings_and_rejects_bad_ones():
    args = train_module.parse_args([])
    assert args.thresholds == {"fg_threshold": 0.4, "seed_threshold": 0.4, "min_area_px": 32,
                               "fg_peak_threshold": 0.7}
    # the shipped recipe (MODEL.md, 5.1.0's network, 5.2.0's peak)
    assert args.consistency == 0 and args.pairs == 4 and args.fg_weight_connective == 2.0
    assert args.split == "all" and args.settings_from is None  # the twin is trained first
    assert train_module.parse_args(["--thresholds", "tune"]).thresholds is None
    assert train_module.parse_args(["--thresholds", "0.5,0.3,64"]).thresholds == {
        "fg_threshold": 0.5, "seed_threshold": 0.3, "min_area_px": 64, "fg_peak_threshold": 0.0}
    assert train_module.parse_args(["--thresholds", "0.5,0.3,64,0.8"]).thresholds[
        "fg_peak_threshold"] == 0.8
    for bad in ("0.5,0.3", "1.5,0.3,64", "0.5,0,64", "0.5,0.3,-1", "0.5,0.3,2.5", "nan,0.4,32",
                "a,b,c", "0.5,0.3,64,1.5", "0.5,0.3,64,nan", "0.5,0.3,64,0.7,0.9"):
        with pytest.raises(SystemExit):
            train_module.parse_args(["--thresholds", bad])
    # export options do not change the resume key: a rerun with other thresholds resumes
    assert (train_module._arg_key(train_module.parse_args(["--thresholds", "tune"]))
            == train_module._arg_key(train_module.parse_args([])))


def test_stain_transfer_is_lossless_onto_its_own_stains_and_recolours_onto_others():
    image = _disc_tile().image
    nuclei = _disc_tile().instances > 0
    rng = np.random.default_rng(2)
    source = REFERENCE_STAINS.astype(np.float32)
    same = stain_transfer(image, rng, source[None], source, conc_range=(1.0, 1.0),
                          vector_noise=0.0)
    # split into concentrations and residual, rebuilt with the same vectors: rounding only
    assert np.abs(same.astype(int) - image).max() <= 1
    moved = [stain_transfer(image, np.random.default_rng(k), _OTHER_STAINS, source)
             for k in range(8)]
    assert max(np.abs(m.astype(int) - image).mean() for m in moved) > 5
    for m in moved:  # the labels still hold: nuclei stay darker than the background
        assert m.shape == image.shape and m.dtype == np.uint8
        grey = m.astype(float).mean(axis=2)
        assert grey[nuclei].mean() < grey[~nuclei].mean() - 30


def test_labelled_pairs_are_the_shifts_they_claim():
    sampler = CropSampler(_disc_tile(), reserved=())
    sampler._degrade = lambda image, rng: image  # look at geometry only
    rng = np.random.default_rng(13)
    for _ in range(10):
        a, b, (dy, dx) = sampler.pair(96, 32, rng)
        assert -32 < dy < 32 and -32 < dx < 32
        in_a, in_b = common_region(a[0].shape, b[0].shape, (dy, dx))
        for view_a, view_b in zip(a, b):  # image, fg, distance, class: same shift
            np.testing.assert_array_equal(view_b[in_b], view_a[in_a])


def test_mirrored_edges_keep_image_and_labels_aligned_and_the_rest_untouched():
    """A pair's view B with mirrored edge bands (--pair-edges): between the bands nothing
    moves; each band is the mirror image of the pixels next to it, the labels' alike."""
    sampler = CropSampler(_disc_tile(), reserved=())
    sampler._degrade = lambda image, rng: image
    _, view, _ = sampler.pair(96, 32, np.random.default_rng(3))
    top, bottom, left, right = 5, 0, 17, 2
    out = mirror_edges(view, (top, bottom, left, right))
    for before, after in zip(view, out):
        assert after.shape == before.shape and after.dtype == before.dtype
        np.testing.assert_array_equal(after[top:96 - bottom, left:96 - right],
                                      before[top:96 - bottom, left:96 - right])
        # row top - k mirrors row top + k; column left - k mirrors column left + k
        for k in (1, top):
            np.testing.assert_array_equal(after[top - k], after[top + k])
        for k in (1, left):
            np.testing.assert_array_equal(after[:, left - k], after[:, left + k])
        np.testing.assert_array_equal(after[:, 96 - right], after[:, 96 - right - 2])
    # an image and its labels stay one: every mirrored nucleus pixel is a nucleus colour
    image, fg = out[0], out[1]
    assert image[fg > 0].mean() < image[fg == 0].mean()
    assert (mirror_edges(view, (0, 0, 0, 0))[0] == view[0]).all()


def test_pair_edges_draw_mirrored_bands_on_view_b_only():
    """--pair-edges 1: every pair's view B carries its bands (0 or 1-31 px a side), made by
    ``mirror_edges`` from the view the run without the option draws; view A and the plain
    crops are as without the option."""
    def batch(*option):
        args = train_module.parse_args(["--batch", "6", "--pairs", "2", "--crop", "96",
                                        *option])
        return train_module.draw_batch(args, CropSampler(_disc_tile(), ()), [], None,
                                       np.random.default_rng(5))

    plain, banded = batch(), batch("--pair-edges", "1")
    offsets, bands = banded[4]
    assert offsets == plain[4][0] and plain[4][1] is None
    assert len(bands) == 2 and any(any(band) for band in bands)
    assert all(b == 0 or 1 <= b < 32 for band in bands for b in band)
    for got, want in zip(banded[:4], plain[:4]):  # images, fg, dist, cls
        np.testing.assert_array_equal(got[:4], want[:4])
    for k, band in enumerate(bands):
        want = mirror_edges(tuple(t[4 + k] for t in plain[:4]), band)
        for got, expected in zip((t[4 + k] for t in banded[:4]), want):
            np.testing.assert_array_equal(got, expected)


def test_pair_consistency_leaves_out_the_mirrored_bands():
    """What B shows in its mirrored bands is not A's tissue: it costs nothing; one pixel
    inside them it does."""
    g = torch.Generator().manual_seed(2)
    maps = [torch.randn(1, c, 48, 48, generator=g) for c in (1, 1, 3)]
    dy, dx = 4, -6
    view_b = [torch.roll(t, shifts=(-dy, -dx), dims=(-2, -1)).clone() for t in maps]
    band = (7, 3, 0, 9)  # top, bottom, left, right
    for t in view_b:
        t[..., :band[0], :] = 9.0
        t[..., 48 - band[1]:, :] = -9.0
        t[..., :, 48 - band[3]:] = 5.0
    assert pair_consistency_loss(tuple(maps), tuple(view_b), [(dy, dx)], [band]).item() == \
        pytest.approx(0.0, abs=1e-6)
    assert pair_consistency_loss(tuple(maps), tuple(view_b), [(dy, dx)],
                                 [(band[0] - 1, band[1], 0, band[3])]).item() > 1e-4
    assert pair_consistency_loss(tuple(maps), tuple(view_b), [(dy, dx)]).item() > 1e-3


def test_rescan_pairs_share_the_stain_and_not_the_file():
    """A rescan pair is one slide seen twice: the common region keeps its colours (only
    noise and JPEG differ, which keep the mean) and its labels shift exactly; independent
    views are stained apart."""
    sampler = CropSampler(_disc_tile(), reserved=(), stains=_OTHER_STAINS, p_stain=0.7)
    rng = np.random.default_rng(17)
    colour_gaps = {}
    for rescan in (True, False):
        gaps = []
        for _ in range(12):
            a, b, (dy, dx) = sampler.pair(96, 32, rng, rescan=rescan)
            in_a, in_b = common_region(a[0].shape, b[0].shape, (dy, dx))
            for view_a, view_b in zip(a[1:], b[1:]):  # fg, distance, class: the same shift
                np.testing.assert_array_equal(view_b[in_b], view_a[in_a])
            common_a = a[0][in_a].reshape(-1, 3).astype(float)
            common_b = b[0][in_b].reshape(-1, 3).astype(float)
            gaps.append(np.abs(common_a.mean(axis=0) - common_b.mean(axis=0)).max())
            if rescan:  # what differs is pixel noise, not the slide
                assert np.abs(common_a - common_b).mean() < 12
        colour_gaps[rescan] = gaps
    # noise is zero-mean and JPEG keeps each block's mean, but for clipping near white
    # (measured: at most 2.0 grey levels; stained apart: up to 37)
    assert max(colour_gaps[True]) < 4
    assert max(colour_gaps[False]) > 10


def test_pair_consistency_loss_is_zero_for_matching_views_and_pulls_both():
    g = torch.Generator().manual_seed(1)
    maps = [torch.randn(2, c, 48, 48, generator=g) for c in (1, 1, 3)]
    offsets = [(5, -3), (-7, 2)]
    # B's pixel (y, x) shows A's (y + dy, x + dx)
    view_b = tuple(torch.stack([torch.roll(t[i], shifts=(-dy, -dx), dims=(-2, -1))
                                for i, (dy, dx) in enumerate(offsets)]) for t in maps)
    assert pair_consistency_loss(tuple(maps), view_b, offsets).item() == pytest.approx(
        0.0, abs=1e-6)
    a = tuple(t.clone().requires_grad_(True) for t in maps)
    b = tuple(torch.randn(t.shape, generator=g).requires_grad_(True) for t in maps)
    loss = pair_consistency_loss(a, b, offsets)
    loss.backward()
    assert loss.item() > 0.01
    assert a[0].grad.abs().sum() > 0 and b[0].grad.abs().sum() > 0


def test_foreground_loss_weighs_the_pixels_it_is_told_to():
    """Weight 1 everywhere is the plain loss; a network that misses one kind of nucleus
    pays more for it when that kind's pixels weigh more, and nothing more for the rest."""
    target = torch.zeros(1, 1, 32, 32)
    target[..., 4:12, 4:12] = 1.0    # a nucleus it finds
    target[..., 20:28, 20:28] = 1.0  # a nucleus it misses
    logits = torch.where(target > 0, 4.0, -4.0)
    logits[..., 20:28, 20:28] = -2.0
    plain = foreground_loss(logits, target)
    assert foreground_loss(logits, target, torch.ones_like(target)).item() == pytest.approx(
        plain.item(), rel=1e-6)
    missed = torch.zeros_like(target)
    missed[..., 20:28, 20:28] = 1.0
    found = torch.zeros_like(target)
    found[..., 4:12, 4:12] = 1.0
    on_missed = foreground_loss(logits, target, 1.0 + missed).item()
    on_found = foreground_loss(logits, target, 1.0 + found).item()
    assert on_missed > on_found > plain.item()
    # the extra cost is the missed pixels' cross-entropy (softplus(2) each), averaged
    extra = 64 * float(torch.nn.functional.softplus(torch.tensor(2.0))) / target.numel()
    assert on_missed - plain.item() == pytest.approx(extra, rel=1e-4)


def test_refinement_path_starts_as_the_plain_network_and_round_trips(tmp_path):
    """``--refine``: at initialisation the full-resolution path adds nothing (the network is
    the plain one); once trained it changes the maps, and its weights and architecture
    survive ``save_weights`` / ``load_exported``."""
    from slicer_cli.nuclei.network import UNet, load_exported, normalise, save_weights

    arch = {"width": 4, "max_mult": 4, "stem": True, "antialias": True, "blur_pools": 4,
            "bilinear_head": True, "bilinear_up": True}
    torch.manual_seed(0)
    plain = UNet(**arch).eval()
    refined = UNet(**arch, refine=4).eval()
    missing = refined.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("refine_") for k in missing)
    image = torch.from_numpy(_disc_tile(n=4, size=128).image[None].copy())
    with torch.no_grad():
        for a, b in zip(plain(normalise(image)), refined(normalise(image))):
            torch.testing.assert_close(a, b)
        torch.nn.init.normal_(refined.refine_out.weight, std=0.1)
        moved = refined(normalise(image))[0]
    assert (moved - plain(normalise(image))[0]).abs().max() > 1e-3
    save_weights(refined, tmp_path / "model.pt", temperature=1.3)
    loaded = load_exported(tmp_path / "model.pt")
    assert loaded.net.arch["refine"] == 4
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(normalise(image))[0], moved)
    with pytest.raises(ValueError, match="bilinear head"):
        UNet(**{**arch, "bilinear_head": False}, refine=4)


def test_stem_low_pass_attenuates_what_the_stem_would_alias_and_round_trips(tmp_path):
    """``--stem-blur``: the binomial low-pass before the stride-2 stem keeps a flat image
    flat and passes a pattern at the half-resolution grid's Nyquist frequency (period 4 px)
    at cos(pi/4)^2 = 1/2 (3 x 3) or cos(pi/4)^4 = 1/4 (5 x 5) of its amplitude, and the
    finest pattern (period 2 px) not at all; a 5 x 5 network's size survives
    ``save_weights`` / ``load_exported``, and a 3 x 3 one's saved architecture is 5.2.0's."""
    from slicer_cli.nuclei.network import Blur, UNet, load_exported, normalise, save_weights

    x = torch.arange(64, dtype=torch.float64)
    for period, gains in ((4, {3: 0.5, 5: 0.25}), (2, {3: 0.0, 5: 0.0})):
        wave = torch.cos(2 * torch.pi * x / period)
        image = (wave[None, :] * torch.ones(64, 1, dtype=torch.float64))[None, None]
        for size, gain in gains.items():
            blur = Blur(1, size).double()
            out = blur(image)[0, 0, 8:-8, 8:-8]  # away from the replicated border
            inner = wave[8:-8][None, :].expand_as(out)
            assert torch.allclose(out, gain * inner, atol=1e-12)
            flat = blur(torch.full((1, 1, 16, 16), 3.0, dtype=torch.float64))
            assert torch.allclose(flat, torch.full_like(flat, 3.0), atol=1e-12)
    with pytest.raises(ValueError, match="Blur size"):
        Blur(3, 4)

    arch = {"width": 4, "max_mult": 4, "stem": True, "antialias": True, "blur_pools": 4,
            "bilinear_head": True, "bilinear_up": True}
    assert "stem_blur" not in UNet(**arch).arch
    torch.manual_seed(0)
    net = UNet(**arch, stem_blur=5).eval()
    assert net.blur.kernel.shape == (3, 1, 5, 5)
    save_weights(net, tmp_path / "model.pt")
    loaded = load_exported(tmp_path / "model.pt")
    assert loaded.net.arch["stem_blur"] == 5
    image = torch.from_numpy(_disc_tile(n=4, size=128).image[None].copy())
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(normalise(image))[0], net(normalise(image))[0])


_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


def _luma_chroma(x: torch.Tensor) -> torch.Tensor:
    """BT.601 Y, Cb, Cr (0-1 scale) of a normalised NCHW batch."""
    from slicer_cli.nuclei.network import MEAN, STD

    rgb = x * torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1) + torch.tensor(
        MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    return torch.einsum("ij,njhw->nihw", torch.tensor(_YCC, dtype=x.dtype), rgb)


def test_chroma_low_pass_keeps_luma_and_smooths_chroma_only():
    """``--chroma-blur``: the luma of the input passes unchanged; its chroma is exactly the
    Gaussian of the input's chroma (scipy's, edges replicated); a flat colour stays as it
    is; a chroma pattern at the finest period (2 px, what JPEG's 4:2:0 drops) is gone."""
    from scipy import ndimage as ndi

    from slicer_cli.nuclei.network import MEAN, STD, ChromaBlur, normalise

    blur = ChromaBlur(1.5).double()
    rng = np.random.default_rng(3)
    image = torch.from_numpy(rng.integers(0, 256, (2, 40, 52, 3), dtype=np.uint8))
    x = normalise(image).double()
    before, after = _luma_chroma(x), _luma_chroma(blur(x))
    # float64 throughout: only the constants' float32 storage rounds (1e-7 of a unit range)
    torch.testing.assert_close(after[:, 0], before[:, 0], atol=1e-6, rtol=0)
    expected = ndi.gaussian_filter(before[:, 1:].numpy(), (0, 0, 1.5, 1.5), mode="nearest",
                                   radius=(0, 0, blur.radius, blur.radius))
    np.testing.assert_allclose(after[:, 1:].numpy(), expected, atol=1e-6, rtol=0)
    flat = normalise(torch.tensor([200, 120, 170], dtype=torch.uint8).expand(1, 16, 16, 3))
    torch.testing.assert_close(blur(flat.double()), flat.double(), atol=1e-6, rtol=0)
    checker = torch.from_numpy(np.indices((32, 32)).sum(0) % 2 * 2.0 - 1.0)
    base = torch.tensor([[0.6], [0.0], [0.0]], dtype=torch.float64)  # Y, Cb, Cr
    ycc = base.view(1, 3, 1, 1) + torch.stack([0 * checker, 0.1 * checker, 0.1 * checker])
    inv = torch.linalg.inv(torch.tensor(_YCC, dtype=torch.float64))
    rgb = torch.einsum("ij,njhw->nihw", inv, ycc)
    xn = (rgb - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / torch.tensor(
        STD, dtype=torch.float64).view(1, 3, 1, 1)
    out = _luma_chroma(blur(xn))[0, :, 8:-8, 8:-8]
    # the Gaussian's gain at period 2 px: exp(-2 pi^2 sigma^2 / 4) = 1.5e-5
    assert out[1:].abs().max() < 0.1 * 1e-4
    torch.testing.assert_close(out[0], torch.full_like(out[0], 0.6), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="sigma"):
        ChromaBlur(0.0)


def _busy_batch_norms(net) -> None:
    """Give ``net``'s batch norms running statistics that do something (not 0 and 1)."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


def _round_trip(net, image, tmp_path) -> dict:
    """Save ``net`` as model.pt and as ONNX (temperature 1.2): the ONNX file's maps of
    ``image`` are the PyTorch maps, the reloaded weights' too; returns the saved arch."""
    import onnxruntime as ort

    from slicer_cli.nuclei.network import Exported, load_exported, save_weights
    from training.export import export_onnx

    save_weights(net, tmp_path / "model.pt", temperature=1.2)
    loaded = load_exported(tmp_path / "model.pt")
    export_onnx(net, tmp_path / "model.onnx", 1.2)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    onnx_maps = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    with torch.no_grad():
        torch_maps = Exported(net, 1.2)(image)
        for a, b, c in zip(onnx_maps, torch_maps, loaded(image)):
            np.testing.assert_allclose(a, b.numpy(), atol=1e-5, rtol=0)
            torch.testing.assert_close(c, b)
    return loaded.net.arch


def test_chroma_low_pass_folded_into_the_stem_is_the_plain_order_and_round_trips(tmp_path):
    """For inference the network computes chroma low-pass, input blur and stem as one
    convolution over ``[x, G * x]`` (``UNet._chroma_stem``; training keeps the plain order):
    the same maps as the three in turn; the sigma is
    saved with the weights (and absent from a network without it, so its ``model.pt``
    reads as 5.2.0's did); the ONNX file gives the PyTorch maps."""
    from slicer_cli.nuclei.network import UNet, normalise

    arch = {"width": 4, "max_mult": 4, "stem": True, "antialias": True, "blur_pools": 4,
            "bilinear_head": True, "bilinear_up": True}
    assert "chroma_blur" not in UNet(**arch).arch
    torch.manual_seed(0)
    net = UNet(**arch, chroma_blur=1.5).eval()
    _busy_batch_norms(net)
    assert net.can_fold_chroma
    image = torch.from_numpy(_disc_tile(n=4, size=128).image[None].copy())
    with torch.no_grad():
        plain = net(normalise(image))  # training's order
        folded = net(normalise(image), fold_chroma=True)
    for a, b in zip(folded, plain):  # float32 sums in another order: ~1e-7 of logits ~1
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert _round_trip(net, image, tmp_path)["chroma_blur"] == 1.5


@pytest.mark.parametrize("extra", [
    {"chroma_blur": 1.5},  # the shipped architecture (5.3.x), narrower
    {},  # 5.0.0 - 5.2.0: no chroma low-pass
    {"chroma_blur": 1.5, "stem_blur": 5, "blur_pools": 2},  # wider blur, two plain pools
    {"antialias": False, "blur_pools": 0, "n_classes": 2},  # no low-pass at all
    {"antialias": False, "blur_pools": 0, "chroma_blur": 1.5},  # the chroma one alone
    {"chroma_blur": 2.0},  # run T's wider Gaussian (radius 6: more edge padding)
])
def test_onnx_graph_is_the_exported_network(tmp_path, extra):
    """``export_onnx`` writes :class:`training.onnx_graph.InferenceGraph` (batch norms and
    temperature folded, channels padded to 16, the input padded once, the output resized
    channels-last): for every architecture it covers, on a batch of two non-square tiles,
    its maps are ``Exported``'s (the PyTorch backend's graph) up to float rounding, in
    PyTorch and in ONNX Runtime; an architecture it does not cover exports as before."""
    import onnxruntime as ort

    from slicer_cli.nuclei.network import Exported, UNet
    from training.export import export_onnx
    from training.onnx_graph import InferenceGraph, supports

    arch = {"width": 6, "max_mult": 4, "stem": True, "antialias": True, "blur_pools": 4,
            "bilinear_head": True, "bilinear_up": True, **extra}
    torch.manual_seed(0)
    net = UNet(**arch).eval()
    _busy_batch_norms(net)
    assert supports(net)
    tile = _disc_tile(n=6, size=160).image
    image = torch.from_numpy(np.stack([tile[:96, :128], tile[64:160, 32:160]]))
    export_onnx(net, tmp_path / "model.onnx", 1.3)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    onnx_maps = session.run(None, {"IMAGE": image.numpy()})
    with torch.no_grad():
        want = Exported(net, 1.3)(image)
        got = InferenceGraph(net, 1.3)(image)
    # the same float32 network summed in another order (folded batch norms, split stem):
    # about 1e-7 relative per layer on logits of order 1; 1e-5 on the probabilities
    for a, b, c in zip(onnx_maps, got, want):
        assert a.shape == tuple(c.shape)
        np.testing.assert_allclose(a, c.numpy(), atol=1e-5, rtol=0)
        torch.testing.assert_close(b, c, atol=1e-5, rtol=0)
    assert (want[2].sum(-1) - 1).abs().max() < 1e-5
    plain = UNet(**{**arch, "bilinear_head": False, "bilinear_up": False}).eval()
    assert not supports(plain)
    with pytest.raises(ValueError, match="supports"):
        InferenceGraph(plain)
    _round_trip(plain, image[:1], tmp_path)  # exported as Exported: the same maps


def test_half_resolution_chroma_path_sees_luma_and_smooth_chroma_and_round_trips(tmp_path):
    """``--chroma-half``: the Gaussian at stride 2 is the full Gaussian's every other pixel;
    the stem's output does not move when only the chroma changes at the finest period, and
    does when the luma does; the option is saved with the weights (absent when off) and the
    ONNX file gives the PyTorch maps."""
    from slicer_cli.nuclei.network import MEAN, STD, ChromaBlur, UNet

    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    blur = ChromaBlur(1.5).double()
    torch.testing.assert_close(blur.smooth(x, stride=2), blur.smooth(x)[:, :, ::2, ::2],
                               atol=1e-12, rtol=0)
    arch = {"width": 4, "max_mult": 4, "stem": True, "antialias": True, "blur_pools": 4,
            "bilinear_head": True, "bilinear_up": True, "chroma_blur": 1.5}
    assert "chroma_half" not in UNet(**arch).arch
    with pytest.raises(ValueError, match="chroma_half"):
        UNet(**{**arch, "chroma_blur": 0.0}, chroma_half=True)
    torch.manual_seed(0)
    net = UNet(**arch, chroma_half=True).eval()
    assert not net.can_fold_chroma
    _busy_batch_norms(net)
    # the stem's linear part (its batch norm and ReLU left out) on a flat colour, with a
    # pattern of the finest period (2 px) in its chroma only, and one of 8 px in its luma
    linear = copy.deepcopy(net)
    linear.stem[1], linear.stem[2] = torch.nn.Identity(), torch.nn.Identity()
    rows, cols = np.indices((64, 64))
    fine = torch.from_numpy((rows + cols) % 2 * 2.0 - 1.0)
    coarse = torch.from_numpy(np.cos(2 * np.pi * cols / 8))
    inv = torch.linalg.inv(torch.tensor(_YCC, dtype=torch.float64))
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)

    def stem(y, cb, cr):
        ycc = torch.stack([y + 0 * fine, cb + 0 * fine, cr + 0 * fine])[None]
        rgb = torch.einsum("ij,njhw->nihw", inv, ycc)
        with torch.no_grad():
            return linear._half_chroma_stem(((rgb - mean) / std).float())[:, :, 8:-8, 8:-8]

    flat = stem(0.6, 0.0, 0.0)
    in_chroma = stem(0.6, 0.05 * fine, 0.05 * fine)
    in_luma = stem(0.6 + 0.05 * coarse, 0.0, 0.0)
    # the Gaussian's gain at period 2 px: 1.5e-5 (of a pattern of 0.05 / STD ~ 0.3)
    assert (in_chroma - flat).abs().max() < 1e-4
    assert (in_luma - flat).abs().max() > 1e-3
    image = torch.from_numpy(_disc_tile(n=4, size=128).image[None].copy())
    assert _round_trip(net, image, tmp_path)["chroma_half"] is True


def test_loader_workers_draw_the_same_batches_whatever_their_number():
    """``--loader-workers N``: batch i comes from its own stream, made in spawned workers,
    in order, the same for any N; 0 keeps the run's one stream in the training process."""
    import functools

    from training.loader import batches, step_rng

    args = train_module.parse_args(["--batch", "4", "--pairs", "1", "--crop", "96"])
    sampler = CropSampler(_disc_tile(), ())
    draw = functools.partial(train_module.draw_batch, args, sampler, [], None)
    want = [draw(step_rng(7, i)) for i in range(2, 6)]
    one = list(batches(draw, None, 7, 2, 6, workers=1))
    three = list(batches(draw, None, 7, 2, 6, workers=3))
    rng = np.random.default_rng(7)
    serial = [draw(rng) for _ in range(2)]
    shared = list(batches(draw, np.random.default_rng(7), 7, 4, 6, workers=0))
    for got, ref in [*zip(one, want), *zip(three, want), *zip(shared, serial)]:
        for a, b in zip(got[:4], ref[:4]):  # images, fg, dist, cls
            np.testing.assert_array_equal(a, b)
        # the pairs' offsets, no mirrored bands (--pair-edges 0), no mean-teacher views
        assert got[4] == ref[4] and len(got[4][0]) == 1 and got[4][1] is None
        assert got[5] is None
    assert not np.array_equal(want[0][0], want[1][0])  # each iteration its own crops
    assert not np.array_equal(want[0][0], serial[0][0])  # another draw than the one stream


def test_tail_average_is_the_mean_of_the_weights_with_its_own_batch_norm_statistics():
    """``--swa-from``: the running mean is the plain mean of the weights it saw; the averaged
    network carries it, with batch-norm statistics re-estimated from training crops."""
    from slicer_cli.nuclei.network import UNet

    torch.manual_seed(0)
    nets = [UNet(width=4, n_classes=3) for _ in range(3)]
    avg = {"from": 0, "n": 0, "params": [p.detach().clone() for p in nets[0].parameters()]}
    for net in nets:
        train_module._accumulate(avg, net)
    assert avg["n"] == 3
    for a, *ps in zip(avg["params"], *(n.parameters() for n in nets)):
        torch.testing.assert_close(a, sum(p.detach() for p in ps) / 3, rtol=1e-5, atol=1e-6)
    args = train_module.parse_args(["--batch", "2", "--crop", "64", "--swa-from", "0.5"])
    out = train_module.averaged_network(nets[2], avg, CropSampler(_disc_tile(), ()), args,
                                        torch.device("cpu"))
    for a, p in zip(avg["params"], out.parameters()):
        torch.testing.assert_close(p.detach(), a, rtol=0, atol=0)
    bn = [m for m in out.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    src = [m for m in nets[2].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(int(m.num_batches_tracked) == train_module.BN_BATCHES for m in bn)
    assert all(not torch.equal(m.running_mean, s.running_mean) for m, s in zip(bn, src))
    assert all(m.momentum == s.momentum for m, s in zip(bn, src))  # restored after the pass
    assert train_module.swa_names(args) == ["swa0.5"]
    with pytest.raises(SystemExit):
        train_module.parse_args(["--swa-from", "1.5"])
    with pytest.raises(SystemExit, match="no iteration was averaged"):
        train_module.averaged_network(nets[0], {**avg, "n": 0}, None, args, None)


def test_one_command_trains_the_held_out_twin_then_the_shipped_model(tmp_path):
    """``--split all`` without settings: the twin (held-out data kept out) is trained and
    tuned first, and the shipped model takes its thresholds and temperature; a rerun
    resumes both and gives the same files."""
    work, model = tmp_path / "work", tmp_path / "model"
    argv = ["--iterations", "2", "--checkpoint-every", "1", "--workdir", str(work),
            "--model-dir", str(model), "--version", "0.0.1-test"]
    summary = train_module.train(train_module.parse_args(argv))
    twin = json.loads((work / "heldout" / "summary.json").read_text())
    assert twin["split"] == "heldout" and summary["split"] == "all"
    for key in ("fg_threshold", "seed_threshold", "min_area_px", "fg_peak_threshold",
                "temperature"):
        assert summary[key] == twin[key]
    assert (work / "heldout_model" / "1" / "model.onnx").is_file()
    onnx = (model / "1" / "model.onnx").read_bytes()
    assert b"0.0.1-test" in (model / "config.pbtxt").read_bytes()
    again = train_module.train(train_module.parse_args(argv))  # resumed: nothing retrained
    assert again["train_s"] == summary["train_s"]
    assert (model / "1" / "model.onnx").read_bytes() == onnx


def test_training_on_cuda_without_a_device_is_refused_readably(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the next test trains on it")
    argv = ["--iterations", "1", "--device", "cuda", "--workdir", str(tmp_path / "w"),
            "--model-dir", str(tmp_path / "m"), "--split", "heldout"]
    with pytest.raises(SystemExit, match="--device cuda, but PyTorch sees no CUDA device"):
        train_module.train(train_module.parse_args(argv))
    assert not (tmp_path / "m").exists()


@pytest.mark.gpu
def test_training_on_cuda_exports_a_cpu_model(tmp_path):
    """A few iterations on the GPU machine: the network trains there, export, tuning and
    calibration run on the CPU as on this machine, and a rerun resumes the checkpoint."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    work, model = tmp_path / "work", tmp_path / "model"
    argv = ["--iterations", "3", "--device", "cuda", "--split", "heldout", "--workdir",
            str(work), "--model-dir", str(model), "--version", "0.0.1-cuda",
            "--stain-transfer", "0",  # only hgsc_nest's three files need to travel
            "--loader-workers", "2"]  # as training/gpu_train.sh
    summary = train_module.train(train_module.parse_args(argv))
    assert summary["split"] == "heldout" and (model / "1" / "model.onnx").is_file()
    assert b"0.0.1-cuda" in (model / "config.pbtxt").read_bytes()
    again = train_module.train(train_module.parse_args(argv))  # resumed from the checkpoint
    assert again["train_s"] == summary["train_s"]


def test_restain_moves_each_stain_onto_its_target_vector():
    source = REFERENCE_STAINS.astype(np.float64)
    target = _OTHER_STAINS[0].astype(np.float64)
    # pixels of hematoxylin only, eosin only, and a mix, built along the source vectors
    conc = np.array([[1.2, 0.0], [0.0, 0.9], [0.6, 0.5]])
    image = np.clip(256.0 * np.exp(-(conc @ source.T)) - 1.0 + 0.5, 0, 255).astype(np.uint8)
    out = restain(image[None], source, target)[0]
    od = -np.log((out.astype(np.float64) + 1.0) / 256.0)
    for k in range(2):  # each pure stain now lies along its target vector
        direction = od[k] / np.linalg.norm(od[k])
        assert direction @ target[:, k] > 0.995, (k, direction, target[:, k])
    # the mix keeps its amounts: its OD is the target vectors weighted by them
    np.testing.assert_allclose(od[2], target @ conc[2], atol=0.03)


def test_excluded_rectangles_are_kept_out_of_training_like_the_reserved_ones():
    """``--exclude`` (the learning curve of EXPERIMENTS.md): the rectangles join the reserved
    boxes the run's crops and class-balanced centres avoid; without it the run is the same
    run as before (its resume key), and a malformed rectangle is refused."""
    args = train_module.parse_args(["--split", "heldout", "--exclude", "0,750,0,1500"])
    assert train_module.kept_out(args) == RESERVED + ((0, 750, 0, 1500),)
    assert train_module.kept_out(train_module.parse_args([])) == ()
    assert train_module.kept_out(train_module.parse_args(
        ["--exclude", "0,10,0,10", "--exclude", "5,20,5,20"])) == ((0, 10, 0, 10), (5, 20, 5, 20))
    # the learning curve's run: the bottom-left quadrant's nuclei alone
    sampler = CropSampler(load_tile(), reserved=train_module.kept_out(args))
    assert [len(c) for c in sampler.centres] == [98, 215, 50]
    assert all(y >= 750 and x < 750 for c in sampler.centres for y, x in c)
    rng = np.random.default_rng(0)
    for _ in range(20):
        r0, r1, c0, c1 = sampler.warp(256, rng).bounds()
        assert r0 >= 750 and c1 <= 750
    assert "exclude" not in train_module._arg_key(train_module.parse_args([]))
    assert "exclude" in train_module._arg_key(args)
    for bad in ("1,2,3", "5,5,0,10", "0,10,7,3", "-1,4,0,4", "a,b,c,d"):
        with pytest.raises(SystemExit):
            train_module.parse_args(["--exclude", bad])
