"""Publish a pruned model folder to the Hugging Face Hub, so that nothing unverified ever reaches the target branch.

The `upload` and `push` commands call these functions in this order::

    token = resolve_token(cli_token)                      # --token, else HF_TOKEN / `hf auth login`
    user = check_write_access(token, repo_id)             # whoami, before any heavy work
    probe = checkpoint.probe(out_dir)                     # every shard whole, config loads, forward pass: locally
    result = publish_folder(out_dir, repo_id, token=token,
                            verify=lambda rev: verify_pushed(repo_id, rev, out_dir, token, probe=probe))

Guarantees:

- **Probed before sent.** The caller checks the folder locally first (``checkpoint.probe``): a truncated shard, an
  index that disagrees with its shards or a config that does not load never leaves the machine.
- **Verified before it lands.** With ``verify``, the folder is first committed to a staging branch
  (``layerprune-staging-XXXX``, created from the target's head), downloaded from there into a throw-away cache,
  compared byte for byte with the local files and reloaded with transformers (logits compared with the local
  probe). Only then is the same file set committed to the target branch (the LFS objects are already on the Hub,
  so that second commit uploads nothing), and the staging branch is deleted. A pull request (``create_pr``) is
  its own staging area: it is verified and main is never touched.
- **One commit on the target.** Every file goes into a single ``create_commit``, so a branch never holds half a
  model; remote files the folder lacks (stale shards) are deleted in that same commit (``.gitattributes`` kept).
  ``parent_commit`` guards against a concurrent push; a 412 says that another commit landed.
- **No accidental overwrite.** ``main`` of a repo that already holds a model is only replaced with ``exist_ok``;
  a repo that exists as public is refused for ``private=True``.
- **Retries, then clean failure.** Every Hub call is retried on 429/5xx (``hub_calls.retrying``); a commit retried
  after a lost answer is recognised when it did land. When publishing fails, the staging branch is deleted, and a
  repo this call created is deleted again, so a failed push leaves nothing behind.
- **No code runs.** Verification loads the pushed model without ``trust_remote_code`` unless asked; our own DeciLM
  export is loaded with the package's classes after checking the pushed ``.py`` files are ours (checkpoint.py).
- **No token leaks.** Errors are one-line ``LayerPruneError``s with the token scrubbed out, and a folder containing
  the token in any small file is refused before anything is sent.

Endpoint, cache and token follow huggingface_hub's own settings (`HF_ENDPOINT`, `HF_HUB_CACHE`, `HF_TOKEN`).

It also reads the base model's card for its license (``find_base_card``: a local README.md, the Hub cache, then
``model_info``), so that every Hub call of the package is made here. Long module: the publish
protocol above is one sequence of guarded steps, and splitting it would separate each step from its guarantee.
"""

from __future__ import annotations

import copy
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from hf_layerprune.surgery.checkpoint import Probe, load_checkpoint, probe_model, sha256
from hf_layerprune.runtime.errors import CheckpointError, ConfigError, HubAccessError, HubError, OutputError
from hf_layerprune.hub.calls import hub_errors, logger, retrying, status_of
from hf_layerprune.surgery.loading import Source, is_meta_format
from hf_layerprune.report.provenance import CARD_FILENAME, HUB, hub_id

TOKEN_HELP = "set HF_TOKEN, run `hf auth login`, or pass --token (create a write token at https://huggingface.co/settings/tokens)"
MODEL_FILES = ("config.json",)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
KEEP_REMOTE = {".gitattributes"}  # never deleted when mirroring a folder
SCAN_LIMIT = 10 * 1024 * 1024  # files up to this size are searched for the token before upload
STAGING_PREFIX = "layerprune-staging-"
STALE_STAGING_S = 6 * 3600  # a staging branch older than this belongs to a run that was killed


