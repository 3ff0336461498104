"""One-pass activation capture with forward hooks, and the small runner every metric shares.

Convention (papers.md caveat, pitfall 3): the residual stream is read with hooks on the decoder layers, never
from ``output_hidden_states``. Point ``l`` is the input of layer ``l``; point ``L`` is the output of the last
layer *before* the final norm. With sub-layers, the point between attention and MLP of layer ``l`` is
``input_l + attention update_l`` (the output of the family's ``attention_out`` module, so Gemma's post-norms and
OPT's fc2 are handled by the architecture data).

``capture_batch`` runs the stock model forward once and stops right after the last layer (no final norm or
``lm_head``). It records each layer's input and **every** positional and keyword argument the model passed to
it (pitfall 7: ``position_embeddings``, per-layer masks, ``position_ids``, ...). ``run_layers`` replays any range
of layers from a recorded input with those arguments, skipping removed layers; ``tail_logits`` applies the final
norm, OPT's ``project_out``, ``lm_head`` and Gemma's logit soft-capping; ``nll_sum`` turns that into a loss.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F

from hf_layerprune.architectures.base import get_submodule


class _StopForward(Exception):
    """Raised by the hook on the last layer: nothing after it is needed."""


def layer_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@dataclass
class BatchCapture:
    """One calibration micro-batch: ids, the recorded arguments of every layer, and residual-stream points."""

    ids: torch.Tensor
    args: list[tuple] = field(default_factory=list)  # extra positional arguments per layer (usually empty)
    kwargs: list[dict] = field(default_factory=list)  # every keyword argument per layer
    inputs: list[torch.Tensor] = field(default_factory=list)  # points 0..L (see module docstring)
    mids: list[torch.Tensor] | None = None  # point between attention and MLP of each layer (sub-layers only)

    def points(self) -> list[torch.Tensor]:
        """[h_0 .. h_L], or [h_0, m_0, h_1, m_1, ..., h_L] when sub-layer points were captured."""
        if self.mids is None:
            return list(self.inputs)
        out: list[torch.Tensor] = []
        for h, m in zip(self.inputs, self.mids):
            out += [h, m]
        return out + [self.inputs[-1]]


@contextmanager
def record_mids(layers, arch, inputs: list, store: dict[int, torch.Tensor]) -> Iterator[None]:
    """Record the point between attention and MLP of each layer into `store`: its input ``inputs[i]`` (filled
    before the layer runs) plus the attention residual update (output of ``arch.attention_out``). The sum is
    taken in the hook, so the update itself is not kept alive beside it."""
    handles = []
    for i, layer in enumerate(layers):
        def hook(module, args, out, i=i):
            hidden = inputs[i]
            store[i] = hidden + layer_output(out).detach().view_as(hidden)
        handles.append(get_submodule(layer, arch.attention_out).register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def point_count(num_layers: int, sublayers: bool) -> int:
    """Residual points of a capture: h_0..h_L, plus the mid point of every layer with sub-layers (BatchCapture.points)."""
    return 2 * num_layers + 1 if sublayers else num_layers + 1


def capture_rows(model, num_points: int, seq_len: int, wanted: int) -> int:
    """Sequences per capture micro-batch: at most `wanted`, and few enough that the residual points one capture
    holds at once (`num_points` x rows x `seq_len` x hidden) fit in ``points_budget``."""
    embed = model.get_input_embeddings().weight
    row = num_points * seq_len * embed.shape[-1] * embed.element_size()
    return max(1, min(wanted, points_budget(model) // max(row, 1)))


def points_budget(model) -> int:
    """Bytes of residual points one capture may hold: max(256 MiB, an eighth of the weights)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return max(POINTS_BUDGET, weights // 8)


POINTS_BUDGET = 256 * 2**20


def capture_batch(model, arch, ids: torch.Tensor, *, sublayers: bool = False) -> BatchCapture:
    """Run the model on `ids` once (no final norm, no lm_head) and record every layer's input and arguments."""
    layers = arch.get_layers(model)
    cap = BatchCapture(ids=ids)
    mids: dict[int, torch.Tensor] = {}

    def pre_hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        cap.inputs.append(hidden.detach())
        cap.args.append(tuple(args[1:]))
        cap.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})

    def last_hook(module, args, kwargs, out):
        cap.inputs.append(layer_output(out).detach())
        raise _StopForward

    with ExitStack() as stack:
        for layer in layers:
            stack.callback(layer.register_forward_pre_hook(pre_hook, with_kwargs=True).remove)
        stack.callback(layers[len(layers) - 1].register_forward_hook(last_hook, with_kwargs=True).remove)
        if sublayers:
            stack.enter_context(record_mids(layers, arch, cap.inputs, mids))
        try:
            model(input_ids=ids, use_cache=False)
        except _StopForward:
            pass
    if sublayers:
        cap.mids = [mids[i] for i in range(len(layers))]
    return cap


