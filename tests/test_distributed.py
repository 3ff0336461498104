"""Several processes, one result: `torchrun` / `accelerate launch` runs of 2 CPU processes (gloo) on a tiny model.

Each launched run is compared with the single-process run of the same command (both with one thread per process, so
that the maths is the same): the cut and the closed-form healers give byte-identical weights; trained healers run
under the Trainer's DDP and their loss falls. Rank 1 never writes: the parent of the output is watched during the
run (one staging folder, one writer) and the local Hub server counts one commit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hf_layerprune.runtime import distributed
from tiny_models import save_word_tokenizer, tiny_model

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    path = base / "tiny"
    tiny_model("llama", num_layers=6).save_pretrained(path)
    save_word_tokenizer(path)
    text = base / "easy.txt"  # a repeating pattern: a few LoRA steps visibly lower its loss
    text.write_text("\n".join(" ".join(f"w{10 + (i + j) % 7}" for j in range(64)) for i in range(40)))
    return path, text


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]), **extra)
    return env


def run(args, cwd, launcher=LAUNCH, **extra) -> subprocess.CompletedProcess:
    command = [*(launcher or [sys.executable]), "-m", "hf_layerprune", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=_env(**extra), capture_output=True, text=True, timeout=300)


class Watch:
    """Polls `directory` while a run goes on: every entry name that appears in it (staging folders included)."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.seen, self.stop = directory, set(), False
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop:
            try:
                self.seen.update(p.name for p in self.directory.iterdir())
            except OSError:
                pass
            time.sleep(0.002)

    def __enter__(self) -> "Watch":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop = True
        self.thread.join()


def report_of(out: Path) -> dict:
    return json.loads((out / "layerprune.json").read_text())