@dataclass(frozen=True)
class PublishResult:
    url: str  # the repo page
    commit_oid: str  # the commit that holds the folder (40 hex)
    pr_url: str | None  # the pull request, with create_pr=True
    revision: str  # where the commit is: "main", the branch, or "refs/pr/N"
    verification: dict[str, Any] | None = field(default=None)  # verify's record, when it ran

    @property
    def web_url(self) -> str:
        """The page that shows this push: the PR, the branch, or the repo."""
        if self.pr_url:
            return self.pr_url
        return self.url if self.revision == "main" else f"{self.url}/tree/{self.revision}"


# --- auth -------------------------------------------------------------------------------------------------------


def resolve_token(token: str | None = None) -> str | None:
    """`token` if given (surrounding whitespace stripped: a pasted token often ends in a newline), else
    huggingface_hub's own lookup (HF_OIDC_RESOURCE, HF_TOKEN, `hf auth login`)."""
    if token and token.strip():
        return token.strip()
    from huggingface_hub import get_token

    with hub_errors("reading the Hugging Face token", None):
        return get_token()


BAD_REF = re.compile(r"\.\.|[\x00-\x20\x7f~^:?*\[\\]|@\{|//|^[/.]|[/.]$|\.lock$|/\.")


def check_revision(revision: str | None) -> None:
    """A branch name git accepts (git check-ref-format), or a pull request ref `refs/pr/N`; refused before any request."""
    if revision is None or re.fullmatch(r"refs/pr/\d+", revision):
        return
    if not revision or BAD_REF.search(revision.removeprefix("refs/heads/")):
        raise ConfigError(f"--revision {revision!r} is not a valid branch name")


def check_repo_id(repo_id: str | None) -> None:
    """A target repo id is `name` or `namespace/name` with the Hub's allowed characters."""
    if repo_id is None:
        return
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"invalid --repo-id {repo_id!r}: use namespace/name ({first})") from None


def check_write_access(token: str | None, repo_id: str | None = None) -> str:
    """Ask the Hub who `token` belongs to and whether it may write to `repo_id`'s namespace; return the user name.

    Raises LayerPruneError (one line, saying how to fix it) for a malformed repo id, a missing, invalid or
    read-only token, a fine-grained token without `repo.write` on the namespace, or an organisation the user
    cannot write to.
    """
    check_repo_id(repo_id)
    if not token:
        raise HubAccessError(f"no Hugging Face token found: {TOKEN_HELP}")
    api = _api(token)
    info = _whoami(api, token)
    user = info.get("name") or "?"
    namespace = repo_id.split("/")[0] if repo_id and "/" in repo_id else user
    problem = _write_problem(info, namespace)
    if problem:
        raise HubAccessError(f"the token of {user} cannot write to {namespace}: {problem}; {TOKEN_HELP}")
    return user


