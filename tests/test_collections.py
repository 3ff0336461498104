"""`sweep --repo-prefix` gathers its variants in a Hub collection (hub.publish_collection), ordered by depth with
each variant's headline numbers as its note; a second sweep updates the same collection instead of making another.
The local Hub (tests/hub_server.py) implements the collection endpoints huggingface_hub calls."""

from __future__ import annotations

import pytest
from conftest import ORG, WRITE_TOKEN
from huggingface_hub import HfApi
from typer.testing import CliRunner

from hf_layerprune import hub
from hf_layerprune.cli import app
from tiny_models import VOCAB, save_word_tokenizer, tiny_model

runner = CliRunner()


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "tiny-src"
    tiny_model("llama", num_layers=5).save_pretrained(src)
    save_word_tokenizer(src)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"w{3 + (i * 7) % (VOCAB - 3)}" for i in range(1500)), encoding="utf-8")
    return src, text


def sweep(src, text, root, *extra):
    return runner.invoke(app, ["sweep", str(src), "--drop", "2,1", "--metric", "last", "--heal", "none", "--tasks",
                               "", "--perplexity", str(text), "--perplexity-tokens", "256", "-o", str(root),
                               "--repo-prefix", f"{ORG}/tiny", "--token", WRITE_TOKEN, *map(str, extra)])


def test_sweep_push_makes_one_collection_ordered_by_depth(hub_server, source, tmp_path):
    src, text = source
    result = sweep(src, text, tmp_path / "sweep")
    assert result.exit_code == 0, result.output
    [collection] = hub_server.collections.values()
    assert collection["title"] == "tiny-src pruned variants" and collection["owner"] == ORG
    items = collection["items"]
    assert [i["id"] for i in items] == [f"{ORG}/tiny-4L", f"{ORG}/tiny-3L"]  # one layer removed first
    assert [i["position"] for i in items] == [0, 1]
    first = items[0]["note"]["text"]
    assert first.startswith("4 of 5 layers, ") and "perplexity" in first  # the headline numbers
    assert "Collection" in result.output and collection["slug"] in result.output.replace("\n", "")

    # again, with the variants now present: the same collection is updated, not duplicated
    result = sweep(src, text, tmp_path / "sweep2", "--exist-ok")
    assert result.exit_code == 0, result.output
    assert len(hub_server.collections) == 1 and len(collection["items"]) == 2


def test_publish_collection_puts_the_variants_first_and_updates_notes(hub_server, pruned_model_dir, tmp_path):
    api = HfApi(token=WRITE_TOKEN)
    for name in ("a", "b", "c"):
        api.create_repo(f"{ORG}/{name}")
    other = api.create_collection("family", namespace=ORG)
    api.add_collection_item(other.slug, f"{ORG}/c", "model")  # an item someone added by hand
    url = hub.publish_collection("family", ORG, [(f"{ORG}/b", "deep"), (f"{ORG}/a", "shallow")], token=WRITE_TOKEN)
    collection = api.get_collection(other.slug)
    assert url.endswith(other.slug)
    assert [(i.item_id, i.note) for i in collection.items] == [(f"{ORG}/b", "deep"), (f"{ORG}/a", "shallow"),
                                                                (f"{ORG}/c", None)]
    hub.publish_collection("family", ORG, [(f"{ORG}/a", "shallow, healed"), (f"{ORG}/b", "deep")], token=WRITE_TOKEN)
    collection = api.get_collection(other.slug)
    assert [(i.item_id, i.note) for i in collection.items][:2] == [(f"{ORG}/a", "shallow, healed"), (f"{ORG}/b", "deep")]


def test_collection_without_a_push_is_refused(source, tmp_path):
    src, text = source
    result = runner.invoke(app, ["sweep", str(src), "--drop", "1", "--heal", "none", "--no-eval", "-o",
                                 str(tmp_path / "s"), "--collection", "x"])
    assert result.exit_code == 2 and "give --repo-prefix too" in result.output


def test_collection_command_adds_a_variant_and_reorders_by_depth(hub_server, source, tmp_path):
    """What each matrix job of the publishing workflow runs after its push: one variant at a time."""
    src, text = source
    for drop in ("2", "1"):
        out = tmp_path / f"out{drop}"
        result = runner.invoke(app, ["push", str(src), "--drop", drop, "--metric", "last", "--heal", "none",
                                     "--no-eval", "--repo-id", f"{ORG}/tiny-drop{drop}", "-o", str(out),
                                     "--token", WRITE_TOKEN])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["collection", f"{ORG}/tiny-drop{drop}", "--title", "tiny family",
                                     "--token", WRITE_TOKEN])
        assert result.exit_code == 0, result.output
    [collection] = hub_server.collections.values()
    assert result.stdout.strip().endswith(collection["slug"])
    assert [i["id"] for i in collection["items"]] == [f"{ORG}/tiny-drop1", f"{ORG}/tiny-drop2"]
    assert collection["items"][1]["note"]["text"].startswith("3 of 5 layers")
    result = runner.invoke(app, ["collection", f"{ORG}/missing", "--token", WRITE_TOKEN])
    assert result.exit_code != 0 and result.stderr.strip().splitlines()[-1].startswith("Error:")
