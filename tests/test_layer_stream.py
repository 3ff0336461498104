"""Layer-streamed execution equals the in-memory model (states, logits, leave-one-out losses)."""

from __future__ import annotations

import copy

import pytest
import torch

from hf_layerprune.surgery.layer_stream import StreamedModel
from hf_layerprune.surgery.layers import remove_layers
from tiny_models import sample_ids, tiny_model


def reference_boundaries(model, ids):
    layers = model.model.decoder.layers if model.config.model_type == "opt" else model.model.layers
    states = []
    hooks = [layer.register_forward_pre_hook(lambda m, a, kw: states.append(a[0] if a else kw["hidden_states"]), with_kwargs=True)
             for layer in layers]
    hooks.append(layers[-1].register_forward_hook(lambda m, a, out: states.append(out[0] if isinstance(out, tuple) else out)))
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits
    for h in hooks:
        h.remove()
    return states, logits


def lm_loss(model, ids):
    with torch.no_grad():
        return model(ids, labels=ids, use_cache=False).loss.item()


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "gemma3_text", "opt", "phi3"])
def test_streamed_states_and_logits_equal_in_memory(family, tmp_path):
    model = tiny_model(family, num_layers=4)
    model.save_pretrained(tmp_path)
    ids = sample_ids()
    ref_states, ref_logits = reference_boundaries(model, ids)
    streamed = StreamedModel(tmp_path, dtype=torch.float32)
    states = streamed.boundary_states([ids])
    assert len(states) == 5
    for ref, got in zip(ref_states, states):
        torch.testing.assert_close(got[0], ref, atol=1e-5, rtol=1e-5)
    inputs = streamed.prepare(ids)
    torch.testing.assert_close(streamed.logits(inputs, states[-1][0]), ref_logits, atol=1e-5, rtol=1e-5)
    assert all(p.is_meta for layer in streamed.layers for p in layer.parameters())  # nothing left loaded


def test_streamed_leave_one_out_equals_actual_removal(tmp_path):
    model = tiny_model("llama", num_layers=5)
    model.save_pretrained(tmp_path)
    batches = [sample_ids(seed=1), sample_ids(seed=2)]
    result = StreamedModel(tmp_path, dtype=torch.float32).leave_one_out_losses(batches, removed=[2])
    assert sorted(result["without"]) == [0, 1, 3, 4]

    def loss_without(layers):
        m = remove_layers(copy.deepcopy(model), layers)
        return sum(lm_loss(m, b) for b in batches) / len(batches)

    assert result["base"] == pytest.approx(loss_without([2]), rel=1e-5)
    for j, value in result["without"].items():
        assert value == pytest.approx(loss_without(sorted([2, j])), rel=1e-5)
