"""Run a causal LM one decoder layer at a time, straight from its safetensors shards.

For models larger than the device (or with ``--offload``): only the non-layer weights (embeddings, final
norm, LM head) and ONE decoder layer are ever materialised; peak device memory is about one layer plus the
calibration activations.

How it stays family-agnostic: the model is built on the meta device (accelerate's ``init_empty_weights``, so
buffers such as rotary ``inv_freq`` are real) and its decoder layers are replaced by ``_Relay`` modules. One
forward of that skeleton records exactly what each layer receives (hidden states and every keyword argument:
masks per layer type, position embeddings, position ids… — pitfall 7) without running any layer. A layer is
then loaded from disk, fed the recorded inputs, and unloaded. The final norm and LM head run through the same
skeleton, with the last relay injecting the hidden state, so soft-capping, projections and tied heads come for
free.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from hf_layerprune.architectures import get_architecture
from hf_layerprune.runtime.errors import CheckpointError, UnsupportedModel
from hf_layerprune.surgery.checkpoint import LAYER_KEY
from hf_layerprune.surgery.layers import checkpoint_files, read_safetensors_header


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


class _Relay(nn.Module):
    """Stands in for decoder layer `index`: records its inputs, or injects a hidden state at the last layer."""

    def __init__(self, index: int, owner: "StreamedModel") -> None:
        super().__init__()
        self.index = index
        self._owner = [owner]  # a list, so the owner is not registered as a sub-module

    def forward(self, hidden_states, *args, **kwargs):
        owner = self._owner[0]
        if owner._record is not None:
            owner._record.append(kwargs)
        if owner._inject is not None and self.index == owner.num_layers - 1:
            return owner._inject
        return hidden_states


@dataclass
class LayerInputs:
    """What one batch gives every layer: the embedded input and each layer's keyword arguments."""

    input_ids: torch.Tensor
    hidden: torch.Tensor
    kwargs: list[dict[str, Any]]