def _whoami(api, token: str) -> dict[str, Any]:
    from huggingface_hub.errors import HfHubHTTPError

    with hub_errors("checking the Hugging Face token", token):
        try:
            return retrying("whoami", api.whoami, token=token)
        except HfHubHTTPError as exc:
            if status_of(exc) == 401:
                raise HubAccessError(
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


def public_name(base_model: str) -> str:
    """How a base model is named in anything published: a Hub id as is, a local path by its last component."""
    text = str(base_model)
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?", text) and not Path(text).expanduser().exists():
        return text
    return PurePosixPath(text.replace("\\", "/").rstrip("/")).name or text


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
    verify: Callable[[str], dict[str, Any]] | None = None,
) -> PublishResult:
    """Push every file of `folder` to `repo_id` in one commit; with `verify(revision) -> record`, through a
    verified staging branch first (see the module docstring for the guarantees)."""
    check_repo_id(repo_id)
    check_revision(revision)
    folder = Path(folder)
    files = local_files(folder)
    if not files:
        raise CheckpointError(f"{folder} has no files to publish")
    _refuse_token_in_files(folder, files, token)
    branch = (revision or "main").removeprefix("refs/heads/")
    api = _api(token)
    created_repo = new_branch = False
    try:  # a failure at any step, preparing included, deletes what this call created (_undo)
        with hub_errors(f"preparing {repo_id}", token):
            created_repo = _ensure_repo(api, repo_id, private)
            branches = _branches(api, repo_id)
            _delete_stale_staging(api, repo_id, branches)
            if branch != "main" and not branch.startswith("refs/pr/"):
                new_branch = branch not in branches
                if new_branch:
                    retrying("create_branch", api.create_branch, repo_id, branch=branch, exist_ok=True)
            head = retrying("repo_info", api.repo_info, repo_id, revision=branch).sha
            remote = set(retrying("list_repo_files", api.list_repo_files, repo_id, revision=head))
        _refuse_overwrite(repo_id, remote, branch, create_pr, exist_ok)
        operations = _operations(folder, files, remote)
        message = commit_message or f"Upload {folder.name} with hf-layerprune"
        publish = _Publish(api, repo_id, token, operations, message, commit_description, head, branch)
        if create_pr:
            info = publish.commit(branch, create_pr=True)
            check = verify(info.pr_revision) if verify else None
            return PublishResult(f"{api.endpoint}/{repo_id}", info.oid, info.pr_url, info.pr_revision, check)
        if verify is None:
            info = publish.commit(branch)
            return PublishResult(f"{api.endpoint}/{repo_id}", info.oid, None, branch)
        staging = publish.staging_branch()
        try:
            staged = publish.commit(staging).oid
            check = verify(staged)
            info = publish.commit(branch, operations=[_fresh(op) for op in operations])
            publish.same_tree(staged, info.oid)
        finally:
            _delete_branch(api, repo_id, staging)
        return PublishResult(f"{api.endpoint}/{repo_id}", info.oid, None, branch, check)
    except BaseException:
        _undo(api, repo_id, token, created_repo, branch if new_branch else None)
        raise


class _Publish:
    """The commits of one publication: all share the operations and the parent (the target's head)."""

    def __init__(self, api, repo_id: str, token: str, operations: list, message: str, description: str | None,
                 head: str, target: str) -> None:
        self.api, self.repo_id, self.token, self.operations = api, repo_id, token, operations
        self.message, self.description, self.head, self.target = message, description, head, target

    def commit(self, branch: str, *, create_pr: bool = False, operations: list | None = None):
        """One create_commit on `branch` (from `head`), retried; a retry that finds its commit landed returns it."""
        from huggingface_hub.errors import HfHubHTTPError

        where = f"{self.repo_id}@{branch}"
        after = (f"nothing was committed, {self.repo_id}@{self.target} is unchanged; run the same command again to "
                 "resume (files already uploaded are skipped)")
        retried = []
        with hub_errors(f"uploading to {self.repo_id}", self.token, after=after):
            try:
                return retrying(f"commit to {where}", self.api.create_commit, self.repo_id,
                                operations or self.operations, commit_message=self.message,
                                commit_description=self.description, revision=branch, create_pr=create_pr,
                                parent_commit=self.head, on_retry=retried.append)
            except HfHubHTTPError as exc:
                if status_of(exc) != 412:
                    raise
                landed = self._landed(branch) if retried and not create_pr else None
                if landed is not None:
                    return landed
                now = retrying("repo_info", self.api.repo_info, self.repo_id, revision=branch).sha
                raise HubError(f"another commit ({now[:10]}) landed on {where} while publishing; nothing of this push "
                               f"was committed there; run the same command again to publish on top of it") from None

    def _landed(self, branch: str):
        """After a retried commit got 412: our own first attempt, if it is the newest commit on top of `head`."""
        from huggingface_hub import CommitInfo

        commits = retrying("list_repo_commits", self.api.list_repo_commits, self.repo_id, revision=branch)
        if len(commits) >= 2 and commits[0].title == self.message and commits[1].commit_id == self.head:
            logger.warning("the commit to %s@%s landed before its answer was lost; not committing again",
                           self.repo_id, branch)
            url = f"{self.api.endpoint}/{self.repo_id}/commit/{commits[0].commit_id}"
            return CommitInfo(commit_url=url, commit_message=self.message, commit_description="",
                              oid=commits[0].commit_id)
        return None

    def staging_branch(self) -> str:
        """A fresh branch made from the target's head, for the commit that is verified before the target gets it."""
        staging = f"{STAGING_PREFIX}{int(time.time())}-{secrets.token_hex(4)}"  # the time: stale_staging
        with hub_errors(f"creating the staging branch of {self.repo_id}", self.token):
            retrying("create_branch", self.api.create_branch, self.repo_id, branch=staging, revision=self.head)
        return staging

    def same_tree(self, staged: str, final: str) -> None:
        """The target commit holds exactly the verified staging commit's files (same blob / LFS ids)."""
        with hub_errors(f"comparing {self.repo_id}@{final[:10]} with the verified staging commit", self.token):
            trees = [_tree(self.api, self.repo_id, oid) for oid in (staged, final)]
        if trees[0] != trees[1]:
            raise HubError(f"{self.repo_id}@{final[:10]} does not hold the files verified on the staging branch")