def layer_forward(layer, hidden: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    return layer_output(layer(hidden, *args, **kwargs))


def run_layers(
    layers,
    cap: BatchCapture,
    hidden: torch.Tensor,
    start: int = 0,
    *,
    skip: Iterable[int] = (),
    on_input: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Layers ``start..L-1`` on `hidden` (the input of layer `start`) with the recorded arguments; `skip`
    layers pass their input through. ``on_input(l, h)`` sees the input of every layer, and of ``L`` at the end."""
    skip = set(skip)
    for idx in range(start, len(layers)):
        if on_input is not None:
            on_input(idx, hidden)
        if idx not in skip:
            hidden = layer_forward(layers[idx], hidden, cap.args[idx], cap.kwargs[idx])
    if on_input is not None:
        on_input(len(layers), hidden)
    return hidden


@contextmanager
def zeroed_sublayers(model, arch, kind: str, indices: Iterable[int]) -> Iterator[None]:
    """Skip the attention (`kind="attention"`) or MLP (`"mlp"`) sub-layer of the given layers: a forward hook
    replaces the output of ``attention_out`` / ``mlp_out`` (the residual update) with zeros."""
    path = arch.attention_out if kind == "attention" else arch.mlp_out
    layers = arch.get_layers(model)

    def zero(module, args, out):
        if isinstance(out, tuple):
            return (torch.zeros_like(out[0]),) + tuple(out[1:])
        return torch.zeros_like(out)

    handles = [get_submodule(layers[i], path).register_forward_hook(zero) for i in sorted(set(indices))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class PassThrough(torch.nn.Module):
    """Stands in for a removed decoder layer inside the stock forward: returns its input."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextmanager
def skipped_units(model, arch, granularity: str, units: Iterable[int]) -> Iterator[None]:
    """The stock model with `units` skipped: layers swapped for PassThrough (block) or sub-layers zeroed."""
    units = sorted(set(units))
    if granularity != "block":
        with zeroed_sublayers(model, arch, granularity, units):
            yield
        return
    layers = arch.get_layers(model)
    saved = {i: layers[i] for i in units}
    try:
        for i in units:
            layers[i] = PassThrough()
        yield
    finally:
        for i, layer in saved.items():
            layers[i] = layer


def tail_logits(model, arch, hidden: torch.Tensor) -> torch.Tensor:
    """Logits from the residual stream after the last layer: final norm, OPT's project_out, lm_head, soft-cap."""
    norm = get_submodule(model, arch.final_norm)
    if norm is not None:
        hidden = norm(hidden)
    project_out = getattr(get_submodule(model, arch.final_norm.rpartition(".")[0]), "project_out", None)
    if project_out is not None:
        hidden = project_out(hidden)
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def nll_sum(model, arch, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token negative log-likelihood (fp32) of `ids` given the final residual stream `hidden`.

    One sequence at a time so that only one [T, vocab] block of logits exists at once."""
    total = hidden.new_zeros((), dtype=torch.float32)
    for row in range(hidden.shape[0]):
        logits = tail_logits(model, arch, hidden[row : row + 1])[0, :-1].float()
        total = total + F.cross_entropy(logits, ids[row, 1:].to(logits.device), reduction="sum")
    return total


def predicted_tokens(ids: torch.Tensor) -> int:
    return ids.shape[0] * (ids.shape[1] - 1)


# ----------------------------------------------------------------------------------------------- statistics


def angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(1/π)·arccos(cos(a, b)) over the last dimension, computed as 2·atan2(|â−b̂|, |â+b̂|)/π in float64:
    exactly 0 for identical vectors, accurate near 0 where arccos is not."""
    a = F.normalize(a.double(), dim=-1)
    b = F.normalize(b.double(), dim=-1)
    return 2 * torch.atan2((a - b).norm(dim=-1), (a + b).norm(dim=-1)) / math.pi


class ResidualStats:
    """Accumulates, over calibration data, for every pair (i, j) of residual-stream points:

    - ``cos_mean[i, j]``: mean over all tokens of cos(x_i, x_j) (fp32 accumulation);
    - ``angular_mean[i, j]``: mean over samples of the angular distance at the last token (Gromov et al.).

    One Gram matrix per chunk of tokens gives every pair at once, so the cost is a few percent of a forward.
    """

    def __init__(self, num_points: int, chunk_tokens: int = 1024) -> None:
        self.num_points = num_points
        self.chunk_tokens = chunk_tokens
        self.cos_sum = torch.zeros(num_points, num_points, dtype=torch.float64)
        self.angle_sum = torch.zeros(num_points, num_points, dtype=torch.float64)
        self.tokens = 0
        self.samples = 0

    def add(self, points: list[torch.Tensor]) -> None:
        assert len(points) == self.num_points
        batch, length = points[0].shape[:2]
        for row in range(batch):
            for start in range(0, length, self.chunk_tokens):
                x = torch.stack([p[row, start : start + self.chunk_tokens].float() for p in points])  # K, t, H
                flat = F.normalize(x, dim=-1).transpose(0, 1)  # t, K, H
                self.cos_sum += torch.einsum("tkh,tjh->kj", flat, flat).double().cpu()
        self.tokens += batch * length
        last = torch.stack([p[:, -1] for p in points], dim=1)  # B, K, H
        self.angle_sum += angular_distance(last.unsqueeze(2), last.unsqueeze(1)).sum(0).cpu()
        self.samples += batch

    def reduce(self) -> "ResidualStats":
        """Sum the statistics of every rank's share of the calibration set (float64; no-op in one process)."""
        from hf_layerprune.runtime import distributed

        if distributed.is_distributed():
            self.cos_sum = distributed.all_sum(self.cos_sum)
            self.angle_sum = distributed.all_sum(self.angle_sum)
            self.tokens, self.samples = (int(v) for v in distributed.all_sum_floats([self.tokens, self.samples]))
        return self

    @property
    def cos_mean(self) -> torch.Tensor:
        return self.cos_sum / max(self.tokens, 1)

    @property
    def angular_mean(self) -> torch.Tensor:
        return self.angle_sum / max(self.samples, 1)


# ----------------------------------------------------------------------------------------------- parameters


def unit_parameters(layer, arch, granularity: str) -> list[torch.nn.Parameter]:
    """Weights of one unit: the whole layer (block); the attention module and its output module (attention);
    the rest of the layer's weights except normalisation layers, plus ``mlp_out`` (mlp: covers OPT's fc1/fc2)."""
    if granularity == "block":
        return list(layer.parameters())
    attention = {id(p) for path in {arch.attention, arch.attention_out} for p in get_submodule(layer, path).parameters()}
    if granularity == "attention":
        return [p for p in layer.parameters() if id(p) in attention]
    mlp_out = {id(p) for p in get_submodule(layer, arch.mlp_out).parameters()}
    out = []
    for module in layer.modules():
        is_norm = "norm" in type(module).__name__.lower()
        for p in module.parameters(recurse=False):
            if id(p) not in attention and (not is_norm or id(p) in mlp_out):
                out.append(p)
    return out
