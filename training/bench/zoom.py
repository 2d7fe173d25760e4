"""Zoomed crops of a roof and a tree canopy at ×4 (python -m training.bench zoom --val VAL --out docs/BENCHMARKS.md):
docs/zoom.png beside the Markdown file, and a section that shows it appended to that file.

Each scene is one UC Merced val image (``SCENES``) under the quality bench's protocol (training/bench/quality.py:
HR cropped to a multiple of 4, LR its antialiased bicubic downsampling, outputs quantised to 8 bits). Every method
runs on the whole LR image as the quality bench runs it (``quality.build``: the engine's methods, seed 0), then
the same HR window is cut from each result: the window of ``CROP`` HR pixels, on the LR grid and at least
``MARGIN`` from the border, with the highest gradient energy (sum of squared neighbour differences of the band
mean) of HR. Columns: LR (nearest), bicubic, LCMSR (1 step) at D = 0, at the model card's default D and at D = 1,
RealSR DF2K (training/bench/peers.py; when it is not installed its panel says why) and HR; every panel is
enlarged ``ZOOM``× with nearest neighbour, so one LR pixel is 4·ZOOM screen pixels.
"""
from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from engine.errors import LatentSRError
from engine.methods import card_default_detail
from engine.registry import BICUBIC, LCMSR

from . import peers
from .quality import Row, build, hr_lr, quantise

log = logging.getLogger(__name__)

SCALE = 4
SCENES = (("roof", "denseresidential", 80), ("tree canopy", "forest", 80))  # (what, class folder, image number)
CROP = 64  # HR pixels of a window's side (16 LR pixels)
ZOOM = 3  # screen pixels per HR pixel: one LR pixel is SCALE · ZOOM = 12 screen pixels
MARGIN = 8  # HR pixels kept clear of the image border
PEER = next(k for k, p in enumerate(peers.PEERS) if p.label == "RealSR DF2K")
PAD, CHAR = 4, 6  # pixels between panels; width of a character of PIL's default font
MISSING = (224, 224, 224)  # a panel whose column could not run


