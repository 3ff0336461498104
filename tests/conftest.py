"""Shared fixtures.

`hub_server`: a fresh local Hub (tests/hub_server.py) per test, with this process pointed at it. huggingface_hub
reads HF_ENDPOINT and friends once, at import, into `huggingface_hub.constants`; so besides the environment (for
subprocesses) the fixture patches those constants and the HfApi instances that copied the endpoint at creation.
`pruned_model_dir(seed)`: a folder as `prune --output-dir` leaves it, to publish.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
import tempfile
from pathlib import Path

os.environ.setdefault("HF_LAYERPRUNE_RETRY_WAIT", "0.01")  # Hub retries back off in milliseconds in tests

# Caches and configs of this session live in a temporary folder, never in the developer's home (the guard below
# fails a test that opens a file there): huggingface_hub's token and cache, datasets, lm-eval's and our caches,
# matplotlib's. Set before any of them is imported (they read these once).
SANDBOX = Path(tempfile.mkdtemp(prefix="hf-layerprune-tests-"))
for _var, _sub in (("HF_HOME", "hf-home"), ("XDG_CACHE_HOME", "cache"), ("XDG_CONFIG_HOME", "config"),
                   ("MPLCONFIGDIR", "matplotlib")):
    os.environ[_var] = str(SANDBOX / _sub)

import pytest  # noqa: E402
from hub_server import HubServer  # noqa: E402

from hf_layerprune.runtime.third_party import hide_bitsandbytes  # noqa: E402

hide_bitsandbytes()  # as the CLI does: 4-bit tests get it through quantized.check_available / allow_bitsandbytes

# ------------------------------------------------------------------ no file outside the test's own places
# Every file a test opens in this process (sys.addaudithook "open" events: Python's open, os.open, io) must lie in
# a temporary folder, the checkout, ../shared (LAYERPRUNE_DATA_DIR), this interpreter's own library and packages,
# or the operating system's folders. A test that reads a file present only on one machine (a model at an
# absolute path in an old report, a token in the home folder) fails on every machine. Subprocesses are not watched.
CHECKOUT = Path(__file__).resolve().parent.parent
_paths = sysconfig.get_paths()
_ALLOWED = [str(p) for p in (
    Path(tempfile.gettempdir()).resolve(), SANDBOX.resolve(), CHECKOUT,
    Path(os.environ.get("LAYERPRUNE_DATA_DIR") or CHECKOUT.parent / "shared").resolve(),
    Path(sys.prefix).resolve(), Path(sys.exec_prefix).resolve(),
    *(Path(p).resolve() for p in (_paths["purelib"], _paths["platlib"], *site.getsitepackages()))) ]
_ALLOWED += ["/dev/", "/proc/", "/sys/", "/etc/", "/usr/", "/lib/", "/lib64/"]
# the interpreter's standard library, but not packages installed beside it (outside this environment)
_STDLIB = [str(Path(_paths[k]).resolve()) for k in ("stdlib", "platstdlib")]
_STDLIB += [str(Path(p).resolve()) for p in sys.path if p and "site-packages" not in p]  # python3XX.zip, lib-dynload
_FOREIGN_PACKAGES = [p + "/site-packages" for p in _STDLIB if p + "/site-packages" not in map(str, _ALLOWED)]
OUTSIDE: list[str] = []


def _inside(path: str) -> bool:
    if any(path.startswith(p) for p in _FOREIGN_PACKAGES):
        return any(path.startswith(p.rstrip("/") + "/") for p in _ALLOWED if p not in _STDLIB)
    return any(path == p.rstrip("/") or path.startswith(p.rstrip("/") + "/") for p in (*_ALLOWED, *_STDLIB))


def _audit(event: str, args: tuple) -> None:
    if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    try:
        path = os.path.abspath(os.fsdecode(args[0]))
    except (TypeError, ValueError):
        return
    if not _inside(path) and not _inside(os.path.realpath(path)):
        OUTSIDE.append(path)


sys.addaudithook(_audit)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    OUTSIDE.clear()
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield
    if OUTSIDE:
        opened = sorted(set(OUTSIDE))
        OUTSIDE.clear()
        raise AssertionError(f"{item.nodeid} opened files outside its temporary folders, the checkout and "
                             f"../shared: {opened[:5]}")
    return result

WRITE_TOKEN = "hf_TestWriteToken0123456789abcdefXYZ"  # distinctive, so leak checks can grep for it
READ_TOKEN = "hf_TestReadToken0123456789abcdefXYZ"
USER, ORG = "alice", "acme"


def point_hub_client_at(url: str, cache_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make huggingface_hub (and transformers) in this process use `url`, `cache_dir` and no ambient token."""
    import transformers.utils.hub as transformers_hub
    from huggingface_hub import constants, hf_api

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    token_path = str(cache_dir / "no-token-file")  # never the developer's own `hf auth login` token
    env = {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_CACHE": str(cache_dir),
           "HF_TOKEN_PATH": token_path, "HF_HUB_DISABLE_TELEMETRY": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"})
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # mandatory: xet has no fallback to LFS
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", token_path)
    monkeypatch.setattr(hf_api.api, "endpoint", url)  # module-level HfApi() behind hf_api.whoami, model_info...
    monkeypatch.setattr(transformers_hub, "_hf_api", None)  # transformers caches its own HfApi


@pytest.fixture(scope="session")
def judge_articles_file(tmp_path_factory):
    from tiny_models import write_judge_articles

    return write_judge_articles(tmp_path_factory.mktemp("judge") / "judge-valid.tokens")


@pytest.fixture(autouse=True)
def judge_articles(judge_articles_file, monkeypatch):
    """Held-out articles in the tiny vocabulary standing in for WikiText-2 validation, the text `auto` and
    `--target` judge cuts on (flow/judge.py), so that no test (nor a CLI it starts) reads ../shared or the Hub.
    Outside the test's tmp_path, which some tests list."""
    monkeypatch.setenv("LAYERPRUNE_JUDGE_TEXT", str(judge_articles_file))
    return judge_articles_file


@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    """A running local Hub with user `alice` (member of org `acme`): `WRITE_TOKEN` writes, `READ_TOKEN` reads.

    This process's huggingface_hub points at it; `hub_server.env(cache_dir, token)` gives a subprocess the same.
    """
    server = HubServer(tmp_path / "hub-server").start()
    server.add_token(WRITE_TOKEN, USER, "write", orgs={ORG: "write"})
    server.add_token(READ_TOKEN, USER, "read", orgs={ORG: "write"})
    cache_dir = tmp_path / "hf-cache"
    cache_dir.mkdir()
    point_hub_client_at(server.url, cache_dir, monkeypatch)
    yield server
    server.stop()


@pytest.fixture(params=["portable", "avx512bf16"])
def bnb_cpu_path(request, monkeypatch):
    """Both of bitsandbytes 0.50's CPU paths on any CPU: `Linear4bit` reads `has_avx512bf16()` when it is built and,
    when true, repacks its weight for a fused bf16 kernel the first time it runs in eval mode without gradients.
    Forcing the answer either way makes every 4-bit model built in the test take that branch (our
    `quantized.one_cpu_path` must then keep it on the portable path, whatever the CPU says)."""
    from hf_layerprune.runtime.third_party import allow_bitsandbytes

    if allow_bitsandbytes() is None:
        pytest.skip("bitsandbytes is not installed")
    import bitsandbytes.nn.modules as bnb_modules

    forced = request.param == "avx512bf16"
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: forced)
    return request.param


