"""`hf-layerprune upload` and hf_layerprune.hub against the local Hub: one commit, safe, resumable, verified."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ORG, READ_TOKEN, USER, WRITE_TOKEN
from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from hf_layerprune import hub
from hf_layerprune.cli import app
from hf_layerprune.runtime.errors import LayerPruneError

REPO = f"{ORG}/tiny-llama-pruned"
runner = CliRunner()


def upload(*args, token=WRITE_TOKEN):
    extra = ["--token", token] if token else []
    return runner.invoke(app, ["upload", *map(str, args), *extra])


def error_of(result) -> str:
    """The one `Error: ...` line a failed command prints (anything before it is progress)."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("Error: ") and sum(line.startswith("Error:") for line in lines) == 1
    return lines[-1]


def local_sha256s(directory):
    import hashlib

    return {f: hashlib.sha256((directory / f).read_bytes()).hexdigest() for f in hub.local_files(directory)}


def pushed(server, directory, revision="main"):
    """True when `revision` holds exactly the folder's files (plus the Hub's .gitattributes)."""
    files = server.files(REPO, revision)
    files.pop(".gitattributes", None)
    return files == local_sha256s(directory)


def test_upload_commits_once_and_a_fresh_process_loads_it(hub_server, pruned_model_dir, tmp_path):
    model_dir = pruned_model_dir(0)
    result = upload(model_dir, "--repo-id", REPO)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"{hub_server.url}/{REPO}"
    assert "Verified" in result.stderr and "max |diff| 0" in result.stderr
    assert pushed(hub_server, model_dir)
    commits = hub_server.commits(REPO)
    assert len(commits) == 2 and commits[0]["summary"] == "Upload acme-labs/Tiny-Llama-4L pruned from 4 to 3 layers (hf-layerprune)"
    assert hub_server.count("PUT", "/_lfs/") == 3  # the three shards, each once

    script = textwrap.dedent(f"""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        tok = AutoTokenizer.from_pretrained("{REPO}")
        model, info = AutoModelForCausalLM.from_pretrained("{REPO}", dtype=torch.float32, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        ids = torch.tensor([tok("w5 w9 w17 w33 w65 w100").input_ids])
        torch.save({{"ids": ids, "logits": model(ids).logits}}, {str(tmp_path / "remote.pt")!r})
    """)
    env = {**os.environ, **hub_server.env(tmp_path / "fresh-cache")}  # public repo: no token needed
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    remote = torch.load(tmp_path / "remote.pt")
    assert remote["ids"].tolist() == [[5, 9, 17, 33, 65, 100]]
    local = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(remote["logits"], local(remote["ids"]).logits, atol=1e-4, rtol=0)
    assert (tmp_path / "fresh-cache" / f"models--{REPO.replace('/', '--')}").is_dir()  # it really downloaded


def test_existing_model_on_main_is_refused_without_exist_ok(hub_server, pruned_model_dir, tmp_path):
    first, second = pruned_model_dir(0), tmp_path / "second"
    shutil.copytree(pruned_model_dir(1), second)
    (second / "generation_config.json").unlink()
    assert upload(first, "--repo-id", REPO).exit_code == 0
    main = hub_server.refs(REPO)["main"]
    posts_before = hub_server.count("POST")

    refused = error_of(upload(second, "--repo-id", REPO))
    assert "already holds a model on main" in refused and "--exist-ok" in refused
    assert "--revision" in refused and "--create-pr" in refused
    assert hub_server.refs(REPO)["main"] == main and hub_server.count("POST") == posts_before  # nothing sent

    replaced = upload(second, "--repo-id", REPO, "--exist-ok")
    assert replaced.exit_code == 0, replaced.output
    assert pushed(hub_server, second)  # and generation_config.json, which `second` lacks, is gone
    assert len(hub_server.commits(REPO)) == 3  # one commit per push


def test_create_pr_and_revision_leave_main_untouched(hub_server, pruned_model_dir):
    base, other = pruned_model_dir(0), pruned_model_dir(1)
    assert upload(base, "--repo-id", REPO).exit_code == 0
    main = hub_server.refs(REPO)["main"]

    pr = upload(other, "--repo-id", REPO, "--create-pr", "--commit-message", "Try seed 1")
    assert pr.exit_code == 0, pr.output
    assert pr.stdout.strip() == f"{hub_server.url}/{REPO}/discussions/1" and "Verified" in pr.stderr
    assert pushed(hub_server, other, "refs/pr/1") and hub_server.commits(REPO, "refs/pr/1")[0]["summary"] == "Try seed 1"

    branch = upload(other, "--repo-id", REPO, "--revision", "seed-1")
    assert branch.exit_code == 0, branch.output
    assert branch.stdout.strip() == f"{hub_server.url}/{REPO}/tree/seed-1"
    assert pushed(hub_server, other, "seed-1")
    assert hub_server.commits(REPO, "seed-1")[1]["oid"] == main  # branched from main

    assert hub_server.refs(REPO)["main"] == main and pushed(hub_server, base)