def _tree(api, repo_id: str, revision: str) -> dict[str, str]:
    entries = retrying("list_repo_tree", lambda: list(api.list_repo_tree(repo_id, revision=revision, recursive=True)))
    return {e.path: (e.lfs.sha256 if getattr(e, "lfs", None) else e.blob_id) for e in entries if hasattr(e, "blob_id")}


def _fresh(operation):
    """The same operation for a second commit: its upload (and sha256) is reused, only the 'committed' mark reset."""
    from huggingface_hub import CommitOperationAdd

    if not isinstance(operation, CommitOperationAdd):
        return operation
    clone = copy.copy(operation)
    clone._is_committed = False
    return clone


def _branches(api, repo_id: str) -> set[str]:
    refs = retrying("list_repo_refs", api.list_repo_refs, repo_id)
    return {b.name for b in refs.branches}


def stale_staging(branch: str, now: float) -> bool:
    """A staging branch a killed run left: older than STALE_STAGING_S by the time in its name, or named before
    names carried a time. A live run's branch is younger (it lives while one model is verified)."""
    if not branch.startswith(STAGING_PREFIX):
        return False
    stamp = branch[len(STAGING_PREFIX):].split("-")[0]
    return not (len(branch[len(STAGING_PREFIX):].split("-")) == 2 and stamp.isdigit()) or now - int(stamp) > STALE_STAGING_S


def _delete_stale_staging(api, repo_id: str, branches: set[str]) -> None:
    for branch in sorted(b for b in branches if stale_staging(b, time.time())):
        _delete_branch(api, repo_id, branch)
        logger.warning("deleted %s of %s: a staging branch left by an earlier run that did not finish", branch, repo_id)


def _delete_branch(api, repo_id: str, branch: str) -> None:
    try:
        retrying("delete_branch", api.delete_branch, repo_id, branch=branch)
    except Exception as exc:  # best effort: the push itself succeeded or already failed for a better reason
        logger.warning("could not delete the branch %s of %s (%s); delete it on the Hub", branch, repo_id,
                       type(exc).__name__)


def _undo(api, repo_id: str, token: str, created_repo: bool, new_branch: str | None) -> None:
    """After a failed publication: delete what this call created (an empty repo, a branch with no new commit)."""
    try:
        if created_repo and set(retrying("list_repo_files", api.list_repo_files, repo_id)) <= KEEP_REMOTE:
            retrying("delete_repo", api.delete_repo, repo_id, missing_ok=True)
            logger.warning("deleted %s again: it was created by this push, which failed", repo_id)
        elif new_branch:
            _delete_branch(api, repo_id, new_branch)
    except Exception as exc:
        logger.warning("could not delete %s after the failed push (%s)", repo_id, type(exc).__name__)


