"""Closed-form compensation folded into existing weights: `bias` (Siddiqui), `linear` (ReplaceMe), `projection`
(GradMAP-style). No module is added; the output is the stock architecture.

The algebra (row vectors, torch ``Linear``: ``y = x Wᵀ + b``). Take a removed block ``a..b``; in the pruned model
the residual stream at the cut is ``h = r + y`` where ``y`` is the output of the *fold site* and ``r`` the rest:

- site = ``down_proj`` of the kept layer before the block (``y`` = that layer's MLP update, ``r`` = its input
  plus its attention update), or, when the block starts at layer 0, the input embedding (``r`` = 0, or OPT's
  learned positions);
- target = the base model's block output ``Y`` (base point ``b + 1``) on the same tokens;
- the missing update is ``E = Y − h``.

The correction is ``y ↦ y (I + Δ) + c`` so the stream becomes ``h + yΔ + c``:

- ``bias``: ``Δ = 0``, ``c = E[E]`` (the block's mean update as seen by the pruned model);
- ``linear``: ``c = 0``, ``Δ = argmin ‖yΔ − E‖² + λ‖Δ‖²`` from float64 accumulators ``yᵀy`` and ``yᵀE``
  (ReplaceMe's fit of ``T = I + Δ`` on the MLP output with the attention residual held fixed; the ridge pulls
  ``T`` towards the identity, i.e. towards no correction; ``rank=k`` gives the reduced-rank-regression optimum);
- ``projection``: the same fit at the kept layer(s) whose output drifts most from the base model's.

Fusion is exact: ``down_proj``: ``W ← (I + Δ)ᵀ W``, ``b ← b (I + Δ) + c``; embedding: ``E ← E (I + Δ) + c``.
Every fold is checked numerically first (`check_additive`: the stream after the site really is ``r + y``, false
for post-norm layers) and after (fused output == hooked output on a probe batch). Several removed blocks are
healed one after another, each fitted on the model already corrected for the earlier ones.

Long module: the three closed-form healers (bias, linear, projection) share the fold sites, the additivity
check and the fitting code; one module keeps their common guarantees (exact fold, checked numerically) together.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from hf_layerprune.runtime import distributed
from hf_layerprune.surgery.base_view import as_base
from hf_layerprune.architectures import get_architecture
from hf_layerprune.architectures.base import get_submodule
from hf_layerprune.runtime.errors import ConfigError, StageError, UnsupportedModel
from hf_layerprune.healing.activations import capture, check_additive
from hf_layerprune.runtime.registry import option
from hf_layerprune.healing.base import HealContext, HealOptions, contiguous_runs, options_record
from hf_layerprune.healing.training import lm_loss

# ------------------------------------------------------------------------------------------------ corrections


@dataclass
class Correction:
    """``y ↦ y + y·delta + bias`` on the output of the module at `path` (a Linear or an Embedding)."""

    path: str
    delta: torch.Tensor | None = None  # [d, d] float64
    bias: torch.Tensor | None = None  # [d] float64

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        out = y.double()
        if self.delta is not None:
            out = out + out @ self.delta.to(out.device)
        if self.bias is not None:
            out = out + self.bias.to(out.device)
        return out.to(y.dtype)

    @contextmanager
    def hooked(self, model) -> Iterator[None]:
        """The correction applied explicitly by a forward hook (the reference that fusion must equal)."""
        handle = get_submodule(model, self.path).register_forward_hook(lambda m, a, out: self.apply(out))
        try:
            yield
        finally:
            handle.remove()

    @torch.no_grad()
    def fuse(self, model) -> None:
        """Fold into the weights. A bias needs the Linear to have one (see `enable_mlp_bias`)."""
        module = get_submodule(model, self.path)
        weight = module.weight
        if isinstance(module, torch.nn.Embedding):
            weight.copy_(self.apply(weight))  # each row is an output
            return
        if not isinstance(module, torch.nn.Linear):
            raise UnsupportedModel(f"cannot fold a correction into {self.path} ({type(module).__name__})")
        if self.delta is not None:
            t = torch.eye(weight.shape[0], dtype=torch.float64, device=weight.device) + self.delta.to(weight.device)
            weight.copy_((t.T @ weight.double()).to(weight.dtype))
        if module.bias is not None:
            module.bias.copy_(self.apply(module.bias))
        elif self.bias is not None:
            raise UnsupportedModel(f"{self.path} has no bias to fold the correction into")


class LeastSquares:
    """Float64 accumulators for ``min ‖XΔ − E‖² + λ‖Δ‖²`` and the mean of ``E``, fed batch by batch."""

    def __init__(self, dim: int, with_x: bool = True) -> None:
        self.xtx = torch.zeros(dim, dim, dtype=torch.float64) if with_x else None
        self.xte = torch.zeros(dim, dim, dtype=torch.float64) if with_x else None
        self.e_sum = torch.zeros(dim, dtype=torch.float64)
        self.count = 0

    def add(self, x: torch.Tensor, e: torch.Tensor) -> None:
        e = e.reshape(-1, e.shape[-1]).double().cpu()
        if self.xtx is not None:
            x = x.reshape(-1, x.shape[-1]).double().cpu()
            self.xtx += x.T @ x
            self.xte += x.T @ e
        self.e_sum += e.sum(0)
        self.count += e.shape[0]

    def reduce(self) -> "LeastSquares":
        """Sum every rank's accumulators (float64) in a multi-process launch; a no-op in one process."""
        if distributed.is_distributed():
            for name in ("xtx", "xte", "e_sum"):
                if getattr(self, name) is not None:
                    setattr(self, name, distributed.all_sum(getattr(self, name)))
            self.count = int(distributed.all_sum_floats([self.count])[0])
        return self

    def mean(self) -> torch.Tensor:
        return self.e_sum / max(self.count, 1)

    def solve(self, ridge: float, rank: int | None = None) -> torch.Tensor:
        """Δ; `ridge` is relative to the mean eigenvalue of XᵀX; `rank` keeps the best rank-k Δ (RRR)."""
        d = self.xtx.shape[0]
        lam = ridge * float(torch.trace(self.xtx)) / d
        delta = torch.linalg.solve(self.xtx + lam * torch.eye(d, dtype=torch.float64), self.xte)
        if rank is not None and rank < d:
            # reduced-rank regression: project onto the top right singular directions of the fitted values XΔ
            _, vecs = torch.linalg.eigh(delta.T @ self.xtx @ delta)
            top = vecs[:, -rank:]
            delta = delta @ top @ top.T
        return delta