def window(hr: np.ndarray) -> tuple[int, int]:
    """Top-left (y, x) of the CROP × CROP window of ``hr`` (C×H×W), on the LR grid and MARGIN inside the border,
    with the highest gradient energy of the band mean (the first such window in row order)."""
    g = hr.astype(np.float64).mean(axis=0)
    energy = np.zeros_like(g)
    energy[:, :-1] += np.diff(g, axis=1) ** 2
    energy[:-1, :] += np.diff(g, axis=0) ** 2
    total = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best, where = -1.0, (0, 0)
    for y in range(MARGIN // SCALE * SCALE, g.shape[0] - CROP - MARGIN + 1, SCALE):
        for x in range(MARGIN // SCALE * SCALE, g.shape[1] - CROP - MARGIN + 1, SCALE):
            e = total[y + CROP, x + CROP] - total[y, x + CROP] - total[y + CROP, x] + total[y, x]
            if e > best:
                best, where = e, (y, x)
    if best < 0:
        raise LatentSRError(f"the image ({g.shape[0]}×{g.shape[1]}) is smaller than a {CROP}-pixel window "
                            f"{MARGIN} pixels inside its border")
    return where


def columns(model: str | None) -> list[tuple[str, Row | None, str | None]]:
    """(label, the row that makes it or None for LR/HR, why it is missing or None) of each column, in order;
    the card's default D shares the column of D = 0 or 1 when it is one of them."""
    default = card_default_detail(LCMSR.name, model)
    details = sorted({0.0, default, 1.0})
    cols = [("LR (nearest)", None, None), (BICUBIC.short, Row(BICUBIC.name), None)]
    cols += [(f"LCMSR 1 step, D = {d:g}" + (" (the card's default)" if d == default else ""), Row(LCMSR.name, 1, d), None)
             for d in details]
    peer = Row(f"peer:{PEER}")
    cols.append((peer.label, peer, peers.missing()))
    return cols + [("HR", None, None)]


def picture(val: Path, out: Path, model: str | None, backend: str) -> list[tuple[str, str | None]]:
    """Write the zoomed crops of SCENES to ``out``; (label, why it is missing or None) of each column."""
    scenes = []
    for what, cls, idx in SCENES:
        path = val / cls / f"{cls}{idx:02d}.png"
        if not path.is_file():
            raise LatentSRError(f"{path} is not there: the zoom bench shows {what} from {cls} image {idx}")
        hr, lr = hr_lr(path, SCALE)
        scenes.append((what, path, hr, lr, window(hr)))
    cols = columns(model)
    panels = {}  # (scene, column) -> HR-sized uint8 C×H×W
    for j, (label, row, why) in enumerate(cols):
        if row is None or why:
            continue
        log.info("%s", label)
        run = build(row, model, backend)[0]
        for i, (_, _, _, lr, _) in enumerate(scenes):
            panels[i, j] = quantise(run(lr, float(SCALE)))
    tile = CROP * ZOOM
    labels = [textwrap.fill(label, tile // CHAR) for label, _, _ in cols]
    head = 12 * max(label.count("\n") + 1 for label in labels) + 6
    caption = 16
    sheet = Image.new("RGB", (len(cols) * (tile + PAD) + PAD, head + len(scenes) * (caption + tile + PAD) + PAD), "white")
    draw = ImageDraw.Draw(sheet)
    for j, label in enumerate(labels):
        draw.multiline_text((PAD + j * (tile + PAD) + 2, 2), label, fill="black", spacing=1)
    for i, (what, path, hr, lr, (y0, x0)) in enumerate(scenes):
        top = head + i * (caption + tile + PAD)
        draw.text((PAD + 2, top + 2), f"{what}: {path.name}, HR window rows {y0}-{y0 + CROP}, columns {x0}-{x0 + CROP}; "
                                     f"×{SCALE}, one LR pixel = {SCALE * ZOOM} screen pixels", fill="black")
        for j, (label, row, why) in enumerate(cols):
            left = PAD + j * (tile + PAD)
            if why:
                draw.rectangle((left, top + caption, left + tile - 1, top + caption + tile - 1), fill=MISSING)
                draw.multiline_text((left + 4, top + caption + 4), textwrap.fill(f"not run: {why}", (tile - 8) // CHAR),
                                    fill="black", spacing=1)
                continue
            if label == "HR":
                img = hr
            elif row is None:
                img = np.repeat(np.repeat(quantise(lr), SCALE, axis=1), SCALE, axis=2)
            else:
                img = panels[i, j]
            crop = np.ascontiguousarray(img[:, y0:y0 + CROP, x0:x0 + CROP].transpose(1, 2, 0))
            sheet.paste(Image.fromarray(crop).resize((tile, tile), Image.NEAREST), (left, top + caption))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return [(label, why) for label, _, why in cols]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.bench zoom", description=__doc__.splitlines()[0])
    ap.add_argument("--val", required=True, type=Path, help="the UC Merced val folder (class folders)")
    ap.add_argument("--out", default="docs/BENCHMARKS.md", type=Path,
                    help="append the section to this Markdown file; zoom.png goes beside it (default %(default)s)")
    ap.add_argument("--model", help="model name or folder (default: the bundled default)")
    ap.add_argument("--backend", default="auto", help="backend of the learned methods (default: auto, as users get)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    png = args.out.parent / "zoom.png"
    try:
        cols = picture(args.val, png, args.model, args.backend)
    except (LatentSRError, OSError) as e:
        log.error("error: %s", e)
        return 2
    missing = [f"{label}: not run, {why}" for label, why in cols if why]
    text = "\n".join([
        "", "## Zoomed crops at ×4", "",
        f"Command: `python -m training.bench zoom {' '.join(sys.argv[1:] if argv is None else argv)}` (part of `make bench`). "
        f"A roof and a tree canopy ({', '.join(f'{c}{i:02d}' for _, c, i in SCENES)}): the {CROP}² HR window of highest "
        f"gradient energy, each panel enlarged {ZOOM}× with nearest neighbour (one LR pixel = {SCALE * ZOOM} screen "
        f"pixels); LCMSR with seed 0; the quality bench's protocol (training/bench/zoom.py)."
        + (f" {'; '.join(missing)}." if missing else ""), "",
        f"![{', '.join(label for label, _ in cols)} at ×4: zoomed crops of a roof and a tree canopy]({png.name})", ""])
    with open(args.out, "a", encoding="utf-8") as f:
        f.write(text)
    log.info("wrote %s and appended its section to %s", png, args.out)
    return 0
