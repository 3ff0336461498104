"""One copy of the weights: the unpruned model as a view over the pruned one.

Removing layers never changes the kept ones, so the pruned model and its base are two layer lists over one set of
modules. ``SharedBase(model)`` is taken before the cut: it remembers the full layer list (the removed layers stay
referenced here, held aside), the config and every ``layer_idx``. Then:

- ``protect(module)`` — copy-on-write, called by a healer *before* it changes a kept module: the module's current
  parameters are kept aside as the base's and the pruned model gets copies to change (only the touched modules are
  ever copied; ``names=[...]`` limits it to some parameters, e.g. a bias about to be added where there was none);
- ``with base.active() as model:`` — "run as base": the full layer list, the base config, the original
  ``layer_idx`` and the protected originals are swapped in (peft adapters that are not merged are disabled), and
  everything is swapped back on exit. Logits inside equal the unpruned model's exactly;
- ``restore()`` — undo everything for good (cut, config, changed parameters): the model is the unpruned one again,
  bit for bit. `auto` judges each candidate cut this way and `sweep` makes each depth this way, without a copy.

``as_base(base)`` accepts a ``SharedBase`` or a separate unpruned model (the Python API's ``base_model=``), so
healers and evaluation run either.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch

from hf_layerprune.architectures import get_architecture

Slot = tuple[torch.nn.Module, str]


def _layer_indices(layers: Iterable[torch.nn.Module]) -> list[tuple[torch.nn.Module, int]]:
    return [(m, m.layer_idx) for layer in layers for m in layer.modules() if isinstance(getattr(m, "layer_idx", None), int)]


def _slots(module: torch.nn.Module, names: Iterable[str] | None) -> list[Slot]:
    if names is not None:
        return [(module, name) for name in names]
    return [(owner, name) for owner in module.modules() for name in owner._parameters]


class SharedBase:
    """The unpruned model as it was when this view was taken, over the same modules (see the module doc)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.arch = get_architecture(model.config)
        self.layers = list(self.arch.get_layers(model))
        self.config_state = copy.deepcopy(model.config.__dict__)
        self.layer_idx = _layer_indices(self.layers)
        self.originals: dict[tuple[int, str], tuple[torch.nn.Module, str, torch.nn.Parameter | None]] = {}
        self._depth = 0

    # --------------------------------------------------------------------------------------------- copy-on-write

    def protect(self, module: torch.nn.Module, names: Iterable[str] | None = None) -> bool:
        """Keep `module`'s parameters (or just `names`) as the base's; the pruned model gets copies to change.
        Returns True when something was newly kept (the pruned model's values equal the originals then)."""
        fresh = False
        for owner, name in _slots(module, names):
            key = (id(owner), name)
            if key in self.originals:
                continue
            original = owner._parameters.get(name)
            self.originals[key] = (owner, name, original)
            if original is not None:
                owner._parameters[name] = torch.nn.Parameter(original.detach().clone(), requires_grad=original.requires_grad)
            fresh = True
        return fresh

    def original(self, owner: torch.nn.Module, name: str) -> torch.nn.Parameter | None:
        return self.originals[(id(owner), name)][2]

    def copied_bytes(self) -> int:
        """Bytes of the copies made for the pruned model (what copy-on-write cost)."""
        return sum(p.numel() * p.element_size() for _, _, p in self.originals.values() if p is not None)

    # --------------------------------------------------------------------------------------------- run as base

    @contextmanager
    def active(self) -> Iterator[torch.nn.Module]:
        """Inside: the model is the unpruned one (nested use is a no-op)."""
        if self._depth:
            self._depth += 1
            try:
                yield self.model
            finally:
                self._depth -= 1
            return
        model, config = self.model, self.model.config
        current_layers = self.arch.get_layers(model)
        current_idx = _layer_indices([*current_layers, *self.layers])
        current_config = copy.deepcopy(config.__dict__)
        current_params = [(owner, name, owner._parameters.get(name)) for owner, name, _ in self.originals.values()]
        adapters = [m for layer in self.layers for m in layer.modules()
                    if hasattr(m, "_disable_adapters") and not getattr(m, "merged", False) and not m._disable_adapters]
        self._set(torch.nn.ModuleList(self.layers), self.layer_idx, self.config_state,
                  [(owner, name, p) for owner, name, p in self.originals.values()])
        for m in adapters:
            m._disable_adapters = True
        self._depth = 1
        try:
            yield model
        finally:
            self._depth = 0
            for m in adapters:
                m._disable_adapters = False
            self._set(current_layers, current_idx, current_config, current_params)

    def restore(self) -> torch.nn.Module:
        """Undo the cut and every protected change for good; the view is empty afterwards (reusable)."""
        self._set(torch.nn.ModuleList(self.layers), self.layer_idx, self.config_state, list(self.originals.values()))
        self.originals.clear()
        return self.model

    def _set(self, layers, layer_idx, config_state: dict[str, Any], params) -> None:
        self.arch.set_layers(self.model, layers)
        for module, idx in layer_idx:
            module.layer_idx = idx
        self.model.config.__dict__.clear()
        self.model.config.__dict__.update(copy.deepcopy(config_state))
        for owner, name, p in params:
            if p is None and name not in owner._parameters:
                continue
            owner._parameters[name] = p


@contextmanager
def as_base(base) -> Iterator[Any]:
    """The unpruned model for the duration: a `SharedBase` run as base, or a separate model as it is."""
    if isinstance(base, SharedBase):
        with base.active() as model:
            yield model
    else:
        yield base


def protect(base, module: torch.nn.Module, names: Iterable[str] | None = None) -> bool:
    """`SharedBase.protect` when `base` is a view; nothing to do for a separate base model (False)."""
    return base.protect(module, names) if isinstance(base, SharedBase) else False


@contextmanager
def trial(model: torch.nn.Module) -> Iterator[SharedBase]:
    """Cut and heal `model` inside, as a reversible patch: the view is the base; on exit the model is restored."""
    view = SharedBase(model)
    try:
        yield view
    finally:
        view.restore()