# ------------------------------------------------------------------------------------------------ fold sites


@dataclass
class Site:
    """Where a correction is folded: `path` from the model root, and the stream `point` right after it."""

    path: str
    point: int
    description: str

    def module(self, model) -> torch.nn.Module:
        return get_submodule(model, self.path)


def fold_refusal(model) -> str | None:
    """Why no correction can be folded into `model`'s MLPs, or None: sparse MoE (no single down_proj), or a norm
    between the MLP and the residual stream (gemma2/3's post_feedforward_layernorm: the architecture's `mlp_out` is
    not the MLP itself), where `rest + output` does not hold and a fused correction would be normalised away."""
    arch = get_architecture(model.config)
    if not arch.down_proj:
        return f"{arch.model_type} has sparse MoE MLPs with no single down_proj to fold a correction into; use lora or replace"
    if arch.mlp_out != arch.mlp:
        return (f"{arch.model_type} normalises the MLP output ({arch.mlp_out}) before the residual stream, so a "
                f"correction cannot be folded into {arch.down_proj}; use absorb, lora or replace")
    return None


def down_site(model, layer: int) -> Site:
    arch = get_architecture(model.config)
    refusal = fold_refusal(model)
    if refusal:
        raise UnsupportedModel(refusal)
    return Site(f"{arch.layers}.{layer}.{arch.down_proj}", layer + 1, f"layer {layer} {arch.down_proj}")


def embedding_site(model, method: str) -> Site:
    arch = get_architecture(model.config)
    embed = get_submodule(model, arch.embed)
    head = model.get_output_embeddings()
    if head is not None and head.weight is embed.weight:
        raise ConfigError(
            f"--heal {method}: layer 0 is removed and the input embeddings are tied to lm_head, so there is no weight "
            f"to fold the correction into; keep layer 0 (--protect first) or use lora/replace"
        )
    return Site(arch.embed, 0, "input embeddings")


def site_for_block(model, block: list[int], kept: list[int], method: str) -> Site:
    """The fold site for removed base layers `block` (contiguous): the kept layer before it, else the embedding."""
    if block[0] == 0:
        return embedding_site(model, method)
    return down_site(model, kept.index(block[0] - 1))


# ------------------------------------------------------------------------------------------------ fitting


