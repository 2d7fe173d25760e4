"""What an SR method is, once: the type every entry of engine.registry is."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Method:
    """One SR method: its names, its step range, whether it samples, its networks and its ONNX graphs.

    ``roles`` are the networks its card entry names (``methods.<name>.<role>``) before the bundle's
    decoder; a method without roles is not learned and ``plain()`` makes it. A stochastic method draws
    its clean latent with ``sampler`` (engine.samplers: one signature for all) through the schedule that
    ``schedule(spec, steps)`` builds from its card entry ``spec`` (engine.card.MethodSpec);
    engine.latent.sample_latent calls it and blends the sample at a detail. A method with ``fused_graph``
    has a single-call ONNX graph for one step; ``fused_inputs`` are the inputs it takes beyond the tile's (the start noise)."""

    name: str  # the CLI's --method, the card's methods.<name>, the graph files' prefix
    label: str  # for lists of methods
    short: str  # for layer names
    stochastic: bool = False  # draws noise: seed, samples and detail matter
    default_steps: int = 0  # 0: no steps (when the model card does not say otherwise)
    max_steps: int = 0
    default_detail: float | None = None  # stochastic methods: the detail when the model card has no detail_default
    roles: tuple[str, ...] = ()
    sampler: Callable | None = None  # engine.samplers.sample_*(model, x, schedule, extra_args, noise)
    schedule: Callable[[object, int], object] | None = None  # (card entry: engine.card.MethodSpec, steps) -> the sampler's schedule
    fused_graph: str | None = None
    fused_inputs: tuple[str, ...] = ()
    new_spec: Callable[[], dict] | None = None  # the card entry's sampler fields of a freshly trained method (JSON)
    fused_problem: Callable | None = None  # why its card entry (engine.card.MethodSpec) cannot be fused, or None
    plain: Callable | None = None  # a method without networks: makes it (engine.methods.SRMethod)

    @property
    def learned(self) -> bool:
        """Whether it runs networks of a model bundle."""
        return bool(self.roles)

    def fuses(self, steps: int, detail: float) -> bool:
        """Whether its single-call graph computes a run of ``steps`` steps at ``detail``: it has one, the
        run takes at most one step, and it is deterministic or a full sample (detail 1)."""
        return self.fused_graph is not None and steps <= 1 and (not self.stochastic or detail == 1)