@pytest.mark.parametrize(
    "token, repo_id, message",
    [
        (None, REPO, "no Hugging Face token found"),
        ("hf_wrong_or_expired_token_123", REPO, "rejected"),
        (READ_TOKEN, REPO, "read-only token"),
        (WRITE_TOKEN, "other-org/model", "not a member of the organization other-org"),
        ("hf_FineGrainedReadOnly_0123456789", f"{USER}/model", "lacks the repo.write permission"),
    ],
)
def test_bad_tokens_fail_before_any_work(hub_server, pruned_model_dir, token, repo_id, message):
    hub_server.add_token("hf_FineGrainedReadOnly_0123456789", USER, "fineGrained", scoped={USER: ["repo.content.read"]})
    result = upload(pruned_model_dir(0), "--repo-id", repo_id, token=token)
    error = error_of(result)
    assert message in error and result.stderr.strip() == error  # nothing else was printed
    assert all(hint in error for hint in ("HF_TOKEN", "hf auth login", "--token"))
    assert [r["path"] for r in hub_server.requests] == ([] if token is None else ["/api/whoami-v2"])
    if token:
        assert token not in result.output


def test_lfs_failure_leaves_main_untouched_and_a_rerun_resumes(hub_server, pruned_model_dir):
    base, other = pruned_model_dir(0), pruned_model_dir(1)
    assert upload(base, "--repo-id", REPO).exit_code == 0
    main = hub_server.refs(REPO)["main"]

    start = len(hub_server.requests)
    hub_server.fail_lfs_every, hub_server.fail_lfs_status = 2, 403  # e.g. an expired upload URL: not retried
    failed = error_of(upload(other, "--repo-id", REPO, "--exist-ok"))
    assert "uploading to" in failed and "HTTP 403" in failed
    assert f"nothing was committed, {REPO}@main is unchanged" in failed and "run the same command again" in failed
    assert hub_server.refs(REPO)["main"] == main and pushed(hub_server, base)
    assert hub_server.count("POST", f"/api/models/{REPO}/commit") == 2  # only the first push (staging, then main)
    stored = [r["status"] for r in hub_server.requests[start:] if r["method"] == "PUT"].count(200)

    hub_server.fail_lfs_every = None
    start = len(hub_server.requests)
    resumed = upload(other, "--repo-id", REPO, "--exist-ok")
    assert resumed.exit_code == 0, resumed.output
    assert pushed(hub_server, other) and len(hub_server.commits(REPO)) == 3
    puts = [r for r in hub_server.requests[start:] if r["method"] == "PUT"]
    assert stored >= 1 and len(puts) == 3 - stored  # what the failed run stored is not sent again


def test_commit_failure_keeps_main_and_the_rerun_uploads_nothing_again(hub_server, pruned_model_dir):
    hub_server.fail_commit_status = 500
    failed = error_of(upload(pruned_model_dir(0), "--repo-id", REPO))
    assert "HTTP 500" in failed and "nothing was committed" in failed
    assert hub_server.store.repo(REPO) is None  # the repo this push created is deleted again: nothing left behind
    assert hub_server.count("DELETE", "/api/repos/delete") == 1
    assert hub_server.count("PUT") == 3

    hub_server.fail_commit_status = None
    assert upload(pruned_model_dir(0), "--repo-id", REPO).exit_code == 0  # an empty repo is not "a model"
    assert hub_server.count("PUT") == 3 and pushed(hub_server, pruned_model_dir(0))


def test_default_repo_id_private_and_visibility_guard(hub_server, pruned_model_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)  # the token from the environment, as in CI
    result = upload(pruned_model_dir(0), "--private", "--no-verify", token=None)
    assert result.exit_code == 0, result.output
    repo_id = f"{USER}/Tiny-Llama-4L-pruned-3L"
    assert result.stdout.strip() == f"{hub_server.url}/{repo_id}" and "Not verified" in result.stderr
    assert HfApi().model_info(repo_id).private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info(repo_id)

    HfApi().create_repo(f"{USER}/public-one")
    refused = upload(pruned_model_dir(0), "--repo-id", f"{USER}/public-one", "--private", token=None)
    assert "exists and is public" in error_of(refused)


def test_folder_checks_come_before_the_network(hub_server, pruned_model_dir, tmp_path):
    incomplete = tmp_path / "incomplete"
    shutil.copytree(pruned_model_dir(0), incomplete)
    (incomplete / "layerprune.json").unlink()
    assert "lacks layerprune.json" in error_of(upload(incomplete, "--repo-id", REPO))

    (incomplete / "layerprune.json").write_text("{}")
    (incomplete / "model-00002-of-00003.safetensors").unlink()
    assert "model-00002-of-00003.safetensors" in error_of(upload(incomplete, "--repo-id", REPO))
    assert "is not a directory" in error_of(upload(tmp_path / "nowhere", "--repo-id", REPO))
    assert hub_server.requests == []


