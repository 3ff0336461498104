"""Issue 20's guarantees, each reproduced first as the defect it was: no code runs without --trust-remote-code,
--overwrite never deletes what is not ours, nothing unverified reaches main, Hub calls retry, a failed push keeps
its model, a killed run's staging directory is cleaned, no local path is published."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ORG, WRITE_TOKEN
from huggingface_hub import HfApi
from typer.testing import CliRunner

from hf_layerprune import hub
from hf_layerprune.cli import app
from hf_layerprune.runtime.errors import HubError
from hf_layerprune.runtime.outputs import OWNER_FILE, staging_dir
from tiny_models import tiny_model

runner = CliRunner()
REPO = f"{ORG}/tiny-llama-pruned"
FAST = ("--heal", "none", "--no-eval")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def error_of(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("Error: ") and sum(line.startswith("Error:") for line in lines) == 1, lines
    return lines[-1]


def tree(directory: Path) -> dict[str, int]:
    return {p.relative_to(directory).as_posix(): p.stat().st_size for p in sorted(directory.rglob("*")) if p.is_file()}


EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("remote code ran")
from transformers.models.llama.modeling_llama import LlamaForCausalLM as EvilForCausalLM
from transformers.models.llama.configuration_llama import LlamaConfig as EvilConfig
"""


