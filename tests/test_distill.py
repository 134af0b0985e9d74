"""Self-distillation (training/distill.py) on constructed cases: the teacher's average is
the CLI's test-time average, the distillation never sees the CMU regions it is measured or
selected on, a distilled run resumes and exports, and the base checkpoints made before the
option still resume."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from slicer_cli.nuclei.backends.test_time import infer_averaged  # noqa: E402
from slicer_cli.nuclei.network import Exported, UNet  # noqa: E402
from training import train as train_module  # noqa: E402
from training.distill import averaged_maps  # noqa: E402
from training.unlabelled import EXCLUDED_BOXES, paint_out  # noqa: E402


class _TorchBackend:
    """The exported graph as a backend (uint8 NHWC in, the contract's maps out)."""

    def __init__(self, net):
        self.model = Exported(net).eval()

    def infer(self, batch):
        with torch.no_grad():
            fg, dist, cls = self.model(torch.from_numpy(np.ascontiguousarray(batch)))
        return {"FOREGROUND": fg.numpy(), "DISTANCE": dist.numpy(), "CLASS_PROB": cls.numpy()}


def test_teacher_average_is_the_cli_test_time_average():
    torch.manual_seed(0)
    net = UNet(width=4, n_classes=3, max_mult=2, stem=True, antialias=True, blur_pools=2,
               bilinear_head=True, bilinear_up=True).eval()
    with torch.no_grad():  # weights that make the maps vary (a fresh network's barely do)
        for param in net.parameters():
            param.normal_(0.0, 0.5)
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    fg, dist, cls = averaged_maps(net, torch.from_numpy(images))
    ref = infer_averaged(_TorchBackend(net), images, flips=4, shifts=4)
    # float32 sums of 16 maps in two orders: a few ulps of values <= 1
    np.testing.assert_allclose(fg.numpy(), ref["FOREGROUND"], atol=1e-5)
    np.testing.assert_allclose(dist.numpy(), ref["DISTANCE"], atol=1e-5)
    np.testing.assert_allclose(np.moveaxis(cls.numpy(), 1, -1), ref["CLASS_PROB"], atol=1e-5)
    # and it is not the plain call (the test would pass on a no-op otherwise)
    plain = _TorchBackend(net).infer(images)["FOREGROUND"]
    assert np.abs(plain - ref["FOREGROUND"]).max() > 0.05


def _pool(images, names):
    """The unlabelled pool's crop indexing over constructed images (no files read)."""
    from training.unlabelled import UnlabelledPool

    class Pool(UnlabelledPool):
        def __post_init__(self) -> None:
            self.index_tissue()

    return Pool(images=images, names=names)


def test_painted_out_regions_are_never_cropped():
    tissue = np.full((3000, 2600, 3), (150, 60, 160), dtype=np.uint8)  # all pink tissue
    pool = _pool([tissue], ["cmu_small_region.svs"])
    painted = paint_out(pool)
    assert pool.images[0].min() == 60  # the original is untouched
    for left, top, width, height in EXCLUDED_BOXES:
        assert (painted.images[0][top:top + height, left:left + width] == 255).all()
        centres = painted._tissue[0]
        inside = ((centres[:, 0] >= top) & (centres[:, 0] < top + height)
                  & (centres[:, 1] >= left) & (centres[:, 1] < left + width))
        assert not inside.any()
    assert len(painted._tissue[0]) < len(pool._tissue[0])


def test_distill_options_leave_the_base_checkpoint_key_alone():
    base = train_module._arg_key(train_module.parse_args([]))
    distilled = train_module._arg_key(train_module.parse_args(["--distill", "300",
                                                               "--w-distill", "2"]))
    assert base == distilled
    assert "refine" not in base  # at its neutral value: 5.1.0's checkpoints still resume
    assert train_module._arg_key(train_module.parse_args(["--refine", "8"]))["refine"] == "8"


def test_a_distilled_run_changes_the_network_exports_and_resumes(tmp_path):
    """``--distill 2`` after a 2-iteration run: the exported network differs from the
    undistilled one of the same run, and a rerun resumes from the distillation's checkpoint
    and writes the same file."""
    work, plain_dir, distilled_dir = tmp_path / "work", tmp_path / "plain", tmp_path / "distilled"
    base = ["--split", "heldout", "--iterations", "2", "--workdir", str(work),
            "--thresholds", "0.4,0.4,32,0.7"]
    train_module.train(train_module.parse_args(base + ["--model-dir", str(plain_dir)]))
    argv = base + ["--model-dir", str(distilled_dir), "--distill", "2",
                   "--checkpoint-every", "1"]
    summary = train_module.train(train_module.parse_args(argv))
    assert summary["distill"] == 2
    assert (work / "distill_checkpoint.pt").is_file()
    onnx = (distilled_dir / "1" / "model.onnx").read_bytes()
    assert onnx != (plain_dir / "1" / "model.onnx").read_bytes()
    log = (work / "train.log").read_text()
    assert "distill 2/2" in log
    train_module.train(train_module.parse_args(argv))
    assert "distillation resumed" in (work / "train.log").read_text()
    assert (distilled_dir / "1" / "model.onnx").read_bytes() == onnx


def test_frozen_batch_norm_keeps_the_trained_statistics(tmp_path):
    """``--distill-bn frozen``: the weights move, the batch-norm statistics do not (with
    ``train``, run K's setting, they follow the distilled batches)."""
    from slicer_cli.nuclei.network import load_exported

    work = tmp_path / "work"
    base = ["--split", "heldout", "--iterations", "2", "--workdir", str(work),
            "--checkpoint-every", "1"]
    states = {}
    for name, extra in (("plain", []), ("frozen", ["--distill", "2", "--distill-bn", "frozen"]),
                        ("train", ["--distill", "2"])):
        train_module.train(train_module.parse_args(
            base + extra + ["--model-dir", str(tmp_path / name)]))
        states[name] = load_exported(tmp_path / name / "1" / "model.pt").net.state_dict()
    stats = [k for k in states["plain"] if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in states["plain"] if k.endswith("weight")]
    assert stats and weights
    for k in stats:
        assert torch.equal(states["frozen"][k], states["plain"][k])  # copied, not computed
    assert any(not torch.equal(states["train"][k], states["plain"][k]) for k in stats)
    assert any(not torch.equal(states["frozen"][k], states["plain"][k]) for k in weights)
