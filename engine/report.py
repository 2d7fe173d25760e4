"""The evaluation report (engine.evaluate computes it): the scores of each result per band and
overall, and its three renderings: a fixed-width text table (the CLI, the Processing log), JSON (the
CLI's --json) and an HTML page (--html, OUTPUT_HTML)."""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field

import numpy as np

from . import metrics

METRICS = ("psnr", "ssim", "ergas", "sam", "consistency_psnr", "hf_ratio", "lsd", "lattice", "lattice_hr") + metrics.CLASSES
HEADINGS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "ergas": "ERGAS", "sam": "SAM (°)",
            "consistency_psnr": "Consistency PSNR (dB)", "hf_ratio": "HF ratio", "lsd": "LSD (dB)",
            "lattice": "Lattice (dB)", "lattice_hr": "Reference's lattice (dB)",
            "improvement": "Improvement", "omission": "Omission", "hallucination": "Hallucination"}
SHORT = {"psnr": "PSNR", "ssim": "SSIM", "ergas": "ERGAS", "sam": "SAM", "consistency_psnr": "cons.PSNR",
         "hf_ratio": "HF ratio", "lsd": "LSD", "lattice": "lattice", "lattice_hr": "HR lattice", "improvement": "improv.", "omission": "omiss.", "hallucination": "halluc."}


@dataclass
class Scores:
    """The metrics of one SR result: per band (in band order) and overall. The correctness shares
    are overall only (NaN per band); ``classes`` is the per-pixel class map (engine.metrics)."""

    label: str
    bands: list[dict[str, float]]
    overall: dict[str, float]
    classes: np.ndarray | None = field(default=None, repr=False)


@dataclass
class Report:
    mode: str  # "reference" or "degradation"
    reference: str
    band_numbers: list[int]
    band_names: list[str]
    scale: float | None
    data_range: float
    border: int
    rows: list[Scores]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # shown in every report: the comparison may mislead
    html: str | None = None
    difference: str | None = None
    correctness: str | None = None

    @property
    def main(self) -> Scores:
        """The SR raster's (reference mode) or the method's (degradation mode) scores."""
        return self.rows[0]


def fmt(value: float, key: str) -> str:
    if math.isnan(value):
        return "—"
    if math.isinf(value):
        return "∞"
    if key in metrics.CLASSES:
        return f"{value:.3f}"
    return f"{value:.4f}" if key in ("ssim", "hf_ratio") else f"{value:.2f}"


def band_label(report: Report, i: int) -> str:
    name = report.band_names[i]
    return f"band {report.band_numbers[i]}" + (f" ({name})" if name else "")


def render_text(report: Report) -> str:
    """A compact fixed-width table: one line per result and band, then the overall line."""
    widths = [max(len(r.label) for r in report.rows) + 2, 10] + [11] * len(METRICS)
    head = ["method", "band"] + [SHORT[k] for k in METRICS]
    lines = [f"warning: {w}" for w in report.warnings]
    lines.append("".join(t.ljust(w) if i < 2 else t.rjust(w) for i, (t, w) in enumerate(zip(head, widths))))
    for row in report.rows:
        for label, values in [(str(b), row.bands[i]) for i, b in enumerate(report.band_numbers)] + [("overall", row.overall)]:
            cells = [row.label, label] + [fmt(values[k], k).replace("—", "-").replace("∞", "inf") for k in METRICS]
            lines.append("".join(t.ljust(w) if i < 2 else t.rjust(w) for i, (t, w) in enumerate(zip(cells, widths))))
    return "\n".join(lines)


def json_value(value: float) -> float | str | None:
    """NaN (not available) as null, infinity (identical images) as the string "inf"."""
    if math.isnan(value):
        return None
    return "inf" if math.isinf(value) else value


def render_json(report: Report) -> str:
    def values(d):
        return {k: json_value(d[k]) for k in METRICS}

    return json.dumps({
        "mode": report.mode, "reference": report.reference, "scale": report.scale,
        "data_range": json_value(report.data_range),
        "border": report.border, "notes": report.notes, "warnings": report.warnings, "html": report.html, "difference": report.difference,
        "correctness": report.correctness,
        "results": [{"method": r.label, "overall": values(r.overall),
                     "bands": [{"band": b, **values(v)} for b, v in zip(report.band_numbers, r.bands)]}
                    for r in report.rows]}, indent=2)


def render_html(report: Report) -> str:
    esc = html.escape
    heads = "".join(f"<th>{esc(HEADINGS[k])}</th>" for k in METRICS)

    def cells(values):
        return "".join(f"<td>{esc(fmt(values[k], k))}</td>" for k in METRICS)

    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'><title>LatentSR evaluation</title>",
             "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin-bottom:1em}"
             "th,td{border:1px solid #999;padding:3px 8px}td{text-align:right}td.l{text-align:left}"
             "tr.overall{font-weight:bold}p.warning{color:#a00}</style></head><body>",
             "<h2>LatentSR evaluation</h2>",
             f"<p>Reference: {esc(report.reference)}<br>Mode: {esc(report.mode)}"
             + (f"; scale {report.scale:g}" if report.scale else "") + "</p>"]
    parts += [f"<p class='warning'><b>Warning:</b> {esc(w)}</p>" for w in report.warnings]
    if len(report.rows) > 1:
        parts.append(f"<h3>Overall</h3><table><tr><th>Method</th>{heads}</tr>")
        parts += [f"<tr><td class='l'>{esc(r.label)}</td>{cells(r.overall)}</tr>" for r in report.rows]
        parts.append("</table>")
    for r in report.rows:
        parts.append(f"<h3>{esc(r.label)}</h3><table><tr><th>Band</th>{heads}</tr>")
        parts += [f"<tr><td class='l'>{esc(band_label(report, i))}</td>{cells(v)}</tr>" for i, v in enumerate(r.bands)]
        parts.append(f"<tr class='overall'><td class='l'>overall</td>{cells(r.overall)}</tr></table>")
    parts.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in report.notes) + "</ul>")
    parts.append("<p>— not available. PSNR and SSIM use the data range; ERGAS is Wald's (100/scale × relative RMSE); "
                 "SAM is the mean spectral angle; the consistency PSNR compares downsample(SR) with the LR; the HF ratio "
                 "compares the energy above 0.125 cycles/pixel (below 1: blurrier than the reference); LSD is the log-spectral "
                 "distance of the band-mean image to the reference's in 24 radial bins of 0.125–0.5 cycles/pixel (0: the "
                 "reference's spectrum; blur and noise raise it); improvement, omission and hallucination are the shares of "
                 "the classified pixels (ESA opensr-test's definitions with the L1 distance; overall only).</p></body></html>")
    return "\n".join(parts)
