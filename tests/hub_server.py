"""A local Hugging Face Hub for tests: the real `huggingface_hub` client and `transformers` talk to it over HTTP.

Standard library only (`http.server.ThreadingHTTPServer` in a thread). It implements the part of the Hub API that
publishing and downloading a model use, with the same URLs, headers, status and error codes as huggingface.co
(as read by huggingface_hub 2.4.0):

- ``GET  /api/whoami-v2``; ``POST /api/repos/create`` (409 when it exists); ``POST /api/validate-yaml``
- ``GET  /api/models/{repo}[/revision/{rev}]`` (model_info, ``?blobs=1`` adds sizes and LFS info; ``cardData``:
  the README's front matter)
- ``GET  /api/models/{repo}/tree/{rev}[/{path}]?recursive=&expand=``; ``GET /api/models/{repo}/refs``
- ``POST|DELETE /api/models/{repo}/branch/{branch}``
- ``POST /api/models/{repo}/preupload/{rev}``; ``POST /{repo}.git/info/lfs/objects/batch``; ``PUT /_lfs/{oid}``
- ``POST /api/models/{repo}/commit/{rev}`` (NDJSON; ``?create_pr=1`` opens ``refs/pr/N``; ``parentCommit``)
- ``HEAD|GET /{repo}/resolve/{rev}/{path}`` (``X-Repo-Commit``, ``ETag``, ``Content-Length``, ``Range``)

Errors carry ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``) and a JSON ``error``.

State lives on disk under ``root``: ``objects/<sha256>`` (file contents), ``commits/<oid>.json`` (a full file map
plus the parent commit) and ``repos/<namespace>/<name>.json`` (visibility and refs: branch or PR -> commit).

Tokens are registered with :meth:`HubServer.add_token`; writes need a token allowed to write to the namespace.
Failure injection: ``fail_lfs_every = N`` makes every Nth LFS PUT answer ``fail_lfs_status`` (500 by default,
which the client retries; 403 is not retried), ``fail_commit_status = S`` makes commit calls answer S.
:meth:`HubServer.inject` answers chosen endpoints with an error (429 with ``Retry-After``, 5xx, ...) for the
next N calls, before handling them or after (a lost answer: the call took effect); ``truncate_lfs_puts = N`` stores
only the first half of the next N LFS uploads (storage corruption that only a download can reveal).
Also served: ``GET /api/models/{repo}/commits/{rev}`` (list_repo_commits), ``DELETE /api/repos/delete``,
``GET /api/models/{repo}/auth-check`` and gated repos (:meth:`HubServer.gate`: files answer 401/403 ``GatedRepo``),
``GET /api/users/{name}/overview`` and ``/api/organizations/{name}/overview`` (404 for unknown owners).
Collections: ``GET /api/collections?owner=``, ``POST /api/collections`` (409 with the slug for a title the namespace already has),
``GET /api/collections/{slug}``, ``POST .../items`` (the model must exist; 409 when present) and
``PATCH .../items/{id}`` (note, position), kept in :attr:`HubServer.collections`.
Model tree: a commit whose README.md has invalid ``base_model`` / ``base_model_relation`` is refused (400) as the
Hub does; a base in a namespace this server knows must exist here (:meth:`model_tree` reads them back).
Inspection: :meth:`files`, :meth:`read`, :meth:`commits`, :meth:`refs`, :attr:`requests`, :meth:`count`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".onnx", ".msgpack", ".npz", ".zip")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores anything from 10 MB in LFS
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES)
SEGMENT = r"([^/?]+)"
SLUG = r"([^/?]+/[^/?]+)"  # a collection: namespace/title-id


class HubError(Exception):
    """An HTTP error answered to the client."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass
class Token:
    """What `whoami-v2` says about a token, and what it may write."""

    user: str
    role: str = "write"  # "read" | "write" | "fineGrained"
    orgs: dict[str, str] = field(default_factory=dict)  # org name -> roleInOrg ("read", "write", "admin")
    scoped: dict[str, list[str]] = field(default_factory=dict)  # fineGrained: namespace -> permissions

    def whoami(self) -> dict[str, Any]:
        access = {"displayName": "test-token", "role": self.role}
        if self.role == "fineGrained":
            access["fineGrained"] = {
                "canReadGatedRepos": False,
                "global": [],
                "scoped": [
                    {"entity": {"type": "user" if ns == self.user else "org", "name": ns}, "permissions": perms}
                    for ns, perms in self.scoped.items()
                ],
            }
        return {
            "type": "user",
            "name": self.user,
            "fullname": self.user.title(),
            "orgs": [{"type": "org", "name": org, "roleInOrg": role} for org, role in self.orgs.items()],
            "auth": {"type": "access_token", "accessToken": access},
        }

    def can_read(self, namespace: str) -> bool:
        return namespace == self.user or namespace in self.orgs

    def can_write(self, namespace: str) -> bool:
        if self.role == "read" or not self.can_read(namespace):
            return False
        if self.role == "fineGrained":
            return "repo.write" in self.scoped.get(namespace, [])
        return self.orgs.get(namespace, "write") != "read"


BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")


def card_metadata(card: bytes) -> dict[str, Any]:
    """A README.md's YAML front matter (model_info's `cardData`); {} when it has none or it does not parse."""
    match = re.match(r"^---\n(.*?)\n---", card.decode("utf-8", errors="replace"), re.DOTALL)
    try:
        metadata = (yaml.safe_load(match.group(1)) if match else None) or {}
    except yaml.YAMLError:
        metadata = {}
    return metadata if isinstance(metadata, dict) else {}


def model_tree_of(card: bytes) -> dict[str, Any]:
    """`base_model` (as a list) and `base_model_relation` of a README.md's YAML front matter."""
    metadata = card_metadata(card)
    bases, relation = metadata.get("base_model"), metadata.get("base_model_relation")
    return {"base_model": [] if bases is None else bases if isinstance(bases, list) else [bases],
            "base_model_relation": relation}


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class _Discard:
    """A write sink: the answer of a call whose response an injected fault replaces."""

    def write(self, data: bytes) -> int:
        return len(data)

    def flush(self) -> None:
        pass


class Store:
    """Repos, commits and file contents on disk. Callers hold `lock` around read-modify-write sequences."""

    def __init__(self, root: Path):
        self.root = Path(root)
        for sub in ("objects", "commits", "repos", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._counter = 0

    # --- objects -------------------------------------------------------------------------------------------
    def object_path(self, sha256: str) -> Path:
        return self.root / "objects" / sha256

    def has_object(self, sha256: str) -> bool:
        return self.object_path(sha256).exists()

    def put_bytes(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        if not self.has_object(sha):
            self._commit_tmp_file(self._write_tmp([data]), sha)
        return sha

    def put_stream(self, chunks: Iterator[bytes], expected_sha256: str, expected_size: int) -> None:
        """Store a streamed upload (never held in memory) after checking its hash and size."""
        digest, size = hashlib.sha256(), 0

        def counted():
            nonlocal size
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                yield chunk

        tmp = self._write_tmp(counted())
        if digest.hexdigest() != expected_sha256 or size != expected_size:
            tmp.unlink()
            raise HubError(400, f"uploaded content does not match oid {expected_sha256} / size {expected_size}")
        self._commit_tmp_file(tmp, expected_sha256)

    def _write_tmp(self, chunks) -> Path:
        fd, name = tempfile.mkstemp(dir=self.root / "tmp")
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        return Path(name)

    def _commit_tmp_file(self, tmp: Path, sha256: str) -> None:
        os.replace(tmp, self.object_path(sha256))

    # --- repos and commits ---------------------------------------------------------------------------------
    def repo_path(self, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_id}.json"

    def repo(self, repo_id: str) -> dict[str, Any] | None:
        path = self.repo_path(repo_id)
        return json.loads(path.read_text()) if path.exists() else None

    def save_repo(self, repo_id: str, repo: dict[str, Any]) -> None:
        path = self.repo_path(repo_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(repo, indent=1))

    def commit(self, oid: str) -> dict[str, Any]:
        return json.loads((self.root / "commits" / f"{oid}.json").read_text())

    def new_commit(self, parent: str | None, files: dict[str, dict], summary: str, description: str = "") -> str:
        with self.lock:
            self._counter += 1
            body = {"parent": parent, "files": files, "summary": summary, "description": description,
                    "date": now_iso(), "n": self._counter, "t": time.time()}
            oid = hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()
            (self.root / "commits" / f"{oid}.json").write_text(json.dumps({"oid": oid, **body}, indent=1))
        return oid

    def resolve(self, repo: dict[str, Any], revision: str) -> str | None:
        """Commit oid of a branch, `refs/heads/<b>`, `refs/pr/<n>` or (a prefix of) a commit id of the repo."""
        refs = repo["refs"]
        name = revision.removeprefix("refs/heads/")
        if name in refs:
            return refs[name]
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            for head in refs.values():
                for commit in self.history(head):
                    if commit["oid"].startswith(revision):
                        return commit["oid"]
        return None

    def history(self, oid: str | None) -> Iterator[dict[str, Any]]:
        while oid:
            commit = self.commit(oid)
            yield commit
            oid = commit["parent"]


@dataclass
class Fault:
    """An injected error: the next `times` requests matching `method` and the `path` regex get `status`."""

    method: str
    path: str
    status: int
    times: int = 1
    retry_after: str | None = None
    after: bool = False  # handle the request first, then answer the error (the answer is "lost")

    def matches(self, method: str, path: str) -> bool:
        return self.times > 0 and method == self.method and re.search(self.path, path) is not None


class HubServer:
    """The server. `start()` runs it in a daemon thread; `url` is the value for HF_ENDPOINT."""

    def __init__(self, root: str | os.PathLike):
        self.store = Store(Path(root))
        self.tokens: dict[str, Token] = {}
        self.requests: list[dict[str, Any]] = []
        self.pending_lfs: dict[str, int] = {}  # oid -> size announced by an LFS batch call
        self.fail_lfs_every: int | None = None
        self.fail_lfs_status = 500
        self.fail_commit_status: int | None = None
        self.truncate_lfs_puts = 0
        self.organizations: set[str] = set()  # organizations that exist besides the tokens' own
        self.collections: dict[str, dict[str, Any]] = {}  # slug -> the collection as the API returns it
        self.faults: list[Fault] = []
        self._lfs_puts = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> HubServer:
        handler = type("BoundHandler", (Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def add_token(self, token: str, user: str, role: str = "write", orgs: dict[str, str] | None = None,
                  scoped: dict[str, list[str]] | None = None) -> str:
        self.tokens[token] = Token(user, role, dict(orgs or {}), dict(scoped or {}))
        return token

    # --- inspection helpers for tests ----------------------------------------------------------------------
    def refs(self, repo_id: str) -> dict[str, str]:
        repo = self.store.repo(repo_id)
        return dict(repo["refs"]) if repo else {}

    def files(self, repo_id: str, revision: str = "main") -> dict[str, str]:
        """{path: sha256 of the content} at `revision`."""
        commit = self.store.commit(self._resolve(repo_id, revision))
        return {path: entry["sha256"] for path, entry in commit["files"].items()}

    def read(self, repo_id: str, path: str, revision: str = "main") -> bytes:
        return self.store.object_path(self.files(repo_id, revision)[path]).read_bytes()

    def commits(self, repo_id: str, revision: str = "main") -> list[dict[str, Any]]:
        """Commits reachable from `revision`, newest first: {oid, parent, summary, files, ...}."""
        return list(self.store.history(self._resolve(repo_id, revision)))

    def model_tree(self, repo_id: str, revision: str = "main") -> dict[str, Any]:
        """The card's model-tree fields at `revision`: {"base_model": [ids], "base_model_relation": str | None}."""
        return model_tree_of(self.read(repo_id, "README.md", revision))

    def namespaces(self) -> set[str]:
        """Users and organizations this server knows (their repos can be checked for existence)."""
        names = {t.user for t in self.tokens.values()} | set(self.organizations)
        names |= {org for t in self.tokens.values() for org in t.orgs}
        repos = self.store.root / "repos"
        return names | ({p.name for p in repos.iterdir() if p.is_dir()} if repos.is_dir() else set())

    def count(self, method: str, path_prefix: str = "") -> int:
        return sum(1 for r in self.requests if r["method"] == method and r["path"].startswith(path_prefix))

    def env(self, cache_dir: str | os.PathLike, token: str | None = None) -> dict[str, str]:
        """Environment variables that point a fresh process (huggingface_hub is read at import) at this server."""
        env = {"HF_ENDPOINT": self.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_CACHE": str(cache_dir),
               "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_TOKEN_PATH": str(Path(cache_dir) / "no-token-file")}
        if token is not None:
            env["HF_TOKEN"] = token
        return env

    def _resolve(self, repo_id: str, revision: str) -> str:
        oid = self.store.resolve(self.store.repo(repo_id), revision)
        assert oid is not None, f"{repo_id}@{revision} not found"
        return oid

    def gate(self, repo_id: str, allowed: tuple[str, ...] = ()) -> None:
        """Make `repo_id` gated: its files are served only to `allowed` users (and writers of its namespace)."""
        with self.store.lock:
            repo = self.store.repo(repo_id)
            repo["gated"], repo["gated_allowed"] = True, list(allowed)
            self.store.save_repo(repo_id, repo)

    def inject(self, method: str, path: str, status: int, times: int = 1, retry_after: str | None = None,
               after: bool = False) -> Fault:
        """Answer the next `times` `method` requests whose path matches the regex `path` with `status`."""
        fault = Fault(method, path, status, times, retry_after, after)
        self.faults.append(fault)
        return fault

    def _fault(self, method: str, path: str) -> Fault | None:
        with self.store.lock:
            fault = next((f for f in self.faults if f.matches(method, path)), None)
            if fault is not None:
                fault.times -= 1
            return fault

    def _next_lfs_put_fails(self) -> bool:
        with self.store.lock:
            self._lfs_puts += 1
            return bool(self.fail_lfs_every) and self._lfs_puts % self.fail_lfs_every == 0


class Handler(BaseHTTPRequestHandler):
    """One request: authenticate, route, answer JSON (or a file), log."""

    protocol_version = "HTTP/1.1"
    hub: HubServer  # set on the bound subclass

    ROUTES = (
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", rf"/api/models/{SEGMENT}/{SEGMENT}", "model_info"),
        ("GET", rf"/api/models/{SEGMENT}/{SEGMENT}/revision/{SEGMENT}", "model_info"),
        ("GET", rf"/api/models/{SEGMENT}/{SEGMENT}/tree/{SEGMENT}(?:/(.+))?", "tree"),
        ("GET", rf"/api/models/{SEGMENT}/{SEGMENT}/refs", "list_refs"),
        ("GET", rf"/api/models/{SEGMENT}/{SEGMENT}/commits/{SEGMENT}", "list_commits"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("GET", rf"/api/models/{SEGMENT}/{SEGMENT}/auth-check", "auth_check"),
        ("GET", rf"/api/users/{SEGMENT}/overview", "user_overview"),
        ("GET", rf"/api/organizations/{SEGMENT}/overview", "org_overview"),
        ("POST", rf"/api/models/{SEGMENT}/{SEGMENT}/branch/{SEGMENT}", "create_branch"),
        ("DELETE", rf"/api/models/{SEGMENT}/{SEGMENT}/branch/{SEGMENT}", "delete_branch"),
        ("POST", rf"/api/models/{SEGMENT}/{SEGMENT}/preupload/{SEGMENT}", "preupload"),
        ("POST", rf"/api/models/{SEGMENT}/{SEGMENT}/commit/{SEGMENT}", "commit"),
        ("POST", rf"/{SEGMENT}/{SEGMENT}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/_lfs/([0-9a-f]{64})", "lfs_put"),
        ("GET", rf"/{SEGMENT}/{SEGMENT}/resolve/{SEGMENT}/(.+)", "resolve"),
        ("HEAD", rf"/{SEGMENT}/{SEGMENT}/resolve/{SEGMENT}/(.+)", "resolve"),
        ("POST", r"/api/collections", "create_collection"),
        ("GET", r"/api/collections", "list_collections"),
        ("GET", rf"/api/collections/{SLUG}", "get_collection"),
        ("POST", rf"/api/collections/{SLUG}/items", "add_collection_item"),
        ("PATCH", rf"/api/collections/{SLUG}/items/{SEGMENT}", "update_collection_item"),
    )

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def do_PATCH(self):
        self._dispatch()

    # --- plumbing ------------------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.user: Token | None = None
        self._body_read = False
        status = 500
        # logged before the answer goes out (a test may read the log as soon as its client has the response)
        record = {"method": self.command, "path": url.path, "query": dict(self.query), "status": None, "user": None}
        self.hub.requests.append(record)
        fault = self.hub._fault(self.command, url.path)
        try:
            if fault is not None and not fault.after:
                self._drain()
                raise HubError(fault.status, f"injected HTTP {fault.status}",
                               headers={"Retry-After": fault.retry_after} if fault.retry_after else None)
            self.user = self._authenticate()
            for method, pattern, name in self.ROUTES:
                match = re.fullmatch(pattern, url.path)
                if method == self.command and match:
                    if fault is not None:  # after: the call takes effect, its answer is replaced by the error
                        self.wfile, real = _Discard(), self.wfile
                        try:
                            getattr(self, name)(*[unquote(g) if g else g for g in match.groups()])
                        finally:
                            self.wfile = real
                        raise HubError(fault.status, f"injected HTTP {fault.status} after the call took effect")
                    status = getattr(self, name)(*[unquote(g) if g else g for g in match.groups()])
                    break
            else:
                raise HubError(404, f"no route for {self.command} {url.path}")
        except HubError as err:
            status = err.status
            self._send_error(err)
        finally:
            record.update(status=status, user=self.user.user if self.user else None)

    def _authenticate(self) -> Token | None:
        header = self.headers.get("Authorization", "")
        if not header:
            return None
        token = header.removeprefix("Bearer ").strip()
        if token not in self.hub.tokens:
            self._drain()
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.hub.tokens[token]

    def _body_chunks(self) -> Iterator[bytes]:
        """The request body, streamed: Content-Length or chunked transfer encoding."""
        self._body_read = True
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return
                yield self.rfile.read(size)
                self.rfile.readline()
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 20))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk

    def _body(self) -> bytes:
        return b"".join(self._body_chunks())

    def _json_body(self) -> Any:
        try:
            return json.loads(self._body() or b"{}")
        except ValueError:
            raise HubError(400, "request body is not valid JSON")

    def _drain(self) -> None:
        if not self._body_read:
            for _ in self._body_chunks():
                pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> int:
        self._drain()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        return status

    def _send_json(self, payload: Any, status: int = 200, headers: dict[str, str] | None = None,
                   content_type: str = "application/json") -> int:
        return self._send(status, json.dumps(payload).encode(), headers, content_type)

    def _send_error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        headers.update(err.headers)
        self._send_json({"error": err.message}, err.status, headers)

    # --- access checks -------------------------------------------------------------------------------------
    def _repo(self, ns: str, name: str, write: bool = False) -> dict[str, Any]:
        repo_id = f"{ns}/{name}"
        repo = self.hub.store.repo(repo_id)
        visible = repo is not None and (not repo["private"] or (self.user and self.user.can_read(ns)))
        if not visible:
            raise HubError(401 if self.user is None else 404, f"Repository Not Found for {repo_id}", "RepoNotFound")
        if write:
            self._require_write(ns)
        return repo

    def _require_write(self, namespace: str) -> None:
        if self.user is None:
            raise HubError(401, "You must be authenticated to write")
        if not self.user.can_write(namespace):
            raise HubError(403, f"You don't have the rights to write to {namespace}")

    def _commit_of(self, repo: dict[str, Any], revision: str) -> dict[str, Any]:
        oid = self.hub.store.resolve(repo, revision)
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.hub.store.commit(oid)

    # --- account -------------------------------------------------------------------------------------------
    def whoami(self) -> int:
        if self.user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self._send_json(self.user.whoami())

    def validate_yaml(self) -> int:
        content = self._json_body().get("content", "")
        match = re.match(r"^---\n(.*?)\n---", content, re.DOTALL)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as exc:
            return self._send_json({"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []}, 400)
        if metadata is not None and not isinstance(metadata, dict):
            return self._send_json({"errors": [{"message": "metadata must be a mapping"}], "warnings": []}, 400)
        return self._send_json({"errors": [], "warnings": []})

    # --- repos ---------------------------------------------------------------------------------------------
    def create_repo(self) -> int:
        payload = self._json_body()
        if payload.get("type", "model") != "model":
            raise HubError(400, "this test hub only hosts model repos")
        if self.user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        namespace = payload.get("organization") or self.user.user
        name = payload.get("name", "")
        if not re.fullmatch(r"[\w.\-]{1,96}", name) or "--" in name or ".." in name:
            raise HubError(400, f"invalid repo name {name!r}")
        self._require_write(namespace)
        repo_id, url = f"{namespace}/{name}", f"{self.hub.url}/{namespace}/{name}"
        store = self.hub.store
        with store.lock:
            if store.repo(repo_id) is not None:
                return self._send_json({"error": "You already created this model repo", "url": url}, 409)
            initial = store.new_commit(None, {".gitattributes": self._file_entry(GITATTRIBUTES.encode())}, "initial commit")
            private = payload.get("visibility", "public") != "public" or bool(payload.get("private"))
            store.save_repo(repo_id, {"private": private, "refs": {"main": initial}, "next_pr": 1,
                                      "created": now_iso()})
        return self._send_json({"url": url, "name": repo_id, "id": repo_id})

    def model_info(self, ns: str, name: str, revision: str = "main") -> int:
        repo = self._repo(ns, name)
        commit = self._commit_of(repo, revision)
        blobs = self.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path, entry in sorted(commit["files"].items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=entry["size"], blobId=self._git_oid(entry))
                if entry["lfs"]:
                    sibling["lfs"] = {"size": entry["size"], "sha256": entry["sha256"],
                                      "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"]))}
            siblings.append(sibling)
        return self._send_json({
            "_id": hashlib.sha1(f"{ns}/{name}".encode()).hexdigest()[:24], "id": f"{ns}/{name}",
            "modelId": f"{ns}/{name}", "author": ns, "sha": commit["oid"], "lastModified": commit["date"],
            "createdAt": repo["created"], "private": repo["private"], "disabled": False, "gated": False,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
            **({"cardData": card_metadata(self.hub.store.object_path(commit["files"]["README.md"]["sha256"]).read_bytes())}
               if "README.md" in commit["files"] else {}),
        })

    def list_refs(self, ns: str, name: str) -> int:
        repo = self._repo(ns, name)
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
                    for b, oid in repo["refs"].items() if not b.startswith("refs/pr/")]
        prs = [{"name": b, "ref": b, "targetCommit": oid} for b, oid in repo["refs"].items() if b.startswith("refs/pr/")]
        payload = {"branches": branches, "converts": [], "tags": []}
        if self.query.get("include_prs"):
            payload["pullRequests"] = prs
        return self._send_json(payload)

    def create_branch(self, ns: str, name: str, branch: str) -> int:
        repo = self._repo(ns, name, write=True)
        start = self._json_body().get("startingPoint") or "main"
        store = self.hub.store
        with store.lock:
            repo = store.repo(f"{ns}/{name}")
            if branch in repo["refs"]:
                raise HubError(409, f"Reference refs/heads/{branch} already exists")
            repo["refs"][branch] = self._commit_of(repo, start)["oid"]
            store.save_repo(f"{ns}/{name}", repo)
        return self._send_json({})

    def _check_gate(self, repo_id: str, repo: dict[str, Any]) -> None:
        """A gated repo's files are served only to users the owner let in (its metadata and file list stay public)."""
        if not repo.get("gated"):
            return
        ns = repo_id.split("/")[0]
        if self.user is not None and (self.user.user in repo.get("gated_allowed", []) or self.user.can_write(ns)):
            return
        raise HubError(401 if self.user is None else 403,
                       f"Access to model {repo_id} is restricted. You must have access to it and be authenticated "
                       "to access it. Please log in.", "GatedRepo")

    def auth_check(self, ns: str, name: str) -> int:
        self._check_gate(f"{ns}/{name}", self._repo(ns, name))
        return self._send_json({})

    def user_overview(self, name: str) -> int:
        if name not in {t.user for t in self.hub.tokens.values()}:
            raise HubError(404, f"User {name} not found")
        return self._send_json({"user": name, "fullname": name, "avatarUrl": "", "type": "user"})

    def org_overview(self, name: str) -> int:
        orgs = {org for t in self.hub.tokens.values() for org in t.orgs} | set(self.hub.organizations)
        if name not in orgs:
            raise HubError(404, f"Organization {name} not found")
        return self._send_json({"name": name, "fullname": name, "avatarUrl": ""})

    def list_commits(self, ns: str, name: str, revision: str) -> int:
        repo = self._repo(ns, name)
        head = self._commit_of(repo, revision)
        return self._send_json([
            {"id": c["oid"], "title": c["summary"], "message": c.get("description", ""),
             "authors": [], "date": c["date"]}
            for c in self.hub.store.history(head["oid"])
        ])

    def delete_repo(self) -> int:
        payload = self._json_body()
        namespace = payload.get("organization") or (self.user.user if self.user else None)
        repo_id = f"{namespace}/{payload.get('name', '')}"
        self._require_write(namespace or "")
        with self.hub.store.lock:
            path = self.hub.store.repo_path(repo_id)
            if not path.exists():
                raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
            path.unlink()
        return self._send_json({})

    def delete_branch(self, ns: str, name: str, branch: str) -> int:
        self._repo(ns, name, write=True)
        store = self.hub.store
        with store.lock:
            repo = store.repo(f"{ns}/{name}")
            if branch == "main" or branch not in repo["refs"]:
                raise HubError(400 if branch == "main" else 404, f"cannot delete branch {branch}")
            del repo["refs"][branch]
            store.save_repo(f"{ns}/{name}", repo)
        return self._send_json({})

    # --- files ---------------------------------------------------------------------------------------------
    def tree(self, ns: str, name: str, revision: str, path: str | None = None) -> int:
        repo = self._repo(ns, name)
        commit = self._commit_of(repo, revision)
        prefix = f"{path.strip('/')}/" if path else ""
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        expand = self.query.get("expand", "").lower() in ("1", "true")
        entries: dict[str, dict[str, Any]] = {}
        for file_path, entry in sorted(commit["files"].items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix):].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):  # folders on the way
                folder = prefix + "/".join(parts[:i])
                entries.setdefault(folder, {"type": "directory", "path": folder,
                                            "oid": hashlib.sha1(folder.encode()).hexdigest()})
            if recursive or len(parts) == 1:
                entries[file_path] = self._tree_file(file_path, entry)
        if path and not entries:
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound")
        if expand:
            last = {"id": commit["oid"], "title": commit["summary"], "date": commit["date"]}
            for entry in entries.values():
                entry["lastCommit"] = last
        return self._send_json(list(entries.values()))

    def _tree_file(self, path: str, entry: dict[str, Any]) -> dict[str, Any]:
        out = {"type": "file", "path": path, "size": entry["size"], "oid": self._git_oid(entry)}
        if entry["lfs"]:
            out["lfs"] = {"oid": entry["sha256"], "size": entry["size"],
                          "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"]))}
        return out

    def resolve(self, ns: str, name: str, revision: str, path: str) -> int:
        repo = self._repo(ns, name)
        self._check_gate(f"{ns}/{name}", repo)
        commit = self._commit_of(repo, revision)
        entry = commit["files"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit["oid"]})
        etag = entry["sha256"] if entry["lfs"] else self._git_oid(entry)
        headers = {"X-Repo-Commit": commit["oid"], "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(entry["size"])})
        return self._send_file(self.hub.store.object_path(entry["sha256"]), entry["size"], headers)

    def _send_file(self, path: Path, size: int, headers: dict[str, str]) -> int:
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and int(match.group(1)) < size:
            start, status = int(match.group(1)), 206
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        self._drain()
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "GET":
            with open(path, "rb") as f:
                f.seek(start)
                while chunk := f.read(1 << 20):
                    self.wfile.write(chunk)
            if path.stat().st_size < size:  # a damaged object: end the connection, as a failing store would
                self.close_connection = True
        return status

    # --- uploads -------------------------------------------------------------------------------------------
    def preupload(self, ns: str, name: str, revision: str) -> int:
        repo = self._repo(ns, name, write=True)
        commit = self._commit_of(repo, revision)
        answers = []
        for item in self._json_body().get("files", []):
            sample = base64.b64decode(item.get("sample", ""))
            lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] >= LFS_MIN_SIZE or b"\0" in sample
            remote = commit["files"].get(item["path"])
            remote_oid = None
            if remote is not None:
                remote_oid = remote["sha256"] if lfs else git_blob_oid(self.hub.store.object_path(remote["sha256"]).read_bytes())
            answers.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular",
                            "shouldIgnore": False, "oid": remote_oid})
        return self._send_json({"files": answers})

    def lfs_batch(self, ns: str, name: str) -> int:
        self._repo(ns, name, write=True)
        payload = self._json_body()
        if payload.get("operation") != "upload":
            raise HubError(400, "only uploads are supported")
        objects = []
        for obj in payload.get("objects", []):
            answer = {"oid": obj["oid"], "size": obj["size"]}
            if not self.hub.store.has_object(obj["oid"]):
                self.hub.pending_lfs[obj["oid"]] = obj["size"]
                answer["actions"] = {"upload": {"href": f"{self.hub.url}/_lfs/{obj['oid']}"}}
            objects.append(answer)
        return self._send_json({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def lfs_put(self, oid: str) -> int:
        if oid not in self.hub.pending_lfs:
            raise HubError(404, f"no upload was announced for {oid}")
        if self.hub._next_lfs_put_fails():
            self._drain()
            raise HubError(self.hub.fail_lfs_status, "injected LFS upload failure")
        if self.hub.truncate_lfs_puts > 0:
            self.hub.truncate_lfs_puts -= 1
            data = self._body()
            self.hub.store.object_path(oid).write_bytes(data[: len(data) // 2])  # stored under the oid, unchecked
            self.hub.pending_lfs.pop(oid, None)
            return self._send(200)
        self.hub.store.put_stream(self._body_chunks(), oid, self.hub.pending_lfs[oid])
        return self._send(200)

    def commit(self, ns: str, name: str, revision: str) -> int:
        repo = self._repo(ns, name, write=True)
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if self.hub.fail_commit_status:
            raise HubError(self.hub.fail_commit_status, "injected commit failure")
        header = next((line["value"] for line in lines if line["key"] == "header"), None)
        if header is None:
            raise HubError(400, "missing header line")
        create_pr = self.query.get("create_pr") in ("1", "true")
        store = self.hub.store
        with store.lock:
            repo = store.repo(f"{ns}/{name}")
            base = self._commit_of(repo, revision)
            parent = header.get("parentCommit")
            if parent and not create_pr and not base["oid"].startswith(parent):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            if parent and create_pr:
                base = self._commit_of(repo, parent)
            files = dict(base["files"])
            for line in lines:
                self._apply(files, line["key"], line["value"])
            if files.get("README.md") not in (None, base["files"].get("README.md")):
                self._check_model_tree(f"{ns}/{name}", store.object_path(files["README.md"]["sha256"]).read_bytes())
            oid = store.new_commit(base["oid"], files, header.get("summary", ""), header.get("description", ""))
            answer = {"commitUrl": f"{self.hub.url}/{ns}/{name}/commit/{oid}", "commitOid": oid, "success": True}
            if create_pr:
                number = repo["next_pr"]
                repo["next_pr"] += 1
                repo["refs"][f"refs/pr/{number}"] = oid
                answer["pullRequestUrl"] = f"{self.hub.url}/{ns}/{name}/discussions/{number}"
            else:
                repo["refs"][revision.removeprefix("refs/heads/")] = oid
            store.save_repo(f"{ns}/{name}", repo)
        return self._send_json(answer)

    def _apply(self, files: dict[str, dict], key: str, value: dict[str, Any]) -> None:
        path = value.get("path", "")
        if key == "file":
            files[path] = self._file_entry(base64.b64decode(value["content"]))
        elif key == "lfsFile":
            if not self.hub.store.has_object(value["oid"]):
                raise HubError(422, f"Your push was rejected: LFS object {value['oid']} of {path} was never uploaded")
            files[path] = {"sha256": value["oid"], "size": value.get("size") or self.hub.store.object_path(value["oid"]).stat().st_size, "lfs": True}
        elif key == "deletedFile":
            if files.pop(path, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
        elif key == "deletedFolder":
            prefix = path.rstrip("/") + "/"
            for name in [p for p in files if p.startswith(prefix)]:
                del files[name]
        elif key != "header":
            raise HubError(400, f"unknown commit operation {key!r}")

    def _check_model_tree(self, repo_id: str, card: bytes) -> None:
        """The Hub refuses a README whose model-tree metadata is invalid: `base_model_relation` outside its four
        values or without a `base_model`, a malformed id, the repo itself, or (where this server can know) a
        model that does not exist: any repo id in a namespace that has repos or a user/org here."""
        tree = model_tree_of(card)
        bases, relation = tree["base_model"], tree["base_model_relation"]
        if relation is not None and (relation not in BASE_MODEL_RELATIONS or not bases):
            raise HubError(400, f'Invalid metadata in README.md.\n- "base_model_relation" with value "{relation}" '
                           f"is not valid: one of {', '.join(BASE_MODEL_RELATIONS)}, with a base_model")
        known = self.hub.namespaces()
        for base in bases:
            exists = self.hub.store.repo(base) is not None if isinstance(base, str) and "/" in base else False
            if (not isinstance(base, str) or not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", base) or base == repo_id
                    or (base.split("/")[0] in known and not exists)):
                raise HubError(400, f'Invalid metadata in README.md.\n- "base_model" with value "{base}" is not '
                               "valid. Use a model id from https://hf.co/models.")

    # --- collections (create_collection, get_collection, add_collection_item, update_collection_item) -----------
    def create_collection(self) -> int:
        payload = self._json_body()
        if self.user is None:
            raise HubError(401, "You must be authenticated to create a collection")
        namespace, title = payload.get("namespace") or self.user.user, str(payload.get("title") or "")
        self._require_write(namespace)
        if not 0 < len(title) <= 60:
            raise HubError(400, "title must be 1 to 60 characters")
        with self.hub.store.lock:
            same = next((c for c in self.hub.collections.values() if c["owner"] == namespace and c["title"] == title),
                        None)
            if same is not None:
                return self._send_json({"error": "Collection already exists", "slug": same["slug"]}, 409)
            words = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "collection"
            slug = f"{namespace}/{words}-{hashlib.sha1(f'{namespace}/{title}'.encode()).hexdigest()[:24]}"
            self.hub.collections[slug] = {
                "slug": slug, "title": title, "owner": namespace, "items": [], "lastUpdated": now_iso(),
                "position": len(self.hub.collections), "private": bool(payload.get("private")), "theme": "indigo",
                "upvotes": 0, "description": payload.get("description")}
            return self._send_json(self.hub.collections[slug])

    def list_collections(self) -> int:
        """`?owner=` filter; as the Hub, at most 4 items per collection and no `position` key."""
        owner = self.query.get("owner")
        found = [{**{k: v for k, v in c.items() if k != "position"}, "items": c["items"][:4]}
                 for c in self.hub.collections.values() if owner in (None, c["owner"])
                 and (not c["private"] or (self.user and self.user.can_read(c["owner"])))]
        return self._send_json(found)

    def _collection(self, slug: str, write: bool = False) -> dict[str, Any]:
        collection = self.hub.collections.get(slug)
        if collection is None or (collection["private"] and not (self.user and self.user.can_read(collection["owner"]))):
            raise HubError(404, f"Collection {slug} not found")
        if write:
            self._require_write(collection["owner"])
        return collection

    def get_collection(self, slug: str) -> int:
        return self._send_json(self._collection(slug))

    def add_collection_item(self, slug: str) -> int:
        payload = self._json_body()
        item = payload.get("item") or {}
        with self.hub.store.lock:
            collection = self._collection(slug, write=True)
            if item.get("type") != "model" or self.hub.store.repo(str(item.get("id"))) is None:
                raise HubError(404, f"{item.get('type')} {item.get('id')} not found")
            if any(i["id"] == item["id"] for i in collection["items"]):
                return self._send_json({"error": "Item already exists in collection"}, 409)
            note = payload.get("note")
            if note is not None and len(note) > 500:
                raise HubError(400, "note must be at most 500 characters")
            collection["items"].append({"_id": hashlib.sha1(f"{slug}/{item['id']}".encode()).hexdigest()[:24],
                                        "id": item["id"], "type": "model", "position": len(collection["items"]),
                                        **({"note": {"text": note, "html": note}} if note is not None else {})})
            collection["lastUpdated"] = now_iso()
            return self._send_json(collection)

    def update_collection_item(self, slug: str, object_id: str) -> int:
        payload = self._json_body()
        with self.hub.store.lock:
            collection = self._collection(slug, write=True)
            items = collection["items"]
            item = next((i for i in items if i["_id"] == object_id), None)
            if item is None:
                raise HubError(404, f"item {object_id} not in {slug}")
            if payload.get("note") is not None:
                if len(payload["note"]) > 500:
                    raise HubError(400, "note must be at most 500 characters")
                item["note"] = {"text": payload["note"], "html": payload["note"]}
            if payload.get("position") is not None:  # moves the item; the others keep their order
                items.remove(item)
                items.insert(max(0, min(int(payload["position"]), len(items))), item)
                for position, each in enumerate(items):
                    each["position"] = position
            collection["lastUpdated"] = now_iso()
            return self._send_json({"success": True})

    def _file_entry(self, data: bytes) -> dict[str, Any]:
        return {"sha256": self.hub.store.put_bytes(data), "size": len(data), "lfs": False}

    def _git_oid(self, entry: dict[str, Any]) -> str:
        if entry["lfs"]:
            return git_blob_oid(lfs_pointer(entry["sha256"], entry["size"]))
        return git_blob_oid(self.hub.store.object_path(entry["sha256"]).read_bytes())
