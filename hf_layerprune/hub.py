"""Publish a pruned model folder to the Hugging Face Hub, safely, and prove the pushed revision loads.

The `upload` and `push` commands call these functions in this order::

    token = resolve_token(cli_token)                      # --token, else HF_TOKEN / `hf auth login`
    user = check_write_access(token, repo_id)             # whoami, before any heavy work
    repo_id = repo_id or default_repo_id(user, report["base_model"], report["num_layers_after"])
    result = publish_folder(out_dir, repo_id, token=token, private=False, revision=None, create_pr=False)
    check = verify_pushed(repo_id, result.commit_oid, out_dir, token)   # reload from the Hub, compare logits

Guarantees:

- **One commit.** Every file goes into a single `create_commit`, so a branch never holds half a model. The target
  revision ends up mirroring the folder: remote files the folder lacks (stale shards of an older push) are deleted
  in that same commit (`.gitattributes` is kept). `parent_commit` guards against a concurrent push in between.
- **No accidental overwrite.** `main` of an existing repo that already holds a model (config.json or weights) is
  only replaced with `exist_ok=True`; pushing to a branch (`revision=`, created from main when missing) or opening
  a pull request (`create_pr=True`) never touches `main`. A repo that exists as public is refused for `private=True`.
- **Resumable.** Weights go up (LFS or Xet) before the commit; if any upload fails, nothing is committed and the
  error says so; re-running the same call skips what the Hub already has and commits.
- **Bounded memory.** Files are passed to the client as paths and streamed; nothing is read whole into memory.
- **No token leaks.** Errors are re-raised as one-line `LayerPruneError`s with the token scrubbed out, and a folder
  containing the token in any small file is refused before anything is sent.

Endpoint, cache and token follow huggingface_hub's own settings (`HF_ENDPOINT`, `HF_HUB_CACHE`, `HF_TOKEN`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from hf_layerprune.errors import LayerPruneError

TOKEN_HELP = "set HF_TOKEN, run `hf auth login`, or pass --token (create a write token at https://huggingface.co/settings/tokens)"
MODEL_FILES = ("config.json",)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
KEEP_REMOTE = {".gitattributes"}  # never deleted when mirroring a folder
SCAN_LIMIT = 10 * 1024 * 1024  # files up to this size are searched for the token before upload


@dataclass(frozen=True)
class PublishResult:
    url: str  # the repo page
    commit_oid: str  # the commit that holds the folder (40 hex)
    pr_url: str | None  # the pull request, with create_pr=True
    revision: str  # where the commit is: "main", the branch, or "refs/pr/N"

    @property
    def web_url(self) -> str:
        """The page that shows this push: the PR, the branch, or the repo."""
        if self.pr_url:
            return self.pr_url
        return self.url if self.revision == "main" else f"{self.url}/tree/{self.revision}"


# --- auth -------------------------------------------------------------------------------------------------------


def resolve_token(token: str | None = None) -> str | None:
    """`token` if given, else huggingface_hub's own lookup (HF_OIDC_RESOURCE, HF_TOKEN, `hf auth login`)."""
    if token:
        return token
    from huggingface_hub import get_token

    with _hub_errors("reading the Hugging Face token", None):
        return get_token()


def check_write_access(token: str | None, repo_id: str | None = None) -> str:
    """Ask the Hub who `token` belongs to and whether it may write to `repo_id`'s namespace; return the user name.

    Raises LayerPruneError (one line, saying how to fix it) for a missing, invalid or read-only token, a
    fine-grained token without `repo.write` on the namespace, or an organisation the user cannot write to.
    """
    if not token:
        raise LayerPruneError(f"no Hugging Face token found: {TOKEN_HELP}")
    api = _api(token)
    info = _whoami(api, token)
    user = info.get("name") or "?"
    namespace = repo_id.split("/")[0] if repo_id and "/" in repo_id else user
    problem = _write_problem(info, namespace)
    if problem:
        raise LayerPruneError(f"the token of {user} cannot write to {namespace}: {problem}; {TOKEN_HELP}")
    return user


def _whoami(api, token: str) -> dict[str, Any]:
    from huggingface_hub.errors import HfHubHTTPError

    with _hub_errors("checking the Hugging Face token", token):
        try:
            return api.whoami(token=token)
        except HfHubHTTPError as exc:
            if exc.response is not None and exc.response.status_code == 401:
                raise LayerPruneError(
                    f"the Hugging Face token was rejected by {api.endpoint} (invalid or expired): {TOKEN_HELP}"
                ) from None
            raise


def _write_problem(whoami: dict[str, Any], namespace: str) -> str | None:
    """Why the whoami answer rules out writing to `namespace`, as far as it tells; None when it looks fine."""
    user = whoami.get("name")
    access = (whoami.get("auth") or {}).get("accessToken") or {}
    role = access.get("role")
    if role == "read":
        return "it is a read-only token"
    if namespace != user:
        org_roles = {org.get("name"): org.get("roleInOrg") for org in whoami.get("orgs") or []}
        if namespace not in org_roles:
            return f"{user} is not a member of the organization {namespace}"
        if org_roles[namespace] == "read":
            return f"{user} only has the read role in {namespace}"
    if role == "fineGrained":
        scoped = (access.get("fineGrained") or {}).get("scoped") or []
        permissions = {perm for item in scoped if (item.get("entity") or {}).get("name") == namespace
                       for perm in item.get("permissions") or []}
        if "repo.write" not in permissions:
            return f"the fine-grained token lacks the repo.write permission on {namespace}"
    return None