def fit_site(
    ctx: HealContext, site: Site, base_point: int, options: "ClosedFormOptions", *, mode: str
) -> Correction:
    """Fit the correction at `site` so that pruned point `site.point` matches base point `base_point`."""
    acc = None
    module = site.module(ctx.model)
    starts = list(range(0, len(ctx.train_ids), options.batch_size))
    for start in distributed.shard(starts):  # several processes: each fits its share of the batches
        batch = ctx.train_ids[start : start + options.batch_size]
        with ctx.as_base() as base:
            target = capture(base, batch, points=[base_point])["points"][base_point]
        got = capture(ctx.model, batch, points=[site.point], modules={"y": (module, site.point)})
        error = target.to(got["points"][site.point].device).double() - got["points"][site.point].double()
        if acc is None:
            acc = LeastSquares(error.shape[-1], with_x=mode != "bias")
        acc.add(got["modules"]["y"], error)
    if acc is None:  # a rank without batches adds zeros
        acc = LeastSquares(ctx.model.config.hidden_size, with_x=mode != "bias")
    acc.reduce()
    if mode == "bias":
        return Correction(site.path, bias=acc.mean())
    return Correction(site.path, delta=acc.solve(options.ridge, options.rank))


@torch.no_grad()
def fuse_checked(model, correction: Correction, point: int, probe: torch.Tensor) -> float:
    """Fuse, and check the fused model equals the hooked one at the stream point after the site."""
    probe = probe[: min(len(probe), 2)]
    with correction.hooked(model):
        want = capture(model, probe, points=[point])["points"][point].double()
    correction.fuse(model)
    got = capture(model, probe, points=[point])["points"][point].double()
    error = float((got - want).norm() / want.norm().clamp_min(1e-12))
    limit = 1e-4 if next(model.parameters()).dtype == torch.float32 else 2e-2
    if error > limit:
        raise StageError(f"fusing the correction into {correction.path} changed the result (relative error {error:.2e})")
    return error


@torch.no_grad()
def stream_mse(model, base_model, ids: torch.Tensor, pairs: list[tuple[int, int]], batch_size: int) -> list[float]:
    """Mean squared error between pruned point p and base point q for each (p, q) in `pairs`, on `ids`."""
    sums = [0.0] * len(pairs)
    count = 0
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        got = capture(model, batch, points=[p for p, _ in pairs])["points"]
        with as_base(base_model) as base:
            want = capture(base, batch, points=[q for _, q in pairs])["points"]
        for k, (p, q) in enumerate(pairs):
            sums[k] += float(((got[p].double() - want[q].to(got[p].device).double()) ** 2).sum())
        count += got[pairs[0][0]].numel()
    return [round(s / max(count, 1), 8) for s in sums]


# ------------------------------------------------------------------------------------------------ biases


def enable_mlp_bias(model, method: str = "bias", ctx: HealContext | None = None) -> list[str]:
    """Give the MLPs a bias through the family's config flag (Llama: ``mlp_bias``), zero-initialised so the
    outputs do not change and the saved checkpoint has exactly the keys stock transformers expects for the flag.
    Returns the parameter names added per layer ([] when down_proj already has a bias)."""
    arch = get_architecture(model.config)
    layers = arch.get_layers(model)
    if not arch.down_proj:
        raise UnsupportedModel(f"--heal {method} cannot add a bias to {arch.model_type}: its MLPs are sparse MoE blocks")
    if get_submodule(layers[0], arch.down_proj).bias is not None:
        return []
    flag = arch.mlp_bias_field
    no_bias = (
        f"--heal {method} is not possible for {arch.model_type}: its MLP output projection has no bias and the family "
        f"has no config flag that adds one; use --heal linear, lora or replace"
    )
    if flag is None or arch.mlp == arch.down_proj:
        raise UnsupportedModel(no_bias)
    mlp = get_submodule(layers[0], arch.mlp)
    config = copy.deepcopy(model.config)
    setattr(config, flag, True)
    try:
        with torch.device("meta"):
            probe = type(mlp)(config)  # what stock transformers builds (and loads) with the flag on
    except Exception:
        raise UnsupportedModel(no_bias) from None
    have = {name for name, _ in mlp.named_parameters()}
    added = sorted(name for name, _ in probe.named_parameters() if name not in have)
    down = arch.down_proj[len(arch.mlp) + 1 :]
    if f"{down}.bias" not in added or any(not name.endswith(".bias") for name in added):
        raise UnsupportedModel(no_bias)  # e.g. Mistral: MistralMLP ignores mlp_bias
    for layer in layers:
        block = get_submodule(layer, arch.mlp)
        for name in added:
            linear = get_submodule(block, name.rpartition(".")[0])
            if ctx is not None:
                ctx.protect(linear, ["bias"])  # the base has no bias there
            linear.bias = torch.nn.Parameter(
                torch.zeros(linear.weight.shape[0], dtype=linear.weight.dtype, device=linear.weight.device)
            )
    setattr(model.config, flag, True)
    return added