def check_target(repo_id: str, *, token: str | None, private: bool = False, revision: str | None = None,
                 create_pr: bool = False, exist_ok: bool = False) -> None:
    """Before any heavy work: refuse a target that `publish_folder` would refuse (read-only; creates nothing)."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    check_repo_id(repo_id)
    check_revision(revision)
    branch = (revision or "main").removeprefix("refs/heads/")
    api = _api(token)
    with hub_errors(f"checking {repo_id}", token):
        try:
            info = retrying("repo_info", api.repo_info, repo_id)
        except RepositoryNotFoundError:
            return  # will be created
        if private and info.private is False:
            raise ConfigError(f"{repo_id} exists and is public but --private was asked; make it private on the Hub "
                              "first, or publish to another --repo-id")
        try:
            remote = set(retrying("list_repo_files", api.list_repo_files, repo_id, revision=branch))
        except RevisionNotFoundError:
            return  # a new branch
    _refuse_overwrite(repo_id, remote, branch, create_pr, exist_ok)


def _refuse_overwrite(repo_id: str, remote: set[str], branch: str, create_pr: bool, exist_ok: bool) -> None:
    model_files = {f for f in remote if f in MODEL_FILES or f.endswith(WEIGHT_SUFFIXES)}
    if branch == "main" and not create_pr and not exist_ok and model_files:
        raise ConfigError(
            f"{repo_id} already holds a model on main ({', '.join(sorted(model_files))}); "
            "pass --exist-ok to replace it, --revision BRANCH to push to a branch, or --create-pr to open a pull request"
        )


def local_files(folder: Path) -> list[str]:
    """Relative POSIX paths of the files to publish: everything except hidden files and folders. A symbolic link
    that resolves outside `folder` is refused: its target would be published."""
    from hf_layerprune.surgery.checkpoint import check_links

    check_links(folder)
    return sorted(
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _ensure_repo(api, repo_id: str, private: bool) -> bool:
    """Create the repo when missing; return True when this call created it."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        info = retrying("repo_info", api.repo_info, repo_id)
    except RepositoryNotFoundError:
        retrying("create_repo", api.create_repo, repo_id, private=private, exist_ok=True)
        return True
    if private and info.private is False:
        raise ConfigError(f"{repo_id} exists and is public but --private was asked; make it private on the Hub "
                          "first, or publish to another --repo-id")
    return False


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
            raise OutputError(f"{path} contains your Hugging Face token; remove it before publishing")


# --- verification -----------------------------------------------------------------------------------------------


def verify_pushed(
    repo_id: str,
    revision: str,
    local: Any,
    token: str | None,
    *,
    probe: Probe | None = None,
    trust_remote_code: bool = False,
    atol: float = 1e-4,
) -> dict[str, Any]:
    """Download `repo_id@revision` into a throw-away cache and prove it is the local model: with a local folder,
    every file byte-identical; then transformers loads it (no remote code unless `trust_remote_code`) and its
    logits on fixed token ids match `probe` (or the local model object `local`) within `atol`. Raise
    LayerPruneError otherwise; return a small record for the report.
    """
    from huggingface_hub import snapshot_download

    local_dir = Path(local) if isinstance(local, (str, Path)) else None
    if probe is None:
        model = local if local_dir is None else load_checkpoint(local_dir, trust_remote_code=trust_remote_code)
        probe = probe_model(model)
    with tempfile.TemporaryDirectory(prefix="layerprune-verify-") as cache:
        with hub_errors(f"downloading {repo_id}@{revision} to verify it", token):
            pushed = Path(retrying("snapshot_download", snapshot_download, repo_id, revision=revision,
                                   cache_dir=cache, token=token))
        pushed_files = local_files(pushed)
        if local_dir is not None:
            _same_files(local_dir, pushed, pushed_files, f"{repo_id}@{revision}")
        remote_model = load_checkpoint(pushed, dtype=probe.dtype, trust_remote_code=trust_remote_code,
                                       label=f"{repo_id}@{revision}")
        actual = probe_model(remote_model, probe.ids).logits
        del remote_model
    expected = probe.logits
    diff = (expected - actual).abs().max().item() if expected.shape == actual.shape else float("inf")
    if not diff <= atol:
        raise HubError(f"{repo_id}@{revision} does not reproduce the local model: max |logit diff| {diff:.3g} > {atol:g}")
    return {"repo_id": repo_id, "revision": revision, "commit": pushed.name, "files": len(pushed_files),
            "probe_tokens": probe.ids.numel(), "max_abs_diff": diff, "atol": atol}