# --- naming -----------------------------------------------------------------------------------------------------


def default_repo_id(user: str, base_model: str, num_layers_after: int) -> str:
    """`<user>/<model-name>-pruned-<L'>L`, the model name taken from a Hub id, a local path or a .gguf file."""
    suffix = f"-pruned-{num_layers_after}L"
    return f"{user}/{_model_name(base_model)[: 96 - len(suffix)].rstrip('-.')}{suffix}"


def _model_name(base_model: str) -> str:
    name = PurePosixPath(str(base_model).replace("\\", "/").rstrip("/")).name
    name = re.sub(r"\.gguf$", "", name, flags=re.IGNORECASE)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name)
    name = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", ".", name)).strip("-.")
    return name or "model"


# --- publishing -------------------------------------------------------------------------------------------------


def publish_folder(
    folder: str | Path,
    repo_id: str,
    *,
    token: str,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
    commit_description: str | None = None,
    exist_ok: bool = False,
) -> PublishResult:
    """Push every file of `folder` to `repo_id` in one commit (see the module docstring for the guarantees)."""
    folder = Path(folder)
    files = local_files(folder)
    if not files:
        raise LayerPruneError(f"{folder} has no files to publish")
    _refuse_token_in_files(folder, files, token)
    branch = (revision or "main").removeprefix("refs/heads/")
    api = _api(token)
    with _hub_errors(f"preparing {repo_id}", token):
        _ensure_repo(api, repo_id, private)
        if branch != "main" and not branch.startswith("refs/pr/"):
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        head = api.repo_info(repo_id, revision=branch).sha
        remote = set(api.list_repo_files(repo_id, revision=head))
    _refuse_overwrite(repo_id, remote, branch, create_pr, exist_ok)
    operations = _operations(folder, files, remote)
    message = commit_message or f"Upload {folder.name} with hf-layerprune"
    with _hub_errors(f"uploading to {repo_id}", token, after=f"nothing was committed, {repo_id}@{branch} is "
                     "unchanged; run the same command again to resume (files already uploaded are skipped)"):
        info = api.create_commit(repo_id, operations, commit_message=message, commit_description=commit_description,
                                 revision=branch, create_pr=create_pr, parent_commit=head)
    return PublishResult(url=f"{api.endpoint}/{repo_id}", commit_oid=info.oid, pr_url=info.pr_url,
                         revision=info.pr_revision if create_pr else branch)


