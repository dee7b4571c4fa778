"""prefect.yaml validated by Prefect itself: its own models for the file and the schedules, its
own parameter validation against each entrypoint's flow, and ``prefect deploy --all`` against a
local Prefect server started on 127.0.0.1 for the test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]


def load_yaml() -> dict:
    return yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))


def test_prefect_yaml_validates_with_prefects_own_models():
    from prefect.cli.deploy._models import PrefectYamlModel, RawScheduleConfig
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import load_flow_from_entrypoint

    raw = load_yaml()
    model = PrefectYamlModel.model_validate(raw)  # what `prefect deploy` parses the file with
    deployments = {d.name: d for d in model.deployments}
    assert {"examples", "dataset-nightly", "prompt-list"} <= set(deployments)

    nightly = deployments["dataset-nightly"]
    [schedule] = [RawScheduleConfig.model_validate(s) for s in raw_deployment(raw, "dataset-nightly")["schedules"]]
    cron = CronSchedule(cron=schedule.cron, timezone=schedule.timezone)
    assert (cron.cron, cron.timezone) == ("0 2 * * *", "UTC")
    assert not raw_deployment(raw, "prompt-list").get("schedules")
    for name in ("dataset-nightly", "prompt-list"):
        assert deployments[name].entrypoint == "flows/dataset.py:generate_dataset"
        assert deployments[name].work_pool.name == "direct2v-local"
    assert set(nightly.parameters) == {"job"}  # one validated request object, passed whole

    # Every deployment's parameters pass the flow's own parameter validation (as a flow run does):
    # its one parameter becomes a JobRequest, whose settings are valid settings.
    from direct2v.core.config import load_settings
    from direct2v.job.request import JobRequest

    for deployment in model.deployments:
        flow = load_flow_from_entrypoint(str(REPO / deployment.entrypoint))
        job = flow.validate_parameters(deployment.parameters)["job"]
        assert isinstance(job, JobRequest) and job.prompt_file == "prompts_in/examples.txt"
        load_settings(**job.settings)
    nightly_job = JobRequest.model_validate(nightly.parameters["job"])
    assert (nightly_job.export, nightly_job.settings["render"]["num_inference_steps"]) == ("webdataset", 100)


def test_the_cli_runs_the_flow_that_prefect_yaml_deploys():
    """``direct2v run`` loads the flow by its entrypoint (the library never imports ``flows``): the
    same flow object as the examples deployment's entrypoint names."""
    import inspect

    from prefect.flows import load_flow_from_entrypoint

    from direct2v.cli.common import load_generate_flow

    [examples] = [d for d in load_yaml()["deployments"] if d["name"] == "examples"]
    deployed = load_flow_from_entrypoint(str(REPO / examples["entrypoint"]))
    run_by_cli = load_generate_flow()
    assert run_by_cli.name == deployed.name == "direct2v-generate"
    assert Path(inspect.getsourcefile(run_by_cli.fn)).resolve() == (REPO / examples["entrypoint"].split(":")[0]).resolve()


def raw_deployment(raw: dict, name: str) -> dict:
    return next(d for d in raw["deployments"] if d["name"] == name)


@pytest.fixture
def prefect_server(cli_env):
    """The suite's server (a server of its own took 11 s to start): no other test deploys, and the
    work pool created here has no worker, so the nightly schedule starts nothing."""
    return {**cli_env, "DIRECT2V_REPO": str(REPO)}


READ_DEPLOYMENTS = """
import json
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    out = {}
    for d in client.read_deployments():
        flow = client.read_flow(d.flow_id)
        out[f"{flow.name}/{d.name}"] = {
            "entrypoint": d.entrypoint, "parameters": d.parameters, "work_pool": d.work_pool_name,
            "schedules": [{"cron": s.schedule.cron, "timezone": s.schedule.timezone, "active": s.active}
                          for s in d.schedules],
            "concurrency": d.global_concurrency_limit.limit if d.global_concurrency_limit else None,
            "tags": d.tags,
        }
print(json.dumps(out))
"""


@pytest.mark.flow
def test_prefect_deploy_all_against_a_local_server(prefect_server):
    def prefect(*args):
        done = subprocess.run([*PREFECT, *args], env=prefect_server, cwd=REPO, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    prefect("work-pool", "create", "direct2v-local", "--type", "process")
    out = prefect("--no-prompt", "deploy", "--all")
    assert "Skipping" not in out and "validation error" not in out.lower(), out[-3000:]
    done = subprocess.run([sys.executable, "-c", READ_DEPLOYMENTS], env=prefect_server, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    deployments = json.loads(done.stdout)
    assert set(deployments) == {"direct2v-generate/examples", "direct2v-dataset/dataset-nightly",
                                "direct2v-dataset/prompt-list"}
    nightly = deployments["direct2v-dataset/dataset-nightly"]
    assert nightly["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC", "active": True}]
    assert nightly["concurrency"] == 1 and nightly["work_pool"] == "direct2v-local"
    assert nightly["parameters"]["job"]["reuse_from"] == ["outputs/nightly/*"]
    on_demand = deployments["direct2v-dataset/prompt-list"]
    assert on_demand["schedules"] == [] and on_demand["entrypoint"] == "flows/dataset.py:generate_dataset"