@contextmanager
def undo_unless_better(ctx: HealContext, sites: list[Site], options: "ClosedFormOptions", record: dict) -> Iterator[None]:
    """Keep the fused corrections only if they lower the held-out loss (`record` gets loss_before/loss_after).

    A least-squares fit on calibration text can generalise badly (measured: a 9-layer block of SmolLM2-135M),
    so the held-out `eval_ids` decide; the sites' parameters are restored otherwise (`reverted` in the record)."""
    saved = {s.path: ctx.snapshot(s.module(ctx.model)) for s in sites}
    record["loss_before"] = lm_loss(ctx.model, ctx.eval_ids)
    yield
    record["loss_after"] = lm_loss(ctx.model, ctx.eval_ids)
    if options.keep_if_better and record["loss_after"] > record["loss_before"]:
        with torch.no_grad():
            for site in sites:
                params = dict(site.module(ctx.model).named_parameters())
                for name, value in saved[site.path].items():
                    params[name].copy_(value)
        ctx.log(f"The correction raised the held-out loss ({record['loss_before']:.4f} -> {record['loss_after']:.4f}); undone")
        record.update(reverted=True, loss_after_fit=record["loss_after"], loss_after=lm_loss(ctx.model, ctx.eval_ids))


def finish_record(record: dict, start: float, options: "ClosedFormOptions", corrections: list[dict],
                  mse_before: list[float], mse_after: list[float], **extra) -> dict:
    """The rest of a closed-form healer's record (losses are filled by `undo_unless_better`)."""
    record.update(
        seconds=round(time.perf_counter() - start, 3),
        options=options_record(options),
        **extra,
        corrections=corrections,
        block_mse_before=mse_before,
        block_mse_after=mse_after,
        losses=[],
    )
    return record


# ------------------------------------------------------------------------------------------------ healers


@dataclass
class ClosedFormOptions(HealOptions):
    """ridge: λ relative to the mean eigenvalue of yᵀy (pulls T towards the identity = no correction).
    rank: keep only the best rank-k Δ (None: full rank). batch_size: sequences per forward pass."""

    ridge: float = option(1e-3, at_least=0)
    rank: int | None = option(None, at_least=1)
    batch_size: int = option(8, at_least=1)
    keep_if_better: bool = True  # undo the fused corrections when they raise the held-out loss


@dataclass
class ProjectionOptions(ClosedFormOptions):
    """layers: how many of the most-drifted kept layers get a compensation matrix."""

    ridge: float = option(1e-2, at_least=0)
    layers: int = option(1, at_least=1)


def _heal_blocks(ctx: HealContext, options: ClosedFormOptions, method: str, mode: str) -> dict:
    """bias / linear: one correction per removed contiguous block, fitted and fused in order."""
    start = time.perf_counter()
    ctx.require_base(method)
    removed, kept, num_before = ctx.removed_and_kept(method)
    blocks = contiguous_runs(removed)
    sites = [site_for_block(ctx.model, block, kept, method) for block in blocks]
    targets = [block[-1] + 1 for block in blocks]
    added = enable_mlp_bias(ctx.model, method, ctx) if mode == "bias" and any(s.point > 0 for s in sites) else []
    for site in sites:
        check_additive(ctx.model, site.module(ctx.model), site.point, ctx.train_ids, site.description, method)
    pairs = [(s.point, t) for s, t in zip(sites, targets)]
    mse_before = stream_mse(ctx.model, ctx.base_model, ctx.eval_ids, pairs, options.batch_size)
    corrections = []
    record: dict = {"method": method, "steps": 0, "tokens": int(ctx.train_ids.numel())}
    with undo_unless_better(ctx, sites, options, record):
        for block, site, target in zip(blocks, sites, targets):
            ctx.log(f"Fitting the {method} correction for removed layers {block[0]}-{block[-1]} into {site.description}")
            correction = fit_site(ctx, site, target, options, mode=mode)
            fusion_error = fuse_checked(ctx.model, correction, site.point, ctx.train_ids)
            corrections.append({
                "removed": block, "site": site.path, "fusion_error": fusion_error,
                **({"bias_norm": round(float(correction.bias.norm()), 6)} if correction.bias is not None else {}),
                **({"delta_norm": round(float(correction.delta.norm()), 6)} if correction.delta is not None else {}),
            })
        mse_after = stream_mse(ctx.model, ctx.base_model, ctx.eval_ids, pairs, options.batch_size)
    finish_record(record, start, options, corrections, mse_before, mse_after)
    if added:
        record["config_changes"] = {get_architecture(ctx.model.config).mlp_bias_field: True, "zero_biases_added": added}
    return record