def test_scoring_split_and_closed_form_healer_match_one_process(source, tmp_path):
    model, _ = source
    # 64 sequences of 128 tokens: two 4096-token micro-batches, one per rank; `linear` fits on every rank
    args = ["prune", model, "--drop", "2", "--metric", "bi", "--heal", "linear", "--calibration-samples", "64", "--seq-len", "128",
            "--no-eval"]
    (tmp_path / "two").mkdir()
    with Watch(tmp_path / "two") as watch:
        two = run([*args, "-o", tmp_path / "two" / "out"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    one = run([*args, "-o", tmp_path / "out1"], tmp_path, launcher=None)
    assert one.returncode == 0, one.stderr[-3000:]
    assert (two.stdout + two.stderr).count("Saved ") == 1  # rank 0 reports; rank 1 is quiet
    staging = [name for name in watch.seen if name.startswith(".out.tmp-")]  # outputs.staging_dir
    probes = [name for name in watch.seen if name.startswith(".layerprune-probe-")]  # outputs' writability check
    assert len(staging) <= 1 and len(probes) <= 1  # one writer (two ranks would stage and probe twice)
    assert watch.seen - set(staging) - set(probes) == {"out"}  # one output
    out = tmp_path / "two" / "out"
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "out1" / "model.safetensors").read_bytes()
    multi, single = report_of(out), report_of(tmp_path / "out1")
    assert multi["world_size"] == 2 and "world_size" not in single
    assert multi["removed_layers"] == single["removed_layers"]
    assert multi["scoring"]["scores"]["per_layer"] == pytest.approx(single["scoring"]["scores"]["per_layer"], rel=1e-9)
    assert "2 processes" in (out / "README.md").read_text()


def test_heal_lora_under_ddp_lowers_the_loss(source, tmp_path):
    model, text = source
    result = run(["prune", model, "--layers", "2,3", "--heal", "lora", "--heal-steps", "8", "--learning-rate", "0.01",
                  "--heal-data", text, "--seq-len", "32", "--no-eval", "-o", tmp_path / "out"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    healing = report_of(tmp_path / "out")["healing"]
    assert healing["world_size"] == 2 and healing["per_device_batch_size"] == 2  # the step's 4 sequences, shared
    assert healing["losses"][-1] < healing["losses"][0]
    assert healing["loss_after"] < healing["loss_before"]


def test_push_with_distill_publishes_one_commit(hub_server, source, tmp_path):
    from conftest import ORG, WRITE_TOKEN

    model, text = source
    repo = f"{ORG}/tiny-two-processes"
    result = run(["push", model, "--layers", "2,3", "--heal", "distill", "--heal-steps", "8", "--learning-rate", "0.01",
                  "--heal-data", text, "--seq-len", "32", "--no-eval", "--repo-id", repo, "--token", WRITE_TOKEN,
                  "-o", tmp_path / "kept"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"{hub_server.url}/{repo}"  # one URL line: rank 0's
    assert len(hub_server.commits(repo)) == 2  # the repo's initial commit + ours
    assert hub_server.count("POST", "/api/repos/create") == 1
    healing = report_of(tmp_path / "kept")["healing"]
    assert healing["losses"][-1] < healing["losses"][0]
    assert WRITE_TOKEN not in result.stdout + result.stderr


def test_refused_output_fails_every_rank_with_one_error_line(source, tmp_path):
    model, _ = source
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run(["prune", model, "--layers", "2", "--heal", "none", "--no-eval", "-o", out], tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "already exists" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_accelerate_launch_runs_two_processes(source, tmp_path):
    """accelerate's own launcher (`--multi_gpu` starts torchrun; on a CPU-only machine the group is gloo); its
    MULTI_CPU launch starts one process without mpirun, which the run points out."""
    model, _ = source
    config = tmp_path / "accelerate.yaml"
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_machines: 1\n"
                      "num_processes: 2\nmixed_precision: 'no'\nmain_process_port: 0\n")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    result = run(["prune", model, "--layers", "2", "--heal", "none", "--no-eval", "-o", tmp_path / "out"], tmp_path,
                 launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    assert report_of(tmp_path / "out")["world_size"] == 2
    # a MULTI_CPU config (like `--cpu --num_processes 2`) makes accelerate start one process: a warning says so
    config.write_text(config.read_text().replace("MULTI_GPU", "MULTI_CPU") + "use_cpu: true\n")
    alone = run(["prune", model, "--layers", "2", "--heal", "none", "--no-eval", "-o", tmp_path / "alone"], tmp_path,
                launcher=launcher)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "Warning: accelerate launched one process" in alone.stderr
    assert "world_size" not in report_of(tmp_path / "alone")


def test_single_process_launch_note(monkeypatch):
    """accelerate's `--cpu --num_processes 2` starts one process (MASTER_ADDR set, no WORLD_SIZE): a warning says so."""
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert "--multi_gpu" in distributed.check_launch()
    monkeypatch.delenv("MASTER_ADDR")
    assert distributed.check_launch() is None
    assert distributed.world_record() == {} and not distributed.is_distributed()


def test_hub_source_is_downloaded_by_rank_0_alone(hub_server, source, tmp_path):
    """Rank 0 checks and downloads a Hub source; rank 1 reads the Hub cache in offline mode (no request of its own)."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from conftest import ORG, WRITE_TOKEN

    model, text = source
    repo = f"{ORG}/tiny-source"
    api = HfApi(token=WRITE_TOKEN)
    api.create_repo(repo)
    api.create_commit(repo, [CommitOperationAdd(p.name, p.read_bytes()) for p in model.iterdir() if p.is_file()],
                      commit_message="add")
    before = len(hub_server.requests)
    result = run(["prune", repo, "--layers", "2", "--heal", "linear", "--calibration-samples", "8", "--seq-len", "32",
                  "--no-eval", "-o", tmp_path / "out"], tmp_path, HF_TOKEN=WRITE_TOKEN)
    assert result.returncode == 0, result.stderr[-3000:]
    weights = [r for r in hub_server.requests[before:] if r["path"].endswith("/model.safetensors")]
    assert len([r for r in weights if r["method"] == "GET"]) == 1  # one download, by rank 0
    # loading a tokenizer from the Hub lists its chat templates: once, so rank 1 loaded from the cache, offline
    templates = [r for r in hub_server.requests[before:] if r["path"].endswith("/additional_chat_templates")]
    assert len(templates) == 1
    report = report_of(tmp_path / "out")
    assert report["base_model"] == repo and report["world_size"] == 2 and len(report["base_revision"]) == 40