@pytest.fixture(scope="session")
def pruned_model_dir(tmp_path_factory):
    """Factory: `pruned_model_dir(seed=0)` -> a folder as `prune` leaves it (tiny Llama in several safetensors
    shards, a tokenizer, layerprune.json). Built once per seed; treat it as read-only."""
    built = {}

    def build(seed: int = 0):
        if seed not in built:
            built[seed] = _write_pruned_model(tmp_path_factory.mktemp(f"pruned-{seed}"), seed)
        return built[seed]

    return build


def _write_pruned_model(directory, seed: int):
    from tiny_models import save_word_tokenizer, tiny_model

    from hf_layerprune.report import write_report

    model = tiny_model("llama", num_layers=3, seed=seed)
    model.save_pretrained(directory, max_shard_size="60KB")  # several shards: several LFS uploads
    save_word_tokenizer(directory)  # "w<id>" -> id
    write_report(directory, {
        "format_version": 1, "base_model": "acme-labs/Tiny-Llama-4L", "num_layers_before": 4, "num_layers_after": 3,
        "removed_layers": [2], "kept_layers": [0, 1, 3], "parameters_before": 46000,
        "parameters_after": model.num_parameters(), "command": "hf-layerprune prune acme-labs/Tiny-Llama-4L --layers 2",
    })
    return directory