def check_target(repo_id: str, *, token: str | None, private: bool = False, revision: str | None = None,
                 create_pr: bool = False, exist_ok: bool = False) -> None:
    """Before any heavy work: refuse a target that `publish_folder` would refuse (read-only; creates nothing)."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    branch = (revision or "main").removeprefix("refs/heads/")
    api = _api(token)
    with _hub_errors(f"checking {repo_id}", token):
        try:
            info = api.repo_info(repo_id)
        except RepositoryNotFoundError:
            return  # will be created
        if private and info.private is False:
            raise LayerPruneError(f"{repo_id} exists and is public but --private was asked; make it private on the Hub "
                                  "first, or publish to another --repo-id")
        try:
            remote = set(api.list_repo_files(repo_id, revision=branch))
        except RevisionNotFoundError:
            return  # a new branch
    _refuse_overwrite(repo_id, remote, branch, create_pr, exist_ok)


def _refuse_overwrite(repo_id: str, remote: set[str], branch: str, create_pr: bool, exist_ok: bool) -> None:
    model_files = {f for f in remote if f in MODEL_FILES or f.endswith(WEIGHT_SUFFIXES)}
    if branch == "main" and not create_pr and not exist_ok and model_files:
        raise LayerPruneError(
            f"{repo_id} already holds a model on main ({', '.join(sorted(model_files))}); "
            "pass --exist-ok to replace it, --revision BRANCH to push to a branch, or --create-pr to open a pull request"
        )


def local_files(folder: Path) -> list[str]:
    """Relative POSIX paths of the files to publish: everything except hidden files and folders."""
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _ensure_repo(api, repo_id: str, private: bool) -> None:
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        info = api.repo_info(repo_id)
    except RepositoryNotFoundError:
        api.create_repo(repo_id, private=private, exist_ok=True)
        return
    if private and info.private is False:
        raise LayerPruneError(f"{repo_id} exists and is public but --private was asked; make it private on the Hub "
                              "first, or publish to another --repo-id")


def _operations(folder: Path, files: list[str], remote: set[str]) -> list:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    adds = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f)) for f in files]  # streamed from disk
    stale = sorted(remote - set(files) - KEEP_REMOTE)
    return adds + [CommitOperationDelete(path_in_repo=f) for f in stale]


def _refuse_token_in_files(folder: Path, files: list[str], token: str | None) -> None:
    if not token:
        return
    needle = token.encode()
    for name in files:
        path = folder / name
        if path.stat().st_size <= SCAN_LIMIT and needle in path.read_bytes():
            raise LayerPruneError(f"{path} contains your Hugging Face token; remove it before publishing")


# --- verification -----------------------------------------------------------------------------------------------


def verify_pushed(
    repo_id: str,
    revision: str,
    local_model_dir_or_model: Any,
    token: str | None,
    *,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Download `repo_id@revision` into a throw-away cache, load it with transformers and compare its logits on
    fixed token ids with the local model (a folder, loaded in float32, or a model object). Raise LayerPruneError
    when files are missing or the logits differ by more than `atol`; return a small record for the report.
    """
    import torch
    from huggingface_hub import snapshot_download

    local = local_model_dir_or_model
    local_dir = Path(local) if isinstance(local, (str, Path)) else None
    with tempfile.TemporaryDirectory(prefix="layerprune-verify-") as cache:
        with _hub_errors(f"downloading {repo_id}@{revision} to verify it", token):
            pushed = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache, token=token))
        pushed_files = local_files(pushed)
        if local_dir is not None:
            missing = sorted(set(local_files(local_dir)) - set(pushed_files))
            if missing:
                raise LayerPruneError(f"{repo_id}@{revision} lacks {', '.join(missing)} after the push")
        trust_code = local_dir is not None and _same_code(local_dir, pushed)
        local_model = _load(local_dir, torch.float32, trust_code, str(local_dir)) if local_dir is not None else local
        param = next(local_model.parameters())
        remote_model = _load(pushed, param.dtype, trust_code, f"{repo_id}@{revision}").to(param.device)
        ids = _probe_ids(local_model.config.vocab_size).to(param.device)
        with torch.no_grad():
            expected = local_model(ids).logits.float()
            actual = remote_model(ids).logits.float()
        diff = (expected - actual).abs().max().item() if expected.shape == actual.shape else float("inf")
    if not diff <= atol:
        raise LayerPruneError(f"{repo_id}@{revision} does not reproduce the local model: max |logit diff| {diff:.3g} > {atol:g}")
    return {"repo_id": repo_id, "revision": revision, "commit": pushed.name, "files": len(pushed_files),
            "probe_tokens": ids.numel(), "max_abs_diff": diff, "atol": atol}


def _load(path: Path, dtype, trust_remote_code: bool, label: str):
    from transformers import AutoModelForCausalLM

    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True,
                                                           trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise LayerPruneError(f"transformers cannot load {label}: {_describe(exc)}") from None
    if info["missing_keys"] or info["unexpected_keys"]:
        raise LayerPruneError(f"{label}: weights do not match the config (missing {sorted(info['missing_keys'])[:3]}, "
                              f"unexpected {sorted(info['unexpected_keys'])[:3]})")
    return model.eval()


def _same_code(local_dir: Path, pushed: Path) -> bool:
    """Remote code (auto_map) is only run when the pushed .py files are byte-identical to the local ones."""
    config = json.loads((local_dir / "config.json").read_text()) if (local_dir / "config.json").exists() else {}
    if "auto_map" not in config:
        return False
    local_py = {p.name: _sha256(p) for p in local_dir.glob("*.py")}
    pushed_py = {p.name: _sha256(p) for p in pushed.glob("*.py")}
    return bool(local_py) and local_py == pushed_py


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _probe_ids(vocab_size: int, batch: int = 2, length: int = 12):
    import torch

    generator = torch.Generator().manual_seed(1234)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


# --- errors -----------------------------------------------------------------------------------------------------


def _api(token: str | None):
    from huggingface_hub import HfApi

    from hf_layerprune import __version__

    return HfApi(token=token, library_name="hf-layerprune", library_version=__version__)


@contextlib.contextmanager
def _hub_errors(action: str, token: str | None, after: str = "") -> Iterator[None]:
    """Turn client errors into one-line LayerPruneErrors without the token (and without the chained traceback)."""
    from huggingface_hub.errors import HTTPError

    try:
        yield
    except LayerPruneError:
        raise
    except (HTTPError, OSError, ValueError, RuntimeError) as exc:
        message = f"{action} failed: {_describe(exc)}" + (f"; {after}" if after else "")
        raise LayerPruneError(_scrub(message, token)) from None


def _describe(exc: BaseException) -> str:
    """The first line of each message along the exception's cause chain, e.g. 'upload of x failed (403 Forbidden)'."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    parts = []
    while exc is not None and len(parts) < 3:
        if isinstance(exc, RepositoryNotFoundError):
            parts.append("repository not found, or not visible to this token")
        elif isinstance(exc, RevisionNotFoundError):
            parts.append("revision not found")
        elif isinstance(exc, HfHubHTTPError) and exc.response is not None:
            server = f": {exc.server_message.strip()}" if exc.server_message else ""
            parts.append(f"HTTP {exc.response.status_code}{server}".splitlines()[0])
            break  # its cause repeats it
        else:
            text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            parts.append(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
        exc = exc.__cause__
    return " <- ".join(parts)


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text