class StreamedModel:
    def __init__(self, checkpoint: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.dir = Path(checkpoint)
        self.device = torch.device(device)
        self.config = AutoConfig.from_pretrained(self.dir)
        self.arch = get_architecture(self.config)
        self.num_layers = self.config.num_hidden_layers
        self._files = self._index_files()
        self.dtype = dtype or self._checkpoint_dtype()
        with init_empty_weights(include_buffers=False):
            skeleton = AutoModelForCausalLM.from_config(self.config, dtype=self.dtype)
        self.layers = list(self.arch.get_layers(skeleton))  # meta shells, materialised one at a time
        self.arch.set_layers(skeleton, nn.ModuleList([_Relay(i, self) for i in range(self.num_layers)]))
        self._record: list[dict] | None = None
        self._inject: torch.Tensor | None = None
        self._load_non_layer_weights(skeleton)
        self.skeleton = skeleton.to(self.device).eval()

    # ------------------------------------------------------------------------------------------- weights
    def _index_files(self) -> dict[str, tuple[Path, int, dict]]:
        out = {}
        for path in checkpoint_files(self.dir):
            header, data_start = read_safetensors_header(path)
            for key, info in header.items():
                if key != "__metadata__":
                    out[key] = (path, data_start, info)
        return out

    def _checkpoint_dtype(self) -> torch.dtype:
        kinds = {info["dtype"] for _, _, info in self._files.values()}
        return next((SAFETENSORS_DTYPES[k] for k in ("BF16", "F16", "F32") if k in kinds), torch.float32)

    def _tensors(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """Read exactly these tensors' bytes (pread, no mmap of whole shards), cast to the working dtype."""
        out = {}
        for key in keys:
            path, data_start, info = self._files[key]
            begin, end = info["data_offsets"]
            with open(path, "rb", buffering=0) as f:
                buf = bytearray(end - begin)
                f.seek(data_start + begin)
                f.readinto(buf)
            tensor = torch.frombuffer(buf, dtype=SAFETENSORS_DTYPES[info["dtype"]]) if buf else torch.empty(0)
            out[key] = tensor.reshape(info["shape"]).to(device=self.device, dtype=self.dtype if tensor.is_floating_point() else None)
        return out

    def _load_non_layer_weights(self, skeleton: nn.Module) -> None:
        keys = [k for k in self._files if not (LAYER_KEY.match(k) and k.startswith(self.arch.key_prefix))]
        state = self._tensors(keys)
        result = skeleton.load_state_dict(state, strict=False, assign=True)
        skeleton.tie_weights()
        missing = [n for n, p in skeleton.named_parameters() if p.is_meta]
        if missing or result.unexpected_keys:
            raise UnsupportedModel(
                "layer-streamed scoring needs checkpoint keys that match the model's module names "
                f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}); score in memory instead"
            )

    @contextlib.contextmanager
    def layer(self, index: int) -> Iterator[nn.Module]:
        """Decoder layer `index`, loaded from disk for the duration of the block."""
        shell = self.layers[index]
        prefix = f"{self.arch.key_prefix}{index}."
        keys = [k for k in self._files if k.startswith(prefix)]
        state = {k[len(prefix):]: v for k, v in self._tensors(keys).items()}
        missing, unexpected = shell.load_state_dict(state, strict=False, assign=True)
        if [m for m in missing if dict(shell.named_parameters()).get(m) is not None] or unexpected:
            raise CheckpointError(f"layer {index}: checkpoint keys do not match the module ({missing[:3]}, {unexpected[:3]})")
        shell.to(self.device).eval()
        try:
            yield shell
        finally:
            shell.to("meta")  # frees the weights

    # ------------------------------------------------------------------------------------------- running
    @torch.no_grad()
    def prepare(self, input_ids: torch.Tensor) -> LayerInputs:
        """Embed one batch and record each layer's keyword arguments (one skeleton pass, no layer runs)."""
        input_ids = input_ids.to(self.device)
        self._record = []
        try:
            embedded = {}
            first = self.skeleton.get_submodule(self.arch.layers)[0]
            handle = first.register_forward_pre_hook(lambda m, args: embedded.setdefault("h", args[0]))
            try:
                self.skeleton(input_ids=input_ids, use_cache=False)
            finally:
                handle.remove()
            kwargs = [{k: v for k, v in kw.items() if k not in ("past_key_values", "use_cache")} for kw in self._record]
        finally:
            self._record = None
        return LayerInputs(input_ids, embedded["h"], kwargs)

    @staticmethod
    def run(layer: nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
        out = layer(hidden, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    @torch.no_grad()
    def logits(self, inputs: LayerInputs, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head on the residual stream after the last layer."""
        self._inject = hidden
        try:
            return self.skeleton(input_ids=inputs.input_ids, use_cache=False).logits
        finally:
            self._inject = None

    def loss(self, inputs: LayerInputs, hidden: torch.Tensor) -> float:
        logits = self.logits(inputs, hidden).float()
        ids = inputs.input_ids
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1)
        ).item()

    # ------------------------------------------------------------------------------------------- metrics' inputs
    @torch.no_grad()
    def boundary_states(self, batches: Sequence[torch.Tensor], offload: str = "cpu") -> list[list[torch.Tensor]]:
        """Residual stream at every layer boundary: states[l][b] is the input of layer l for batch b
        (l = L: the output of the last layer, before the final norm). Each layer is loaded once."""
        prepared = [self.prepare(ids) for ids in batches]
        states = [[p.hidden.to(offload) for p in prepared]]
        current = [p.hidden for p in prepared]
        for i in range(self.num_layers):
            with self.layer(i) as layer:
                current = [self.run(layer, h, p.kwargs[i]) for h, p in zip(current, prepared)]
            states.append([h.to(offload) for h in current])
        return states

    @torch.no_grad()
    def leave_one_out_losses(self, batches: Sequence[torch.Tensor], removed: Sequence[int] = ()) -> dict[str, Any]:
        """Calibration loss of the model minus `removed`, and of it minus each other layer in turn.

        All branches advance together, so each layer is loaded once; memory is one activation set per branch.
        """
        removed = set(removed)
        candidates = [i for i in range(self.num_layers) if i not in removed]
        prepared = [self.prepare(ids) for ids in batches]
        main = [p.hidden for p in prepared]
        branches: dict[int, list[torch.Tensor]] = {}
        for i in range(self.num_layers):
            if i in removed:
                continue
            branches[i] = main  # skipping layer i: the branch carries layer i's input forward
            with self.layer(i) as layer:
                main = [self.run(layer, h, p.kwargs[i]) for h, p in zip(main, prepared)]
                for j in branches:
                    if j != i:
                        branches[j] = [self.run(layer, h, p.kwargs[i]) for h, p in zip(branches[j], prepared)]
        weights = [p.input_ids.numel() for p in prepared]

        def mean_loss(states):
            return sum(self.loss(p, h) * w for p, h, w in zip(prepared, states, weights)) / sum(weights)

        return {"base": mean_loss(main), "without": {j: mean_loss(branches[j]) for j in candidates}}
