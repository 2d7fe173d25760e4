"""The registry of SR methods: one engine.registry.base.Method per file, listed here once.

Everything that needs to know a method (the CLI, Processing, the dock, the card checks, the backends,
training, export and the bench) asks this registry; no other file spells a method's name. Adding a
method is one new file beside these and one line in REGISTRY. The order is the Processing enum's and
the CLI's; the first is the default.
"""
from __future__ import annotations

from .base import Method
from .bicubic import BICUBIC
from .e2diffsr import E2DIFFSR
from .lcmsr import LCMSR
from .regression import REGRESSION

REGISTRY: dict[str, Method] = {m.name: m for m in (LCMSR, E2DIFFSR, REGRESSION, BICUBIC)}
METHODS = tuple(REGISTRY)
LEARNED = tuple(name for name, m in REGISTRY.items() if m.learned)
STOCHASTIC = tuple(name for name, m in REGISTRY.items() if m.stochastic)
MAX_STEPS = max(m.max_steps for m in REGISTRY.values())  # the most sampler steps of any method (a card may allow fewer)
