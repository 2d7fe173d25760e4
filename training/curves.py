"""The loss and validation-PSNR curves of a run as one PNG, drawn with Pillow."""
from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

from engine.registry import BICUBIC

WIDTH, HEIGHT, PAD = 900, 340, 48
COLOURS = ((31, 119, 180), (214, 39, 40), (120, 120, 120))


def _panel(draw: ImageDraw.ImageDraw, x0: int, title: str, series: list[tuple[str, list[tuple[float, float]]]], log_y: bool):
    w, h = WIDTH // 2 - PAD - 8, HEIGHT - 2 * PAD
    draw.rectangle([x0, PAD, x0 + w, PAD + h], outline=(0, 0, 0))
    draw.text((x0, 8), title, fill=(0, 0, 0))
    points = [(x, math.log10(y) if log_y else y) for _, s in series for x, y in s if not log_y or y > 0]
    if not points:
        return
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    xlo, xhi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    ylo, yhi = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    for value, label in ((ylo, ylo), (yhi, yhi)):
        text = f"{10 ** label:.3g}" if log_y else f"{label:.2f}"
        draw.text((x0 - PAD + 2, PAD + h - (value - ylo) / (yhi - ylo) * h - 6), text, fill=(0, 0, 0))
    draw.text((x0, PAD + h + 6), f"{xlo:g}", fill=(0, 0, 0))
    draw.text((x0 + w - 40, PAD + h + 6), f"{xhi:g}", fill=(0, 0, 0))
    for k, (name, s) in enumerate(series):
        pts = [(x0 + (x - xlo) / (xhi - xlo) * w, PAD + h - ((math.log10(y) if log_y else y) - ylo) / (yhi - ylo) * h)
               for x, y in s if not log_y or y > 0]
        colour = COLOURS[k % len(COLOURS)]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        if len(pts) < 40:
            for px, py in pts:
                draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        draw.text((x0 + 8, PAD + 6 + 14 * k), name, fill=colour)


def smooth(points: list[tuple[float, float]], window: int = 50) -> list[tuple[float, float]]:
    """Running mean over ``window`` points."""
    out, acc = [], []
    for x, y in points:
        acc.append(y)
        if len(acc) > window:
            acc.pop(0)
        out.append((x, sum(acc) / len(acc)))
    return out


def write(path: str | Path, loss: list[tuple[float, float]], val: list[list[float]]) -> None:
    """loss: (step, loss); val: (step, model PSNR, bicubic PSNR[, the stage's reference PSNR])."""
    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    _panel(draw, PAD, "training loss (running mean, log scale)", [("loss", smooth(loss))], log_y=True)
    _panel(draw, WIDTH // 2 + PAD, "validation PSNR (dB)",
           [("model", [(v[0], v[1]) for v in val]), (BICUBIC.name, [(v[0], v[2]) for v in val])]
           + ([("reference", [(v[0], v[3]) for v in val])] if val and len(val[0]) > 3 else []), log_y=False)
    img.save(path)
