"""Regression: the conditioning net's latent decoded as is (deterministic), one ONNX graph."""
from __future__ import annotations

from .base import Method

REGRESSION = Method("regression", "Regression (deterministic decoder)", "Regression", roles=("condition",),
                    fused_graph="regression")