def _same_files(local_dir: Path, pushed: Path, pushed_files: list[str], label: str) -> None:
    local = local_files(local_dir)
    missing = sorted(set(local) - set(pushed_files))
    if missing:
        raise HubError(f"{label} lacks {', '.join(missing)} after the push")
    differ = [name for name in local if sha256(local_dir / name) != sha256(pushed / name)]
    if differ:
        raise HubError(f"{label} holds different bytes than the local folder for {', '.join(differ[:3])}")


def _api(token: str | None):
    from huggingface_hub import HfApi

    from hf_layerprune import __version__

    return HfApi(token=token, library_name="hf-layerprune", library_version=__version__)


def verify_pushed_gguf(repo_id: str, revision: str, directory: Path, token: str | None) -> list[dict[str, Any]]:
    """Each .gguf file of `directory` downloaded back from `repo_id@revision`: byte-identical (SHA-256) and read back
    with the blocks and tensors it was written with."""
    from huggingface_hub import hf_hub_download

    from hf_layerprune.surgery.gguf_surgery import read_header

    checks = []
    for name in sorted(p.name for p in Path(directory).glob("*.gguf")):
        local = Path(directory) / name
        with tempfile.TemporaryDirectory(prefix="layerprune-verify-gguf-") as cache:
            with hub_errors(f"downloading {name} from {repo_id}@{revision} to verify it", token):
                pushed = Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache, token=token))
            digest = sha256(local)  # each file is hashed once: a GGUF can be many GB
            if sha256(pushed) != digest:
                raise HubError(f"{repo_id}@{revision}: {name} differs from the local file after the push")
            mine, theirs = read_header(local), read_header(pushed)
            try:
                if (theirs.block_count, len(theirs.tensors)) != (mine.block_count, len(mine.tensors)):
                    raise HubError(f"{repo_id}@{revision}: {name} does not read back as written")
                checks.append({"file": name, "sha256": digest, "block_count": theirs.block_count,
                               "tensors": len(theirs.tensors)})
            finally:
                mine.buf.close()
                theirs.buf.close()
    return checks


# ------------------------------------------------------------------------------------------------ base card


def _card_fields(data: Any) -> dict[str, Any]:
    """License and friends from a ModelCardData or a cardData dict."""
    if data is None:
        return {}
    get = data.get if hasattr(data, "get") else (lambda k, d=None: getattr(data, k, d))
    out = {}
    for key in ("license", "license_name", "license_link", "language"):
        value = get(key, None)
        if value:
            out[key] = value
    gated = get("extra_gated_prompt", None) or get("extra_gated_fields", None) or get("gated", None)
    if gated:
        out["gated"] = True
    return out


def license_from_card_file(path: str | os.PathLike) -> dict[str, Any]:
    """License fields of a README.md (model card) file."""
    from huggingface_hub import ModelCard

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"base model card not found: {path}")
    try:
        card = ModelCard.load(path, ignore_metadata_errors=True)
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        raise ConfigError(f"cannot read the base model card {path}: {type(exc).__name__}") from None
    info = _card_fields(card.data)
    info["source"] = f"card file {path.name}"
    return info


