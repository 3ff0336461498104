"""The GitHub workflows: valid against GitHub's schema (offline), the right shape, and their scripts really run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import WRITE_TOKEN

from hf_layerprune.cli.app import app

WORKFLOWS = Path(__file__).resolve().parent.parent / ".github" / "workflows"
PUBLISH, CI = WORKFLOWS / "publish-pruned.yml", WORKFLOWS / "ci.yml"
INPUTS = {"model", "depths", "metric", "healer", "repo-prefix", "private", "runner", "collection"}


def load(path: Path) -> dict:
    workflow = yaml.safe_load(path.read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads the key `on` as True
    return workflow


def step(job: dict, name: str) -> dict:
    return next(s for s in job["steps"] if s.get("name") == name)


def render(value: str, context: dict[str, str]) -> str:
    """Evaluate the plain `${{ a.b }}` lookups GitHub would substitute (enough for env values)."""
    return re.sub(r"\$\{\{\s*([\w.-]+)\s*\}\}", lambda m: context[m.group(1)], value)


def run_script(script: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """The step's bash with this interpreter's scripts (`hf-layerprune`) first on PATH, activated or not."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], env={**os.environ, "PATH": path, **env},
                          cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def check_jsonschema(*paths: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")
    return subprocess.run([exe, "--builtin-schema", "vendor.github-workflows", *map(str, paths)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_workflows_validate_against_the_builtin_github_schema(tmp_path):
    result = check_jsonschema(PUBLISH, CI)  # the schema ships inside check-jsonschema: no network needed
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(PUBLISH.read_text().replace("type: boolean", "type: bool", 1))
    assert check_jsonschema(broken).returncode == 1  # the check does reject a mistake


def test_publish_workflow_is_reusable_and_dispatchable():
    workflow = load(PUBLISH)
    call, dispatch = workflow["on"]["workflow_call"], workflow["on"]["workflow_dispatch"]
    assert INPUTS <= set(call["inputs"]) and INPUTS <= set(dispatch["inputs"])
    assert call["inputs"]["runner"]["default"] == dispatch["inputs"]["runner"]["default"] == "ubuntu-latest"
    assert call["secrets"]["HF_TOKEN"]["required"] is True
    assert call["inputs"]["private"]["type"] == "boolean"
    assert workflow["permissions"] == {"contents": "read"}


def test_publish_workflow_matrix_cache_and_secret():
    jobs = load(PUBLISH)["jobs"]
    setup, publish = jobs["setup"], jobs["publish"]
    assert setup["outputs"]["depths"] == "${{ steps.depths.outputs.depths }}"
    assert publish["needs"] == "setup"
    assert publish["strategy"]["fail-fast"] is False
    assert publish["strategy"]["matrix"]["drop"] == "${{ fromJSON(needs.setup.outputs.depths) }}"
    assert "inputs.runner" in publish["runs-on"]
    assert step(publish, "Prune, heal and publish")["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert "matrix.drop" in publish["concurrency"]["group"]

    cache = next(s for s in publish["steps"] if s.get("uses", "").startswith("actions/cache@"))
    assert cache["with"]["path"] == "~/.cache/huggingface/hub" and "inputs.model" in cache["with"]["key"]
    install = step(publish, "Install hf-layerprune")["run"]
    assert "pip install ./hf-layerprune" in install
    assert step(publish, "Check out hf-layerprune")["with"]["path"] == "hf-layerprune"
    command = step(publish, "Prune, heal and publish")["run"]
    for flag in ('push "$MODEL"', '--drop "$DROP"', '(--metric "$METRIC")', '(--heal "$HEALER")', '--repo-id "$REPO_ID"',
                 '--output-dir "$OUTPUT_DIR"', "--private"):
        assert flag in command
    assert "GITHUB_STEP_SUMMARY" in step(publish, "Write the job summary")["run"]


def test_no_expression_is_pasted_into_a_shell_script():
    for path in (PUBLISH, CI):
        for job in load(path)["jobs"].values():
            for s in job["steps"]:
                assert "${{" not in s.get("run", ""), (path.name, s.get("name"))  # inputs come in through env


def test_ci_workflow_lints_and_tests():
    workflow = load(CI)
    assert {"push", "pull_request"} <= set(workflow["on"])
    lint = " ".join(s.get("run", "") for s in workflow["jobs"]["lint"]["steps"])
    assert "ruff check" in lint and "check-jsonschema" in lint
    test = workflow["jobs"]["test"]
    install = " ".join(s.get("run", "") for s in test["steps"])
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in install
    assert 'pip install -e ".[dev]"' in install
    assert "pytest" in test["steps"][-1]["run"]
    assert test["strategy"]["fail-fast"] is False


@pytest.mark.parametrize(
    "depths, expected",
    [("[4, 8]", [4, 8]), ("8,4, 8", [4, 8]), (" 12 ", [12]), ("four", None), ("[0, 2]", None), ("[]", None)],
)
def test_setup_job_turns_depths_into_a_matrix(tmp_path, depths, expected):
    output = tmp_path / "github_output"
    output.touch()
    script = step(load(PUBLISH)["jobs"]["setup"], "Normalise depths to a JSON list")["run"]
    result = run_script(script, {"DEPTHS": depths, "GITHUB_OUTPUT": str(output)}, tmp_path)
    if expected is None:
        assert result.returncode != 0 and "depths must be" in result.stderr
        assert output.read_text() == ""
    else:
        assert result.returncode == 0, result.stderr
        assert output.read_text() == f"depths={json.dumps(expected)}\n"


def job_env(token: str, server_url: str, **inputs: str) -> dict[str, str]:
    """The publish job's `env:`, rendered as GitHub would for one matrix entry."""
    context = {"secrets.HF_TOKEN": token, "inputs.model": "acme-labs/Tiny-Llama-4L", "matrix.drop": "1",
               "inputs.metric": "last", "inputs.healer": "none", "inputs.repo-prefix": "acme/tiny-llama",
               "inputs.private": "true", "inputs.torch-index-url": "", "inputs.extra-args": "--no-eval",
               "inputs.collection": ""}
    context.update({f"inputs.{k}": v for k, v in inputs.items()})
    publish = load(PUBLISH)["jobs"]["publish"]
    env = {key: render(str(value), context) for key, value in publish["env"].items()}
    token_env = {key: render(str(value), context) for key, value in step(publish, "Prune, heal and publish")["env"].items()}
    return {**env, **token_env, "HF_ENDPOINT": server_url}


def test_summary_step_reports_the_repo_and_headline_numbers(tmp_path):
    report = {"base_model": "acme-labs/Tiny-Llama-4L", "num_layers_before": 4, "num_layers_after": 3,
              "removed_layers": [2], "parameters_before": 46000, "parameters_after": 36000,
              "scoring": {"metric": "angular"}, "healing": {"method": "lora"},
              "evaluation": {"comparison": {"arc_easy": {"acc": {"base": 0.61, "pruned": 0.58, "delta": -0.03,
                                                                  "retention_pct": 95.08, "higher_is_better": True}}}}}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "layerprune.json").write_text(json.dumps(report))
    summary = tmp_path / "summary.md"
    env = {**job_env("unused", "https://huggingface.co"), "GITHUB_STEP_SUMMARY": str(summary)}
    script = step(load(PUBLISH)["jobs"]["publish"], "Write the job summary")["run"]
    result = run_script(script, env, tmp_path)
    assert result.returncode == 0, result.stderr
    text = summary.read_text()
    assert "### [acme/tiny-llama-drop1](https://huggingface.co/acme/tiny-llama-drop1)" in text
    assert "| layers | 4 -> 3 (removed [2]) |" in text and "| parameters | 46000 -> 36000 |" in text
    assert "| metric / healing | angular / lora |" in text and "| arc_easy acc | 0.61 -> 0.58 (95.1% retained) |" in text

    (tmp_path / "out" / "layerprune.json").unlink()  # a failed run still gets a line, and the step passes
    assert run_script(script, env, tmp_path).returncode == 0
    assert "no result" in summary.read_text()


def test_the_workflow_command_line_publishes_to_the_local_hub(hub_server, pruned_model_dir, tmp_path):
    """`hf-layerprune upload` as a CI job runs it: console script, token only in HF_TOKEN, repo id and --private
    from the rendered job env; then the summary step reads the same folder."""
    shutil.copytree(pruned_model_dir(0), tmp_path / "out")
    env = {**job_env(WRITE_TOKEN, hub_server.url), **hub_server.env(tmp_path / "ci-cache", WRITE_TOKEN),
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    command = 'args=(upload "$OUTPUT_DIR" --repo-id "$REPO_ID"); [ "$PRIVATE" = "true" ] && args+=(--private); hf-layerprune "${args[@]}"'
    result = run_script(command, env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{hub_server.url}/acme/tiny-llama-drop1" and "Verified" in result.stderr
    assert hub_server.store.repo("acme/tiny-llama-drop1")["private"] is True
    assert {"config.json", "layerprune.json", "model.safetensors.index.json"} <= set(hub_server.files("acme/tiny-llama-drop1"))
    assert WRITE_TOKEN not in result.stdout + result.stderr

    summary_script = step(load(PUBLISH)["jobs"]["publish"], "Write the job summary")["run"]
    assert run_script(summary_script, env, tmp_path).returncode == 0
    assert f"({hub_server.url}/acme/tiny-llama-drop1)" in (tmp_path / "summary.md").read_text()


def test_the_workflow_push_step_runs_against_the_local_hub(hub_server, pruned_model_dir, tmp_path):
    """The publish step verbatim, on a tiny local checkpoint; active once the `push` command exists."""
    if "push" not in {command.name or command.callback.__name__ for command in app.registered_commands}:
        pytest.skip("the push command is not implemented yet")
    env = {**job_env(WRITE_TOKEN, hub_server.url, model=str(pruned_model_dir(0))),
           **hub_server.env(tmp_path / "ci-cache", WRITE_TOKEN)}
    script = step(load(PUBLISH)["jobs"]["publish"], "Prune, heal and publish")["run"]
    result = run_script(script, env, tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "layerprune.json").read_text())
    assert report["num_layers_after"] == report["num_layers_before"] - 1
    assert "config.json" in hub_server.files("acme/tiny-llama-drop1")
    assert WRITE_TOKEN not in result.stdout + result.stderr


def test_the_workflow_publish_step_gathers_the_variant_in_a_collection(hub_server, pruned_model_dir, tmp_path):
    """After the push, the same step adds its variant to the collection (`hf-layerprune collection`), verbatim."""
    env = {**job_env(WRITE_TOKEN, hub_server.url, model=str(pruned_model_dir(0)), collection="tiny variants"),
           **hub_server.env(tmp_path / "ci-cache", WRITE_TOKEN)}
    result = run_script(step(load(PUBLISH)["jobs"]["publish"], "Prune, heal and publish")["run"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    [collection] = hub_server.collections.values()
    assert collection["title"] == "tiny variants" and collection["private"] is True
    assert [item["id"] for item in collection["items"]] == ["acme/tiny-llama-drop1"]
    assert WRITE_TOKEN not in result.stdout + result.stderr