def with_remote_code(directory: Path, marker: Path, auto_map: dict[str, str] | None = None) -> Path:
    """A stock Llama folder whose config also points at code of its own (`modeling_evil.py` creates `marker`)."""
    (directory / "modeling_evil.py").write_text(EVIL.format(marker=str(marker)))
    config = json.loads((directory / "config.json").read_text())
    config["auto_map"] = auto_map or {"AutoConfig": "modeling_evil.EvilConfig",
                                      "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (directory / "config.json").write_text(json.dumps(config))
    return directory


# --- 1. no code runs without consent ------------------------------------------------------------------------------


def test_upload_never_runs_the_folders_own_code(hub_server, pruned_model_dir, tmp_path):
    marker = tmp_path / "marker"
    folder = with_remote_code(Path(shutil.copytree(pruned_model_dir(0), tmp_path / "m")), marker)
    result = invoke("upload", folder, "--repo-id", REPO, "--token", WRITE_TOKEN)
    assert result.exit_code == 0, result.output
    assert "Verified" in result.stderr and not marker.exists()


def test_third_party_auto_map_code_is_never_downloaded_or_run(hub_server, pruned_model_dir, tmp_path):
    marker = tmp_path / "marker"
    code_repo = f"{ORG}/evil-code"
    api = HfApi(token=WRITE_TOKEN)
    api.create_repo(code_repo)
    api.upload_file(path_or_fileobj=EVIL.format(marker=str(marker)).encode(), path_in_repo="modeling_x.py", repo_id=code_repo)
    folder = with_remote_code(Path(shutil.copytree(pruned_model_dir(0), tmp_path / "m")), marker,
                              {"AutoModelForCausalLM": f"{code_repo}--modeling_x.EvilForCausalLM"})
    (folder / "modeling_evil.py").unlink()
    assert invoke("upload", folder, "--repo-id", REPO, "--token", WRITE_TOKEN).exit_code == 0
    assert invoke("prune", folder, "--drop", "1", "--metric", "bi", "-o", tmp_path / "out", *FAST).exit_code == 0
    assert not marker.exists()
    assert not any(r["path"].startswith(f"/{code_repo}/resolve") for r in hub_server.requests)
    assert not (tmp_path / "out" / "modeling_evil.py").exists()


def test_pruning_a_folder_with_remote_code_never_runs_it(tmp_path):
    marker = tmp_path / "marker"
    source = tmp_path / "src"
    tiny_model("llama", num_layers=4).save_pretrained(source)
    with_remote_code(source, marker)
    out = tmp_path / "out"
    assert invoke("prune", source, "--drop", "1", "--metric", "bi", "-o", out, *FAST).exit_code == 0
    assert not marker.exists() and not (out / "modeling_evil.py").exists()


def test_code_only_model_needs_trust_remote_code(tmp_path):
    marker = tmp_path / "marker"
    source = tmp_path / "src"
    tiny_model("llama", num_layers=4).save_pretrained(source)
    with_remote_code(source, marker)
    config = json.loads((source / "config.json").read_text())
    config["model_type"] = "evil-arch"
    (source / "config.json").write_text(json.dumps(config))
    message = error_of(invoke("prune", source, "--drop", "1", "--metric", "bi", "-o", tmp_path / "out", *FAST))
    assert "--trust-remote-code" in message and not marker.exists() and not (tmp_path / "out").exists()


def test_decilm_export_is_verified_with_the_packages_own_classes(tmp_path, monkeypatch):
    """Our sub-layer export loads without trust_remote_code; tampered .py files are not ours and not run."""
    from hf_layerprune.surgery.checkpoint import is_our_decilm, load_checkpoint
    from hf_layerprune.surgery.sublayer import export_decilm

    out = tmp_path / "deci"
    export_decilm(tiny_model("llama", num_layers=4), [1], [], out)
    assert is_our_decilm(out)
    assert type(load_checkpoint(out)).__module__ == "hf_layerprune.surgery.decilm.modeling_decilm"
    marker = tmp_path / "marker"
    (out / "modeling_decilm.py").write_text((out / "modeling_decilm.py").read_text()
                                            + f"\nimport pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    assert not is_our_decilm(out)
    with pytest.raises(Exception, match="trust-remote-code"):
        load_checkpoint(out)
    assert not marker.exists()


# --- 2. --overwrite replaces only our own outputs -----------------------------------------------------------------


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "src"
    tiny_model("llama", num_layers=4).save_pretrained(path)
    return path


@pytest.mark.parametrize("where", ["source", "inside", "parent"])
def test_overwrite_never_touches_the_source(source, tmp_path, where):
    (source / "notes.txt").write_text("mine")
    out = {"source": source, "inside": source / "out", "parent": tmp_path}[where]
    if where == "inside":
        out.mkdir()
    before = tree(tmp_path)
    message = error_of(invoke("prune", source, "--layers", "1", "-o", out, "--overwrite", *FAST))
    assert "source model" in message
    assert tree(tmp_path) == before


def test_overwrite_refuses_foreign_directories_and_replaces_our_outputs(source, tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8 not a model")
    message = error_of(invoke("prune", source, "--layers", "1", "-o", foreign, "--overwrite", *FAST))
    assert "not an hf-layerprune output" in message and (foreign / "cat.jpg").exists()

    out = tmp_path / "out"
    assert invoke("prune", source, "--layers", "1", "-o", out, *FAST).exit_code == 0
    assert invoke("prune", source, "--layers", "2", "-o", out, "--overwrite", *FAST).exit_code == 0
    assert json.loads((out / "layerprune.json").read_text())["removed_layers"] == [2]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke("prune", source, "--layers", "1", "-o", empty, "--overwrite", *FAST).exit_code == 0


def test_a_killed_runs_staging_directory_is_cleaned(source, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    out = tmp_path / "out"
    killed = tmp_path / ".out.tmp-killed1"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half a model")
    (killed / OWNER_FILE).write_text(f"{socket.gethostname()} {dead.pid}\n")
    orphan = tmp_path / ".out.tmp-noowner"  # from a run killed before its owner file was written
    orphan.mkdir()
    alive = tmp_path / ".out.tmp-running"
    alive.mkdir()
    (alive / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    assert invoke("prune", source, "--layers", "1", "-o", out, *FAST).exit_code == 0
    assert not killed.exists() and not orphan.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.tmp-running", "out", "src"]


def test_staging_is_removed_when_the_disk_is_full(tmp_path):
    import errno

    with pytest.raises(OSError):
        with staging_dir(tmp_path / "out") as stage:
            (stage / "shard").write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_copy_side_files_skips_sub_folders_and_code(source, tmp_path):
    earlier = source / "old-output"
    earlier.mkdir()
    (earlier / "config.json").write_text("{}")
    (source / "additional_chat_templates").mkdir()
    (source / "additional_chat_templates" / "tool.jinja").write_text("{{ x }}")
    (source / "tokenizer_notes.txt").write_text("kept")
    (source / "helper.py").write_text("raise SystemExit")
    out = tmp_path / "out"
    assert invoke("prune", source, "--layers", "1", "-o", out, *FAST).exit_code == 0
    assert not (out / "old-output").exists() and not (out / "helper.py").exists()
    assert (out / "additional_chat_templates" / "tool.jinja").exists() and (out / "tokenizer_notes.txt").exists()


# --- 3. nothing unverified reaches main ---------------------------------------------------------------------------


def test_a_truncated_shard_is_refused_before_anything_is_sent(hub_server, pruned_model_dir, tmp_path):
    folder = Path(shutil.copytree(pruned_model_dir(0), tmp_path / "m"))
    shard = folder / "model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    message = error_of(invoke("upload", folder, "--repo-id", REPO, "--token", WRITE_TOKEN))
    assert "truncated" in message and shard.name in message
    assert hub_server.requests == []  # not even the token check: the folder is refused first


def test_corrupted_upload_never_reaches_main(hub_server, pruned_model_dir):
    hub_server.truncate_lfs_puts = 1  # the Hub stores half of one shard: only a download shows it
    message = error_of(invoke("upload", pruned_model_dir(0), "--repo-id", REPO, "--token", WRITE_TOKEN))
    assert "verify" in message
    assert hub_server.store.repo(REPO) is None  # created by this push, deleted again with its staging branch


def test_failed_verification_leaves_an_existing_main_untouched(hub_server, pruned_model_dir):
    assert invoke("upload", pruned_model_dir(0), "--repo-id", REPO, "--token", WRITE_TOKEN).exit_code == 0
    main = hub_server.refs(REPO)["main"]
    hub_server.truncate_lfs_puts = 1
    error_of(invoke("upload", pruned_model_dir(1), "--repo-id", REPO, "--token", WRITE_TOKEN, "--exist-ok"))
    assert hub_server.refs(REPO) == {"main": main}  # main unchanged, no staging branch left


def test_a_commit_lands_on_main_only_after_the_staging_commit_verified(hub_server, pruned_model_dir):
    seen = []

    def verify(revision):
        seen.append((revision, hub_server.refs(REPO).get("main"), hub_server.files(REPO, revision)))
        return {"ok": True}

    result = hub.publish_folder(pruned_model_dir(0), REPO, token=WRITE_TOKEN, verify=verify)
    (staged, main_then, staged_files), = seen
    assert main_then != result.commit_oid and staged != result.commit_oid
    assert staged_files == hub_server.files(REPO, result.commit_oid)
    assert set(hub_server.refs(REPO)) == {"main"} and len(hub_server.commits(REPO)) == 2  # init + ours


# --- 4. retries ---------------------------------------------------------------------------------------------------


def test_429_and_5xx_are_retried(hub_server, pruned_model_dir, caplog):
    hub_server.inject("POST", "/commit/", 429, times=2, retry_after="0")
    hub_server.inject("GET", f"/api/models/{REPO}$", 503, times=1)
    result = invoke("upload", pruned_model_dir(0), "--repo-id", REPO, "--token", WRITE_TOKEN)
    assert result.exit_code == 0, result.output
    statuses = [r["status"] for r in hub_server.requests if r["path"].endswith("/commit/main") or "/commit/layerprune-staging" in r["path"]]
    assert statuses.count(429) == 2 and statuses.count(200) == 2
    assert "HTTP 429" in caplog.text and "retry 1 of" in caplog.text


def test_a_retried_commit_whose_first_attempt_landed_is_not_applied_twice(hub_server, pruned_model_dir):
    hub_server.inject("POST", r"/commit/main$", 502, after=True)  # the commit lands, its answer is lost
    result = hub.publish_folder(pruned_model_dir(0), REPO, token=WRITE_TOKEN)
    commits = hub_server.commits(REPO)
    assert len(commits) == 2 and commits[0]["oid"] == result.commit_oid  # init + exactly one of ours


def test_a_concurrent_commit_is_reported_as_such(hub_server, pruned_model_dir):
    def verify(revision):  # someone else pushes to main while ours is verified on the staging branch
        HfApi(token=WRITE_TOKEN).upload_file(path_or_fileobj=b"hello", path_in_repo="notes.txt", repo_id=REPO)
        return {}

    with pytest.raises(HubError, match="another commit .* landed on .*@main"):
        hub.publish_folder(pruned_model_dir(0), REPO, token=WRITE_TOKEN, verify=verify)
    assert set(hub_server.files(REPO)) == {".gitattributes", "notes.txt"}


def test_a_malformed_repo_id_is_named_as_such(hub_server, pruned_model_dir):
    message = error_of(invoke("upload", pruned_model_dir(0), "--repo-id", "a/b/c", "--token", WRITE_TOKEN))
    assert "invalid --repo-id 'a/b/c'" in message and "organization" not in message
    assert hub_server.requests == []


# --- 5. a failed push keeps its model -----------------------------------------------------------------------------


def test_failed_push_keeps_the_model_and_prints_the_resume_command(hub_server, tmp_path):
    source = tmp_path / "src"
    tiny_model("llama", num_layers=4).save_pretrained(source)
    hub_server.fail_commit_status = 500
    message = error_of(invoke("push", source, "--layers", "1", *FAST, "--repo-id", REPO, "--token", WRITE_TOKEN))
    command = message.split("publish it with `")[1].rstrip("`")
    assert "run the same command again" not in message
    argv = command.split()
    assert argv[:2] == ["hf-layerprune", "upload"] and argv[argv.index("--repo-id") + 1] == REPO
    kept = Path(argv[2])
    assert (kept / "layerprune.json").is_file()
    hub_server.fail_commit_status = None
    result = invoke(*argv[1:], "--token", WRITE_TOKEN)
    assert result.exit_code == 0, result.output
    assert "model.safetensors" in hub_server.files(REPO)
    shutil.rmtree(kept.parent)


def test_commit_title_names_a_local_source_by_file_name(hub_server, tmp_path):
    source = tmp_path / "My-Model"
    tiny_model("llama", num_layers=4).save_pretrained(source)
    result = invoke("push", source, "--layers", "1", *FAST, "--repo-id", REPO, "--token", WRITE_TOKEN)
    assert result.exit_code == 0, result.output
    title = hub_server.commits(REPO)[0]["summary"]
    assert title == "Upload My-Model pruned from 4 to 3 layers (hf-layerprune)" and str(tmp_path) not in title


# --- 6. the publishing workflow -----------------------------------------------------------------------------------


def test_publish_workflow_keeps_the_token_to_the_push_step():
    workflow = yaml.safe_load((Path(__file__).parent.parent / ".github/workflows/publish-pruned.yml").read_text())
    publish = workflow["jobs"]["publish"]
    assert "HF_TOKEN" not in publish.get("env", {})
    holders = [s["name"] for s in publish["steps"] if "HF_TOKEN" in (s.get("env") or {})]
    assert holders == ["Prune, heal and publish"]
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            if "uses" in step:
                ref = step["uses"].split("@")[1].split()[0]
                assert len(ref) == 40 and all(c in "0123456789abcdef" for c in ref), step["uses"]
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False
    inputs = workflow[True]["workflow_call"]["inputs"]
    assert inputs["layerprune-ref"]["default"] == ""  # empty: a fixed commit, never a moving branch
    release = publish["env"]["LAYERPRUNE_RELEASE"]
    assert len(release) == 40 and all(c in "0123456789abcdef" for c in release), release  # a commit, not a tag
    root = Path(__file__).parent.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    import subprocess

    shallow = subprocess.run(["git", "-C", str(root), "rev-parse", "--is-shallow-repository"], capture_output=True,
                             text=True).stdout.strip() == "true"
    found = subprocess.run(["git", "-C", str(root), "cat-file", "-e", f"{release}^{{commit}}"], capture_output=True)
    if found.returncode and shallow:
        pytest.skip("a shallow clone lacks the history to look the commit up")
    assert found.returncode == 0, f"LAYERPRUNE_RELEASE {release} is not a commit of this repository"
    ancestor = subprocess.run(["git", "-C", str(root), "merge-base", "--is-ancestor", release, "HEAD"])
    assert ancestor.returncode == 0, f"LAYERPRUNE_RELEASE {release} is not in this branch's history"


# --- 7. every check before any work -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, phrase", [
    (["--drop", "1", "--heal", "distill:adapter=ful"], "adapter='ful'"),
    (["--drop", "1", "--metric", "angular:foo=1"], "no option 'foo'"),
    (["--drop", "1", "--metric", "bi", "--protect", "nine"], "--protect"),
    (["--recipe", "{recipe}"], "drop: '4' is not an integer"),
])
def test_mistyped_options_fail_before_any_weight_is_opened(source, tmp_path, monkeypatch, argv, phrase):
    import builtins

    import safetensors

    recipe = tmp_path / "r.yaml"
    recipe.write_text('drop: "4"\n')
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        assert not str(file).endswith((".safetensors", ".bin")), f"opened {file}"
        return real_open(file, *args, **kwargs)

    def no_safe_open(*args, **kwargs):
        raise AssertionError("safetensors.safe_open was called")

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(safetensors, "safe_open", no_safe_open)
    args = [a.replace("{recipe}", str(recipe)) for a in argv]
    message = error_of(invoke("prune", source, *args, "-o", tmp_path / "out", "--no-eval"))
    assert phrase in message


def test_published_files_carry_no_local_path(tmp_path):
    """layerprune.json, the card and its recipe name a local source by file name (GGUF: and sha256), never by path."""
    import hashlib
    import site
    import tempfile

    from tiny_models import save_word_tokenizer

    source = tmp_path / "My-Model"
    tiny_model("llama", num_layers=4).save_pretrained(source)
    save_word_tokenizer(source)
    data = tmp_path / "calib.txt"
    data.write_text("the cat sat on the mat . " * 400)
    out = tmp_path / "out"
    result = invoke("prune", source, "--drop", "1", "--metric", "bi", "--calibration", data, "--calibration-samples",
                    "2", "--seq-len", "8", "--heal", "none", "--no-eval", "-o", out)
    assert result.exit_code == 0, result.output
    prefixes = {str(tmp_path), tempfile.gettempdir() + "/", str(Path.home()) + "/", *site.getsitepackages()}
    for path in out.rglob("*"):
        if path.suffix in (".json", ".md", ".yaml", ".txt"):
            text = path.read_text()
            assert not [p for p in prefixes if p in text], (path.name, [p for p in prefixes if p in text])
    report = json.loads((out / "layerprune.json").read_text())
    assert report["base_model"] == "./My-Model" and report["recipe"]["model"] == "My-Model"
    assert report["recipe"]["calibration"] == "calib.txt"
    gguf = hashlib.sha256(b"x").hexdigest()
    from hf_layerprune.report.provenance import scrub

    assert scrub({"command": f"hf-layerprune prune {tmp_path}/m.gguf -o /tmp/o", "hub": "org/name", "x": gguf}) == \
        {"command": "hf-layerprune prune m.gguf -o o", "hub": "org/name", "x": gguf}