def find_base_card(base: str | None, revision: str | None = None, *, online: bool | None = None) -> dict[str, Any] | None:
    """License fields of the card of base model `base` (a local path or Hub id, at `revision`): its local README.md,
    the Hub cache, then the Hub API (unless `online` is False, or None with HF_HUB_OFFLINE). None if unreadable."""
    if not isinstance(base, str) or not base:
        return None
    path = Path(base).expanduser()
    folder = path.parent if path.is_file() else path
    if folder.is_dir() and (folder / CARD_FILENAME).is_file():
        info = license_from_card_file(folder / CARD_FILENAME)
        info["source"] = "the base model's README.md"
        return info
    rid = hub_id(base)
    if rid is None:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(rid, CARD_FILENAME, revision=revision)
    except Exception:  # noqa: BLE001 - a broken cache is not fatal
        cached = None
    if isinstance(cached, str) and os.path.isfile(cached):
        info = license_from_card_file(cached)
        info["source"] = f"{HUB}/{rid} (cached card)"
        return info
    import huggingface_hub.constants as constants

    if online is False or (online is None and constants.HF_HUB_OFFLINE):
        return None
    try:
        info_obj = _api(None).model_info(rid, revision=revision, expand=["cardData", "gated"])
    except Exception:  # noqa: BLE001 - offline, private, gated or missing: the card says "unknown"
        return None
    info = _card_fields(getattr(info_obj, "card_data", None))
    if getattr(info_obj, "gated", None):
        info["gated"] = True
    info["source"] = f"{HUB}/{rid}"
    return info


# ------------------------------------------------------------------------------------------------ collections
COLLECTION_TITLE_MAX, COLLECTION_NOTE_MAX = 60, 500  # the Hub's limits


def publish_collection(title: str, namespace: str, items: list[tuple[str, str]], *, token: str | None,
                       description: str | None = None, private: bool = False) -> str:
    """Create the collection `namespace`/`title` (or reuse the one with that title) and make `items` (repo id, note)
    its first entries in the given order, each with its note; items it already has are updated, others left after
    them. Returns the collection's URL."""
    api = _api(token)
    title = title[:COLLECTION_TITLE_MAX]
    with hub_errors(f"updating the collection {title!r}", token):
        collection = retrying("create_collection", api.create_collection, title, namespace=namespace,
                              description=description, private=private, exists_ok=True)
        present = {item.item_id for item in collection.items}
        for repo_id, note in items:
            if repo_id not in present:
                collection = retrying("add_collection_item", api.add_collection_item, collection.slug, repo_id,
                                      "model", note=note[:COLLECTION_NOTE_MAX], exists_ok=True)
        by_id = {item.item_id: item for item in collection.items}
        for position, (repo_id, note) in enumerate(items):
            item = by_id[repo_id]
            if item.position != position or item.note != note[:COLLECTION_NOTE_MAX]:
                retrying("update_collection_item", api.update_collection_item, collection.slug, item.item_object_id,
                         note=note[:COLLECTION_NOTE_MAX], position=position)
                collection = retrying("get_collection", api.get_collection, collection.slug)
                by_id = {i.item_id: i for i in collection.items}
    return collection.url


def collection_models(title: str, namespace: str, *, token: str | None) -> list[str]:
    """The model repos already in `namespace`'s collection called `title` ([] when there is none yet)."""
    api = _api(token)
    title = title[:COLLECTION_TITLE_MAX]
    with hub_errors(f"reading the collections of {namespace}", token):
        for found in retrying("list_collections", lambda: list(api.list_collections(owner=namespace, limit=100))):
            if found.title == title:
                collection = retrying("get_collection", api.get_collection, found.slug)
                return [item.item_id for item in collection.items if item.item_type == "model"]
    return []


def pushed_json(repo_id: str, filename: str, *, token: str | None) -> dict[str, Any] | None:
    """A JSON file of a published repo, e.g. a variant's layerprune.json (None when the repo has no such file)."""
    import json

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RemoteEntryNotFoundError

    with hub_errors(f"reading {filename} of {repo_id}", token):
        try:
            path = retrying("hf_hub_download", hf_hub_download, repo_id, filename, token=token)
        except (EntryNotFoundError, RemoteEntryNotFoundError):
            return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------ sources