def heal_bias(ctx: HealContext, options: ClosedFormOptions) -> dict:
    return _heal_blocks(ctx, options, "bias", "bias")


def heal_linear(ctx: HealContext, options: ClosedFormOptions) -> dict:
    return _heal_blocks(ctx, options, "linear", "linear")


@torch.no_grad()
def mean_shift(ctx: HealContext, kept: list[int], num_before: int, batch_size: int) -> list[float]:
    """Relative mean shift of each pruned stream point 1..L' against the base: ‖E[h − h_base]‖ / E‖h_base‖."""
    n = len(kept)
    base_points = [kept[j] if j < n else num_before for j in range(n + 1)]
    diff_sum = None
    norm_sum = torch.zeros(n + 1, dtype=torch.float64)
    count = 0
    for start in range(0, len(ctx.train_ids), batch_size):
        batch = ctx.train_ids[start : start + batch_size]
        got = capture(ctx.model, batch, points=range(n + 1))["points"]
        with ctx.as_base() as base:
            want = capture(base, batch, points=base_points)["points"]
        diffs = torch.stack([(got[j].double() - want[base_points[j]].to(got[j].device).double()).sum((0, 1)).cpu()
                             for j in range(n + 1)])
        diff_sum = diffs if diff_sum is None else diff_sum + diffs
        norm_sum += torch.tensor([float(want[base_points[j]].double().norm(dim=-1).sum()) for j in range(n + 1)])
        count += batch.numel()
    shift = (diff_sum / count).norm(dim=-1) / (norm_sum / count).clamp_min(1e-12)
    return [round(float(s), 6) for s in shift]


def heal_projection(ctx: HealContext, options: ProjectionOptions) -> dict:
    """GradMAP-style: compensate the kept layer(s) whose output drifts most from the base model."""
    start = time.perf_counter()
    method = "projection"
    ctx.require_base(method)
    _, kept, num_before = ctx.removed_and_kept(method)
    n = len(kept)
    shifts = mean_shift(ctx, kept, num_before, options.batch_size)
    candidates = sorted(range(1, n + 1), key=lambda j: -shifts[j])[: max(1, options.layers)]
    chosen = sorted(candidates)  # fit shallow first: deeper fits see the corrected stream
    sites = [down_site(ctx.model, j - 1) for j in chosen]
    for site in sites:
        check_additive(ctx.model, site.module(ctx.model), site.point, ctx.train_ids, site.description, method)
    targets = [kept[j] if j < n else num_before for j in chosen]
    pairs = [(s.point, t) for s, t in zip(sites, targets)]
    mse_before = stream_mse(ctx.model, ctx.base_model, ctx.eval_ids, pairs, options.batch_size)
    corrections = []
    record: dict = {"method": method, "steps": 0, "tokens": int(ctx.train_ids.numel())}
    with undo_unless_better(ctx, sites, options, record):
        for site, target in zip(sites, targets):
            ctx.log(f"Fitting the projection compensation of {site.description} (mean shift {shifts[site.point]:.4f})")
            correction = fit_site(ctx, site, target, options, mode="linear")
            fusion_error = fuse_checked(ctx.model, correction, site.point, ctx.train_ids)
            corrections.append({"layer": site.point - 1, "site": site.path, "fusion_error": fusion_error,
                                "delta_norm": round(float(correction.delta.norm()), 6)})
        mse_after = stream_mse(ctx.model, ctx.base_model, ctx.eval_ids, pairs, options.batch_size)
    return finish_record(record, start, options, corrections, mse_before, mse_after, mean_shift=shifts)