def test_the_token_never_leaks(hub_server, pruned_model_dir, tmp_path, caplog, capfd):
    leaky = tmp_path / "leaky"
    shutil.copytree(pruned_model_dir(0), leaky)
    (leaky / "README.md").write_text(f"pushed with token {WRITE_TOKEN}\n")
    refused = upload(leaky, "--repo-id", REPO)
    assert "contains your Hugging Face token" in error_of(refused)
    assert [r["path"] for r in hub_server.requests] == ["/api/whoami-v2"]  # refused before anything was sent

    outputs = [refused.output]
    outputs.append(upload(pruned_model_dir(0), "--repo-id", REPO).output)
    hub_server.fail_lfs_every, hub_server.fail_lfs_status = 1, 403
    outputs.append(upload(pruned_model_dir(1), "--repo-id", REPO, "--exist-ok").output)
    hub_server.fail_lfs_every, hub_server.fail_commit_status = None, 500
    outputs.append(upload(pruned_model_dir(1), "--repo-id", REPO, "--exist-ok").output)
    hub_server.fail_commit_status = None
    outputs.append(upload(pruned_model_dir(1), "--repo-id", REPO, "--exist-ok").output)
    captured = capfd.readouterr()
    for text in [*outputs, caplog.text, captured.out, captured.err]:
        assert WRITE_TOKEN not in text
    assert "Error:" in outputs[2] and "Verified" in outputs[4]
    for path in [*tmp_path.rglob("*"), *pruned_model_dir(0).rglob("*")]:
        if path.is_file() and path.parent != leaky:
            assert WRITE_TOKEN.encode() not in path.read_bytes(), path


def test_verify_pushed_catches_a_different_model(hub_server, pruned_model_dir):
    assert upload(pruned_model_dir(0), "--repo-id", REPO, "--no-verify").exit_code == 0
    with pytest.raises(LayerPruneError, match="holds different bytes than the local folder"):
        hub.verify_pushed(REPO, "main", pruned_model_dir(1), WRITE_TOKEN)
    other = AutoModelForCausalLM.from_pretrained(pruned_model_dir(1), dtype=torch.float32)
    with pytest.raises(LayerPruneError, match="does not reproduce the local model"):
        hub.verify_pushed(REPO, "main", other, WRITE_TOKEN)
    model = AutoModelForCausalLM.from_pretrained(pruned_model_dir(0), dtype=torch.float32)
    check = hub.verify_pushed(REPO, "main", model, WRITE_TOKEN)
    assert check["max_abs_diff"] == 0.0 and check["commit"] == hub_server.refs(REPO)["main"]
    assert json.dumps(check)  # goes into the report as is


def test_publish_folder_api(hub_server, pruned_model_dir):
    result = hub.publish_folder(pruned_model_dir(0), REPO, token=WRITE_TOKEN, private=False, revision="exp")
    assert result.revision == "exp" and result.pr_url is None and result.url == f"{hub_server.url}/{REPO}"
    assert result.web_url == f"{hub_server.url}/{REPO}/tree/exp" and hub_server.refs(REPO)["exp"] == result.commit_oid
    again = hub.publish_folder(pruned_model_dir(0), REPO, token=WRITE_TOKEN, revision="exp")
    assert again.commit_oid == result.commit_oid  # nothing changed: no empty commit
    pr = hub.publish_folder(pruned_model_dir(1), REPO, token=WRITE_TOKEN, create_pr=True)
    assert pr.revision == "refs/pr/1" and pr.web_url == pr.pr_url == f"{hub_server.url}/{REPO}/discussions/1"
    assert set(hub_server.files(REPO)) == {".gitattributes"}  # main never touched


@pytest.mark.parametrize(
    "base, layers, expected",
    [
        ("meta-llama/Llama-3.2-1B", 12, "bob/Llama-3.2-1B-pruned-12L"),
        ("/models/Qwen2.5-0.5B-Instruct/", 20, "bob/Qwen2.5-0.5B-Instruct-pruned-20L"),
        ("C:\\models\\SmolLM2-135M.Q4_1.gguf", 24, "bob/SmolLM2-135M.Q4_1-pruned-24L"),
        ("org/weird name (v2)!!", 3, "bob/weird-name-v2-pruned-3L"),
        ("x/" + "a" * 200, 7, "bob/" + "a" * 86 + "-pruned-7L"),
        ("", 2, "bob/model-pruned-2L"),
    ],
)
def test_default_repo_id(base, layers, expected):
    from huggingface_hub.utils import validate_repo_id

    assert hub.default_repo_id("bob", base, layers) == expected
    validate_repo_id(expected)


def test_check_write_access_reads_whoami(hub_server):
    hub_server.add_token("hf_fine_acme", USER, "fineGrained", orgs={ORG: "write"}, scoped={ORG: ["repo.write"]})
    hub_server.add_token("hf_reader_in_org", USER, "write", orgs={ORG: "read"})
    assert hub.check_write_access("hf_fine_acme", f"{ORG}/m") == USER
    with pytest.raises(LayerPruneError, match="lacks the repo.write permission on alice"):
        hub.check_write_access("hf_fine_acme")  # the user's own namespace is not in scope
    with pytest.raises(LayerPruneError, match="only has the read role in acme"):
        hub.check_write_access("hf_reader_in_org", f"{ORG}/m")
    assert hub.check_write_access(WRITE_TOKEN) == USER