GATED_HELP = ("accept its licence on its page at {url} (while logged in), then log in here with `hf auth login` "
              "(or set HF_TOKEN) with that account")


def hub_files(source: Source, token: str | None = None) -> list[str]:
    """The files of a Hub source, after checking it is a transformers checkpoint this token may download.

    Each refusal says what to do: a gated repo names its licence page and `hf auth login`; a missing repo says
    whether its owner exists; Meta's original-format repos name their `-hf` sibling when there is one."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi(token=token)
    try:
        files = api.list_repo_files(source.name, revision=source.revision)
        api.auth_check(source.name)
    except GatedRepoError:
        from huggingface_hub import constants

        raise HubAccessError(f"{source.name} is gated: " + GATED_HELP.format(url=f"{constants.ENDPOINT}/{source.name}")) from None
    except RepositoryNotFoundError:
        raise HubAccessError(f"model {source.name!r} not found on the Hub{_owner_hint(api, source.name)}") from None
    except RevisionNotFoundError:
        raise ConfigError(f"revision {source.revision!r} not found in {source.name}") from None
    except (HfHubHTTPError, OSError) as exc:
        raise HubError(f"could not reach the Hub for {source.name}: {type(exc).__name__}") from None
    if is_meta_format(files):
        sibling = f"{source.name}-hf"
        hint = f"use {sibling}, its transformers checkpoint" if _repo_exists(api, sibling) else \
            "use its transformers (-hf) checkpoint, or convert it with transformers' convert_llama_weights_to_hf.py"
        raise CheckpointError(f"{source.name} is in Meta's original format (params.json, consolidated.*.pth), which "
                              f"transformers does not load: {hint}")
    if "config.json" not in files and not any(f.endswith(".gguf") for f in files):
        raise CheckpointError(f"{source.name} has no config.json: it is not a transformers checkpoint")
    return files


def _repo_exists(api, repo_id: str) -> bool:
    try:
        return bool(api.repo_exists(repo_id))
    except Exception:  # unreachable or refused: no hint rather than a wrong one
        return False


def _owner_hint(api, repo_id: str) -> str:
    """Whether the repo's owner exists (a typo in the model name, or in the owner); private repos look missing."""
    owner = repo_id.split("/")[0] if "/" in repo_id else None
    if owner is None:
        return " (give it as owner/name)"
    for lookup in (api.get_user_overview, api.get_organization_overview):
        try:
            lookup(owner)
            return (f"; the owner {owner!r} exists: check the model name (or, for a private repo, that your token "
                    "can read it)")
        except Exception:
            continue
    return f"; no user or organization named {owner!r} exists on the Hub"


def local_checkpoint(source: Source, *, allow_pickle: bool = False, token: str | None = None) -> Path:
    """A local directory holding the source checkpoint's safetensors, config and tokenizer files."""
    if source.kind == "dir":
        return source.path  # type: ignore[return-value]
    if source.kind == "gguf":
        raise ConfigError("GGUF files are pruned in memory; the on-disk path needs safetensors")
    from huggingface_hub import snapshot_download

    files = hub_files(source, token)
    if not any(f.endswith(".safetensors") for f in files):
        if not allow_pickle:
            raise ConfigError(
                f"{source.name} holds only pickle (.bin) weights, which can run code when loaded; pass --allow-pickle if you trust it"
            )
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken", "README.md", "additional_chat_templates/*"]
    if allow_pickle and not any(f.endswith(".safetensors") for f in files):
        patterns.append("*.bin")
    return Path(snapshot_download(source.name, revision=source.revision, allow_patterns=patterns, token=token))


def resolved_revision(source: Source, token: str | None = None) -> str | None:
    """The commit sha of a Hub source (recorded so a run can be reproduced exactly)."""
    if source.kind != "hub":
        return None
    from huggingface_hub import HfApi

    try:
        return HfApi(token=token).model_info(source.name, revision=source.revision).sha
    except Exception:  # offline or mirrors without sha: the requested revision is still recorded
        return source.revision
