"""The zoomed crops of python -m training.bench zoom (training/bench/zoom.py), with a tiny random bundle."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.card import parse
from training.bench import peers, zoom
from training.bench.quality import hr_lr
from training.bundle import random_bundle, write

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def val(tmp_path):
    """A val folder with the two scenes: smooth noise, and one textured patch whose place the window must find."""
    rng = np.random.default_rng(0)
    for _, cls, idx in zoom.SCENES:
        img = np.full((100, 104, 3), 120, np.uint8) + rng.integers(0, 3, (100, 104, 3), dtype=np.uint8)
        img[20:52, 28:60] = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        (tmp_path / "val" / cls).mkdir(parents=True)
        Image.fromarray(img).save(tmp_path / "val" / cls / f"{cls}{idx:02d}.png")
    return tmp_path / "val"


@pytest.fixture
def model(tmp_path):
    card, tensors = random_bundle("tiny", seed=2)
    raw = card.to_json()
    raw["methods"]["lcmsr"]["detail_default"] = 0.5
    return str(write(tmp_path / "tiny", parse(raw), tensors))


def test_zoom_picture_has_a_panel_per_column_and_says_the_peer_is_missing(val, model, tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "missing", lambda: "the ncnn package is not installed")
    out = tmp_path / "docs" / "BENCHMARKS.md"
    assert zoom.main(["--val", str(val), "--out", str(out), "--model", model, "--backend", "torch"]) == 0
    labels = ["LR (nearest)", "Bicubic", "LCMSR 1 step, D = 0", "LCMSR 1 step, D = 0.5 (the card's default)",
              "LCMSR 1 step, D = 1", "RealSR DF2K", "HR"]
    section = out.read_text()
    assert "RealSR DF2K: not run, the ncnn package is not installed" in section
    assert f"![{', '.join(labels)} at ×4" in section and "(zoom.png)" in section
    sheet = np.asarray(Image.open(out.parent / "zoom.png").convert("RGB"))
    tile = zoom.CROP * zoom.ZOOM
    assert zoom.SCALE * zoom.ZOOM >= 8  # one LR pixel is at least 8 screen pixels
    head = sheet.shape[0] - len(zoom.SCENES) * (16 + tile + zoom.PAD) - zoom.PAD
    assert sheet.shape[1] == len(labels) * (tile + zoom.PAD) + zoom.PAD and 12 < head <= 40
    hr = hr_lr(val / "forest" / "forest80.png", zoom.SCALE)[0]
    y0, x0 = zoom.window(hr)
    assert y0 % 4 == x0 % 4 == 0 and y0 <= 20 and y0 + zoom.CROP >= 52 and x0 <= 28 and x0 + zoom.CROP >= 60
    top = head + 16 + 16 + tile + zoom.PAD  # the second scene's panels

    def panel(j):
        return sheet[top:top + tile, zoom.PAD + j * (tile + zoom.PAD):][:, :tile]

    expected = np.repeat(np.repeat(hr[:, y0:y0 + zoom.CROP, x0:x0 + zoom.CROP], zoom.ZOOM, 1), zoom.ZOOM, 2)
    np.testing.assert_array_equal(panel(6), expected.transpose(1, 2, 0))  # HR, nearest-neighbour enlarged
    peer = panel(5).reshape(-1, 3)
    assert (peer == zoom.MISSING).all(axis=1).mean() > 0.8 and (peer == 0).all(axis=1).any()  # grey, with text
    for j in range(2, 5):  # each LCMSR column ran (not the grey panel), and D changes the result
        assert (panel(j).reshape(-1, 3) == zoom.MISSING).all(axis=1).mean() < 0.5
    assert not np.array_equal(panel(2), panel(4))


def test_zoom_says_which_scene_is_missing(tmp_path, caplog):
    (tmp_path / "val").mkdir()
    assert zoom.main(["--val", str(tmp_path / "val"), "--out", str(tmp_path / "B.md")]) == 2
    assert "denseresidential80.png is not there" in caplog.text and not (tmp_path / "zoom.png").exists()
