"""Residual-stream activations for healing, read with forward hooks (never `output_hidden_states`).

Point convention (same as scoring): point ``i < L`` is the input of decoder layer ``i``; point ``L`` is the
output of the last layer *before* the final norm. For a removed block ``a..b`` of the base model, the block's
input is base point ``a`` and its output base point ``b + 1``.

- ``capture(model, ids, points=..., modules=...)``: one forward that records the requested points and the outputs
  of some modules (a ``down_proj``, the input embedding), and stops after the deepest one needed.
- ``iter_capture``: the same over micro-batches.
- ``recording(model, points, detach=...)``: a context in which every forward records those points (with their
  gradient when ``detach=False``: `distill`'s intermediate-state loss), and runs to the end.
- ``layer_call(model, j, ids)``: the exact positional/keyword arguments the stock forward passes to layer ``j``
  (position embeddings, per-layer-type masks, ...), found cheaply by making layers ``< j`` pass-through.
- ``check_additive``: proves numerically that the stream after a module is ``rest + module output``, so that a
  correction of that output is a correction of the residual stream (fails for post-norm layers: OPT-350m).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterable, Iterator

import torch

from hf_layerprune.architectures import get_architecture
from hf_layerprune.runtime.errors import UnsupportedModel


class _Stop(Exception):
    """Raised by a hook once everything needed has been recorded."""


class _PassThrough(torch.nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def _hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _out(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def layers_of(model):
    return get_architecture(model.config).get_layers(model)


@contextmanager
def recording(model, points: Iterable[int], *, detach: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Within the context, each forward of `model` stores residual-stream point i in the yielded dict (point < L:
    the input of layer i; point L: the last layer's output, before the final norm). Nothing stops the forward."""
    layers = layers_of(model)
    n = len(layers)
    points = sorted(set(points))
    if any(p < 0 or p > n for p in points):
        raise ValueError(f"points {points} out of range for {n} layers")
    got: dict[int, torch.Tensor] = {}
    keep = (lambda t: t.detach()) if detach else (lambda t: t)  # noqa: E731

    def record_input(i):
        def hook(module, args, kwargs):
            got[i] = keep(_hidden(args, kwargs))
        return hook

    def record_last(module, args, output):
        got[n] = keep(_out(output))

    with ExitStack() as stack:
        for i in points:
            if i < n:
                stack.callback(layers[i].register_forward_pre_hook(record_input(i), with_kwargs=True).remove)
            else:
                stack.callback(layers[n - 1].register_forward_hook(record_last).remove)
        yield got


@torch.no_grad()
def capture(
    model, ids: torch.Tensor, *, points: Iterable[int] = (), modules: dict[str, tuple[torch.nn.Module, int]] | None = None
) -> dict[str, dict]:
    """One forward on a batch of `ids`: {"points": {i: [B, T, d]}, "modules": {label: [B, T, d]}}.

    `modules` maps a label to (module, point after which its output exists): (down_proj of layer l, l + 1) or
    (input embedding, 0). Outputs are detached, in the model's dtype; the forward stops after the deepest one."""
    layers = layers_of(model)
    n = len(layers)
    points, modules = sorted(set(points)), dict(modules or {})
    if any(p < 0 or p > n for p in points) or any(not 0 <= depth <= n for _, depth in modules.values()):
        raise ValueError(f"points {points} out of range for {n} layers")
    deepest = max(points + [depth for _, depth in modules.values()])
    out: dict[str, dict] = {"points": {}, "modules": {}}
    shape = tuple(ids.shape)

    def record_module(label):
        def hook(module, args, output):
            out["modules"][label] = _out(output).detach().reshape(*shape, -1)
        return hook

    def stop(*_):
        raise _Stop

    with ExitStack() as stack:
        out["points"] = stack.enter_context(recording(model, points))
        for label, (module, _) in modules.items():
            stack.callback(module.register_forward_hook(record_module(label)).remove)
        if deepest < n:
            stack.callback(layers[deepest].register_forward_pre_hook(stop).remove)
        else:  # registered after recording's hook on the same layer, so it runs after it
            stack.callback(layers[n - 1].register_forward_hook(stop).remove)
        try:
            model(input_ids=ids.to(_device(model)), use_cache=False)
        except _Stop:
            pass
    return out


def iter_capture(model, ids: torch.Tensor, batch_size: int, **what) -> Iterator[tuple[torch.Tensor, dict]]:
    """(ids batch, capture) for each micro-batch of `ids`."""
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        yield batch, capture(model, batch, **what)


@torch.no_grad()
def layer_call(model, j: int, ids: torch.Tensor) -> tuple[tuple, dict]:
    """(extra positional args, keyword args) that the stock forward passes to decoder layer `j` for `ids`."""
    layers = layers_of(model)
    saved = {i: layers[i] for i in range(j)}
    got: dict[str, Any] = {}

    def grab(module, args, kwargs):
        got["args"] = tuple(args[1:])
        got["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Stop

    handle = layers[j].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for i in saved:
            layers[i] = _PassThrough()
        model(input_ids=ids.to(_device(model)), use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
        for i, layer in saved.items():
            layers[i] = layer
    return got["args"], got["kwargs"]


@torch.no_grad()
def check_additive(model, module: torch.nn.Module, point: int, ids: torch.Tensor, where: str, method: str) -> None:
    """Raise unless adding a vector to `module`'s output adds exactly that vector to residual-stream `point`."""
    probe = ids[:1, : min(ids.shape[1], 16)]
    base = capture(model, probe, points=[point])["points"][point]
    delta = torch.randn(base.shape[-1], generator=torch.Generator().manual_seed(0)).to(base)
    handle = module.register_forward_hook(lambda m, a, out: out + delta.to(out.dtype))
    try:
        moved = capture(model, probe, points=[point])["points"][point]
    finally:
        handle.remove()
    tol = 1e-3 if base.dtype == torch.float32 else 5e-2
    if not torch.allclose((moved - base).float(), delta.float().expand_as(base), atol=tol * (1 + delta.abs().max().item())):
        raise UnsupportedModel(
            f"--heal {method} cannot fold into {where} of {model.config.model_type}: the residual stream is not "
            f"'rest + its output' there (a norm or position term follows it); use lora or replace"
        )


def _device(model) -> torch.device:
    return next(model.parameters()).device
