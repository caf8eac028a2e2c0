"""Named feature taps: capture submodule outputs by name with forward hooks.

``with FeatureTaps(model, ["cascades.0.conv.2"]) as taps: model(...); taps["cascades.0.conv.2"]``

The model's forward signature never changes, so plain inference pays nothing. Names are
resolved on the unwrapped module (DDP's ``module.`` prefix and torch.compile's ``_orig_mod.``
are stripped), and an unknown name fails with the list of valid ones.

``capture`` (a KD method's :meth:`~raykd.distill.base.KDMethod.capture`) turns each output into
``(output passed on, what is kept)`` as the tap fires, so a reduced summary can be kept instead
of the full map and its gradient fused with the network's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from raykd.errors import ConfigError


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None)  # DistributedDataParallel
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class FeatureTaps:
    def __init__(
        self,
        model: nn.Module,
        names: Iterable[str],
        detach: bool = False,
        capture: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.model = unwrap(model)
        self.names = list(dict.fromkeys(names))
        self.detach = detach
        self.capture = capture
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list = []
        modules = dict(self.model.named_modules())
        missing = [n for n in self.names if n not in modules]
        if missing:
            groups = getattr(self.model, "tap_groups", None)
            valid = [n for g in groups() for n in g] if callable(groups) else list(modules)[1:]
            raise ConfigError(
                f"unknown feature tap(s) {missing} for {type(self.model).__name__}; "
                f"valid taps look like {valid[:3]} ... {valid[-1:] if valid else ''}"
            )
        self._modules = {n: modules[n] for n in self.names}

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inp, out: torch.Tensor) -> torch.Tensor | None:
            passed, kept = self.capture(out) if self.capture else (out, out)
            self.features[name] = kept.detach() if self.detach else kept
            return None if passed is out else passed  # a returned tensor replaces the output

        return hook

    def __enter__(self) -> FeatureTaps:
        self.features = {}
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self._modules.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.features[name]
