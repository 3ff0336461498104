"""The local Hub (tests/hub_server.py) driven by the real huggingface_hub client: what the other tests rely on."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
from conftest import ORG, READ_TOKEN, USER, WRITE_TOKEN
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

REPO = f"{USER}/demo"


@pytest.fixture
def api(hub_server):
    return HfApi(token=WRITE_TOKEN)


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(os.urandom(5000))
    return path


def add(path_in_repo, content):
    return CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=content)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_whoami_and_token_checks(hub_server):
    me = HfApi().whoami(token=WRITE_TOKEN)
    assert me["name"] == USER and me["orgs"][0]["name"] == ORG
    assert me["auth"]["accessToken"]["role"] == "write"
    with pytest.raises(HfHubHTTPError) as info:
        HfApi().whoami(token="hf_not_a_known_token")
    assert info.value.response.status_code == 401


def test_create_repo_conflicts_and_visibility(hub_server, api):
    url = api.create_repo(REPO)
    assert url == f"{hub_server.url}/{REPO}" and url.repo_id == REPO
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo(REPO)
    assert info.value.response.status_code == 409
    assert api.create_repo(REPO, exist_ok=True).repo_id == REPO
    assert api.list_repo_files(REPO) == [".gitattributes"]  # the Hub's initial commit

    api.create_repo(f"{ORG}/secret", private=True)
    assert api.model_info(f"{ORG}/secret").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info(f"{ORG}/secret")  # invisible without a token
    with pytest.raises(HfHubHTTPError) as info:
        HfApi(token=READ_TOKEN).create_repo(f"{USER}/nope")
    assert info.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as info:
        api.create_repo("someone-else/model")
    assert info.value.response.status_code == 403


def test_commit_upload_and_download(hub_server, api, weights, tmp_path):
    api.create_repo(REPO)
    info = api.create_commit(REPO, [add("model.safetensors", str(weights)), add("config.json", b'{"a": 1}'),
                                    add("sub/dir/notes.txt", b"hello")], commit_message="first")
    assert re.fullmatch(r"[0-9a-f]{40}", info.oid) and info.pr_url is None
    assert hub_server.count("PUT", "/_lfs/") == 1  # only the weights went through LFS
    assert api.list_repo_files(REPO) == [".gitattributes", "config.json", "model.safetensors", "sub/dir/notes.txt"]

    path = hf_hub_download(REPO, "model.safetensors")
    assert Path(path).read_bytes() == weights.read_bytes()
    snapshot = snapshot_download(REPO, cache_dir=tmp_path / "other-cache")
    assert (Path(snapshot) / "sub/dir/notes.txt").read_bytes() == b"hello"
    assert os.path.basename(snapshot) == info.oid

    model = api.model_info(REPO, files_metadata=True)
    assert model.sha == info.oid
    lfs = {s.rfilename: s.lfs for s in model.siblings}
    assert lfs["model.safetensors"].sha256 == sha256(weights.read_bytes()) and lfs["config.json"] is None

    tree = {e.path: e for e in api.list_repo_tree(REPO, recursive=True, expand=True)}
    assert {"sub", "sub/dir", "sub/dir/notes.txt"} <= set(tree)
    assert tree["model.safetensors"].size == 5000 and tree["model.safetensors"].last_commit.oid == info.oid
    top = {e.path for e in api.list_repo_tree(REPO)}
    assert top == {".gitattributes", "config.json", "model.safetensors", "sub"}
    assert [e.path for e in api.list_repo_tree(REPO, path_in_repo="sub/dir")] == ["sub/dir/notes.txt"]

    commits = hub_server.commits(REPO)
    assert [c["summary"] for c in commits] == ["first", "initial commit"] and commits[0]["parent"] == commits[1]["oid"]
    assert hub_server.read(REPO, "config.json") == b'{"a": 1}'


def test_missing_repo_revision_and_file(hub_server, api):
    api.create_repo(REPO)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(f"{USER}/absent")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "absent.json")
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, path_in_repo="additional_chat_templates"))


def test_branches_and_pull_requests_leave_main_alone(hub_server, api):
    api.create_repo(REPO)
    main_before = api.create_commit(REPO, [add("a.txt", b"main")], commit_message="main").oid

    api.create_branch(REPO, branch="dev")
    with pytest.raises(HfHubHTTPError) as info:
        api.create_branch(REPO, branch="dev")
    assert info.value.response.status_code == 409
    dev = api.create_commit(REPO, [add("a.txt", b"dev")], commit_message="on dev", revision="dev")
    assert hub_server.read(REPO, "a.txt", "dev") == b"dev"

    pr = api.create_commit(REPO, [add("b.txt", b"pr")], commit_message="proposal", create_pr=True)
    assert pr.pr_url == f"{hub_server.url}/{REPO}/discussions/1" and pr.pr_revision == "refs/pr/1"
    assert api.list_repo_files(REPO, revision="refs/pr/1") == [".gitattributes", "a.txt", "b.txt"]
    pr2 = api.create_commit(REPO, [add("c.txt", b"pr2")], commit_message="another", create_pr=True)
    assert pr2.pr_revision == "refs/pr/2"

    assert hub_server.refs(REPO)["main"] == main_before and hub_server.read(REPO, "a.txt") == b"main"
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert {b.name: b.target_commit for b in refs.branches} == {"main": main_before, "dev": dev.oid}
    assert [p.ref for p in refs.pull_requests] == ["refs/pr/1", "refs/pr/2"]
    api.delete_branch(REPO, branch="dev")
    assert "dev" not in hub_server.refs(REPO)
    with pytest.raises(RevisionNotFoundError):
        api.create_commit(REPO, [add("x.txt", b"x")], commit_message="x", revision="dev")


def test_parent_commit_guard_and_deletions(hub_server, api):
    api.create_repo(REPO)
    first = api.create_commit(REPO, [add("keep.txt", b"1"), add("old/a.txt", b"a"), add("old/b.txt", b"b"),
                                     add("gone.txt", b"g")], commit_message="first").oid
    api.create_commit(REPO, [add("keep.txt", b"2")], commit_message="second", parent_commit=first)
    with pytest.raises(HfHubHTTPError) as info:  # main moved on since `first`
        api.create_commit(REPO, [add("keep.txt", b"3")], commit_message="stale", parent_commit=first)
    assert info.value.response.status_code == 412
    api.create_commit(REPO, [CommitOperationDelete("gone.txt"), CommitOperationDelete("old/")], commit_message="rm")
    assert api.list_repo_files(REPO) == [".gitattributes", "keep.txt"]
    assert hub_server.read(REPO, "keep.txt") == b"2"


def test_lfs_objects_are_uploaded_once_and_retried_on_500(hub_server, api, weights):
    api.create_repo(REPO)
    api.create_commit(REPO, [add("w.safetensors", str(weights))], commit_message="one")
    api.create_commit(REPO, [add("copy.safetensors", str(weights))], commit_message="same bytes")
    assert hub_server.count("PUT", "/_lfs/") == 1  # the batch call said the Hub already had it

    hub_server.fail_lfs_every = 2  # the 2nd PUT answers 500: the client retries it (after 1 s) and goes on
    api.create_commit(REPO, [add("x.safetensors", os.urandom(300))], commit_message="retried")
    assert [r["status"] for r in hub_server.requests if r["method"] == "PUT"] == [200, 500, 200]
    assert "x.safetensors" in hub_server.files(REPO)


def test_commit_failure_injection_keeps_branch(hub_server, api):
    api.create_repo(REPO)
    head = hub_server.refs(REPO)["main"]
    hub_server.fail_commit_status = 500
    with pytest.raises(HfHubHTTPError):
        api.create_commit(REPO, [add("a.txt", b"a")], commit_message="fails")
    assert hub_server.refs(REPO)["main"] == head
    hub_server.fail_commit_status = None
    api.create_commit(REPO, [add("a.txt", b"a")], commit_message="works")
    assert "a.txt" in hub_server.files(REPO)


def test_invalid_readme_metadata_is_rejected_before_upload(hub_server, api):
    api.create_repo(REPO)
    with pytest.raises(ValueError, match="Invalid metadata"):
        api.create_commit(REPO, [add("README.md", b"---\nlicense: [unclosed\n---\n# card")], commit_message="bad")
    api.create_commit(REPO, [add("README.md", b"---\nlicense: apache-2.0\n---\n# card")], commit_message="good")
    assert hub_server.count("POST", "/api/validate-yaml") == 2


def test_request_log_never_holds_the_token(hub_server, api, weights):
    api.create_repo(REPO)
    api.create_commit(REPO, [add("w.safetensors", str(weights))], commit_message="x")
    assert hub_server.requests and all(r["user"] == USER for r in hub_server.requests if r["method"] != "PUT")
    assert WRITE_TOKEN not in repr(hub_server.requests)
    stored = b"".join(p.read_bytes() for p in hub_server.store.root.rglob("*") if p.is_file())
    assert WRITE_TOKEN.encode() not in stored
