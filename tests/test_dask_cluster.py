"""The multi-host path on one machine: ``dask scheduler`` and ``dask worker`` started as separate
processes, each in a working directory and environment of its own, on 127.0.0.1 only, with the
commands of docs/running-at-scale.md as written (its two-host block: addresses become 127.0.0.1,
the ports free ones, ``prompts.txt`` a ``--plans`` directory so that no director starts; the test
adds each worker's name, port and scratch directory). The job is ``direct2v dataset
--dask-address``, on the suite's Prefect server (127.0.0.1).

Cases: the cluster renders what one process renders; a worker killed mid-run (SIGKILL to its
process group, as a host going down) and then the scheduler; a worker that cannot load the model,
and one on another checkout.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import REPO, summary_of

from direct2v.director.plan import FramePlan, write_plan
from direct2v.render.encode import read_video

pytestmark = [pytest.mark.flow]

DOCS = REPO / "docs" / "running-at-scale.md"
BLOCK_MARK = "<!-- two-host commands: tests/test_dask_cluster.py reads this block -->"
FRAMES = ["a paper boat on a pond", "the boat drifts to the left", "the boat reaches the reeds"]
#: Longest a cluster process may take to start, and a job to end: a bound, never a wait.
START_S, JOB_S = 90, 300


def documented_commands() -> dict[str, str]:
    """The scheduler, worker and job command lines of the docs' two-host block."""
    block = DOCS.read_text().split(BLOCK_MARK, 1)[1].split("```", 2)[1]
    lines = [line.strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return {"scheduler": next(line for line in lines if "dask scheduler" in line),
            "worker": next(line for line in lines if "dask worker" in line),
            "job": next(line for line in lines if "direct2v dataset" in line)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_plans(directory: Path, count: int) -> Path:
    for i in range(count):
        write_plan(FramePlan(prompt_id=f"boat-{i}", prompt=f"a paper boat {i}", fps=2, seed=i, frames=FRAMES), directory)
    return directory


class Cluster:
    """A scheduler and workers started from the documented commands, each a process group of its own."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.commands = {name: self._local(line) for name, line in documented_commands().items()}
        self.processes: dict[str, subprocess.Popen] = {}
        self.worker_addresses: dict[str, str] = {}
        self.env = {key: value for key, value in os.environ.items() if not key.startswith(("DIRECT2V_", "PREFECT_"))}
        self.env["OMP_NUM_THREADS"] = "1"  # two workers on two cores

    def _local(self, line: str) -> list[str]:
        line = line.replace("10.0.0.5", "127.0.0.1").replace("10.0.0.6", "127.0.0.1")
        line = re.sub(r"\b8786\b", str(self.port), line)
        return shlex.split(line.replace(".venv/bin/dask", str(Path(sys.executable).parent / "dask")))

    def _start(self, name: str, command: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
        cwd.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{name}.log", "w") as log:
            process = subprocess.Popen(command, cwd=cwd, env={**self.env, **(env or {})}, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[name] = process
        return process

    def start_scheduler(self) -> None:
        self._start("scheduler", self.commands["scheduler"], self.root / "scheduler-host")

    def start_worker(self, name: str, cwd: Path | None = None, env: dict | None = None) -> None:
        port = free_port()
        cwd = cwd or self.root / f"{name}-host"
        self._start(name, [*self.commands["worker"], "--name", name, "--worker-port", str(port), "--local-directory",
                           str(cwd / "dask-scratch")], cwd, env)
        self.worker_addresses[name] = f"tcp://127.0.0.1:{port}"

    def wait_for_workers(self, *names: str) -> None:
        """Until the scheduler lists ``names`` (the workers import torch as they start)."""
        from distributed import Client

        deadline = time.monotonic() + START_S
        with Client(self.address, timeout=START_S) as client:
            while True:
                known = {info.get("name") for info in client.scheduler_info()["workers"].values()}
                if set(names) <= known:
                    return
                assert time.monotonic() < deadline, f"workers {names} did not join: {self.logs()}"
                time.sleep(0.2)

    def start_two_workers(self, job_host: Path) -> Path:
        """A scheduler and workers w0 and w1, both joined; returns ``job_host``, made (the job's directory)."""
        self.start_scheduler()
        self.start_worker("w0")
        self.start_worker("w1")
        self.wait_for_workers("w0", "w1")
        job_host.mkdir()
        return job_host

    def kill(self, name: str) -> float:
        """SIGKILL the process group (a worker's nanny and worker: the host is gone)."""
        os.killpg(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait()
        return time.monotonic()

    def job_args(self, plans: Path, run_id: str) -> list[str]:
        args = self.commands["job"]
        args = args[args.index("dataset"):]  # after ".venv/bin/direct2v"
        args[args.index("prompts.txt")] = f"--plans={plans}"
        args[args.index("--run-id") + 1] = run_id
        return [*args, "--no-progress"]

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-1500:]}" for log in sorted(self.root.glob("*.log")))

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def cluster(tmp_path):
    started = Cluster(tmp_path / "cluster")
    started.root.mkdir()
    yield started
    started.stop()


@pytest.fixture
def job_env(cli_env, tiny_sd_dir) -> dict[str, str]:
    """The job host's environment: the suite's Prefect server, the tiny renderer at 4 steps, and
    ``output_root`` relative to the job's own working directory."""
    return {**cli_env, "DIRECT2V_OUTPUT_ROOT": "outputs", "DIRECT2V_RENDER__MODEL_DIR": str(tiny_sd_dir),
            "DIRECT2V_RENDER__NUM_INFERENCE_STEPS": "4", "DIRECT2V_RENDER__T0": "1", "DIRECT2V_RENDER__T1": "2",
            "OMP_NUM_THREADS": "1"}


def rows_of(run_dir: Path) -> dict[str, dict]:
    return {row["prompt_id"]: row for row in pq.read_table(run_dir / "manifest.parquet").to_pylist()}


def journal_rows(run_dir: Path) -> list[dict]:
    rows = []
    for journal in (run_dir / "manifest.parts").glob("journal-*/manifest.jsonl"):
        rows += [json.loads(line) for line in journal.read_text().splitlines() if line.endswith("}")]
    return rows


def assert_complete(run_dir: Path, plan_count: int) -> dict[str, dict]:
    """One ok row per plan, each MP4 whole (decoded: every frame), and no partial file left."""
    rows = rows_of(run_dir)
    assert sorted(rows) == [f"boat-{i}" for i in range(plan_count)]
    assert all(row["status"] == "ok" for row in rows.values()), [row["error"] for row in rows.values()]
    for row in rows.values():
        assert read_video(run_dir / row["video_path"]).shape[0] == len(FRAMES)
    assert sorted(path.name for path in (run_dir / "videos").iterdir()) == [f"boat-{i}.mp4" for i in range(plan_count)]
    return rows


def test_the_documented_two_host_commands_render_what_one_process_renders(tmp_path, cluster, run_cli, job_env):
    plans = write_plans(tmp_path / "plans", 6)
    job_host = cluster.start_two_workers(tmp_path / "job-host")
    done = run_cli(cluster.job_args(plans, "cats-1"), job_env, cwd=job_host, timeout=JOB_S)
    summary = summary_of(done)
    assert summary["task_runner"] == f"dask scheduler {cluster.address}"
    assert (summary["ok"], summary["rendered"], summary["workers_lost"]) == (6, 6, [])
    assert summary["workers_used"] == 2 and summary["renderer_loads"] == 2  # each worker loaded the renderer once
    run_dir = job_host / "outputs" / "cats-1"  # output_root relative to the job's directory, not the workers'
    rows = assert_complete(run_dir, 6)
    assert {row["worker"] for row in rows.values()} == set(cluster.worker_addresses.values())
    assert not any((tmp_path / "cluster" / f"{name}-host" / "outputs").exists() for name in ("w0", "w1"))

    single = summary_of(run_cli(["dataset", "--plans", plans, "--run-id", "one-process", "--no-progress"], job_env,
                                cwd=job_host, timeout=JOB_S))
    assert single["task_runner"] == "thread pool (1 worker)" and single["ok"] == 6
    alone = rows_of(job_host / "outputs" / "one-process")
    for prompt_id, row in rows.items():
        assert row["video_hash"] == alone[prompt_id]["video_hash"]
        np.testing.assert_array_equal(read_video(run_dir / row["video_path"]),
                                      read_video(job_host / "outputs" / "one-process" / alone[prompt_id]["video_path"]))


def test_a_killed_worker_and_then_a_lost_scheduler_lose_nothing(tmp_path, cluster, run_cli, job_env):
    plans = write_plans(tmp_path / "plans", 8)
    job_host = cluster.start_two_workers(tmp_path / "job-host")
    run_dir = job_host / "outputs" / "lose-a-worker"

    # A worker killed right after its first video: its queued renders go to the other worker.
    job = subprocess.Popen([sys.executable, "-m", "direct2v", *cluster.job_args(plans, run_dir.name)],
                           env=job_env, cwd=job_host, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    victim = cluster.worker_addresses["w0"]
    started = time.monotonic()
    deadline = started + JOB_S
    while not any(row["worker"] == victim and row["status"] == "ok" for row in journal_rows(run_dir)):
        assert job.poll() is None, f"the job ended before w0 rendered: {job.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, cluster.logs()
        time.sleep(0.05)
    recorded = {row["prompt_id"]: row["worker"] for row in journal_rows(run_dir)}
    killed_at = cluster.kill("w0") - started
    out, err = job.communicate(timeout=JOB_S)
    assert job.returncode == 0, err[-4000:]
    summary = json.loads(out)
    print(f"worker loss: w0 killed {killed_at:.1f} s into the job, when {len(recorded)} videos were recorded "
          f"({recorded}); the job ended {time.monotonic() - started:.1f} s in")
    print("scheduler:", [line.split(" - ", 3)[-1][:160] for line in (tmp_path / "cluster" / "scheduler.log")
                         .read_text().splitlines() if "Remove worker" in line or "lose" in line])
    assert summary["workers_lost"] == [victim]
    assert (summary["total"], summary["ok"], summary["rendered"], summary["workers_used"]) == (8, 8, 8, 2)
    rows = assert_complete(run_dir, 8)
    by_victim = {pid for pid, row in rows.items() if row["worker"] == victim}
    print("rendered by w0:", sorted(by_victim), "by w1:", sorted(set(rows) - by_victim), "summary:",
          {key: summary[key] for key in ("total", "ok", "failed", "rendered", "workers_used", "workers_lost")})
    assert by_victim and len(by_victim) < 8
    # Nothing rendered twice: the survivor never ran a render whose video the killed worker had made.
    survivor_log = (tmp_path / "cluster" / "w1.log").read_text()
    assert not [pid for pid in by_victim if f"render-{pid}'" in survivor_log]

    # The scheduler killed mid-run: one line, exit 2; a new scheduler and `direct2v resume` finish the run.
    for video in (run_dir / "videos").glob("boat-[4-7].mp4"):
        video.unlink()
    kept = {path.name: path.stat().st_mtime_ns for path in (run_dir / "videos").glob("boat-[0-3].mp4")}
    job = subprocess.Popen([sys.executable, "-m", "direct2v", "resume", str(run_dir), "--dask-address", cluster.address],
                           env=job_env, cwd=job_host, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    while len(journal_rows(run_dir)) < 1:
        assert job.poll() is None and time.monotonic() < deadline, job.stderr.read()[-3000:]
        time.sleep(0.05)
    cluster.kill("scheduler")
    out, err = job.communicate(timeout=JOB_S)
    assert job.returncode == 2, err[-4000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: the Dask scheduler at {cluster.address} went away (scheduler-connection-lost)")
    assert f"direct2v resume {run_dir} --dask-address" in last and "Traceback" not in err

    # A new cluster (a worker whose scheduler went away closes, its nanny with it), at the same address.
    cluster.start_scheduler()
    cluster.start_worker("w2")
    cluster.wait_for_workers("w2")
    summary = summary_of(run_cli(["resume", run_dir, "--dask-address", cluster.address], job_env, cwd=job_host,
                                 timeout=JOB_S))
    assert summary["resumed"] and (summary["total"], summary["ok"]) == (8, 8)
    assert summary["rendered"] + summary["skipped_finished"] + summary["adopted"] == 8
    assert summary["rendered"] <= 4  # only what the lost scheduler left unfinished
    assert_complete(run_dir, 8)
    assert {name: (run_dir / "videos" / name).stat().st_mtime_ns for name in kept} == kept  # kept, not redone


def other_checkout(root: Path) -> Path:
    """A copy of this checkout's package whose version differs (a host that was not updated)."""
    for package in ("direct2v", "flows"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "weights"))
    init = root / "direct2v" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', '__version__ = "0.0.0-old-'))
    return root


def test_a_worker_without_the_model_fails_its_videos_and_another_checkout_is_refused(tmp_path, cluster, run_cli,
                                                                                      job_env, tiny_sd_dir):
    plans = write_plans(tmp_path / "plans", 6)
    # render.model_dir relative: each worker resolves it in its own working directory, and w-empty has none.
    job_host, with_model = tmp_path / "job-host", tmp_path / "cluster" / "w-model-host"
    for host in (job_host, with_model):
        (host / "models").mkdir(parents=True)
        (host / "models" / "tiny-sd").symlink_to(tiny_sd_dir)
    env = {**job_env, "DIRECT2V_RENDER__MODEL_DIR": "models/tiny-sd"}
    cluster.start_scheduler()
    cluster.start_worker("w-model", cwd=with_model)
    cluster.start_worker("w-empty")
    cluster.wait_for_workers("w-model", "w-empty")
    done = run_cli(cluster.job_args(plans, "no-model"), env, cwd=job_host, timeout=JOB_S)
    summary = json.loads(done.stdout)  # (exit code 1 if w-empty was sent every video: no video ok)
    assert done.returncode == (0 if summary["ok"] else 1), done.stderr[-3000:]
    rows = rows_of(job_host / "outputs" / "no-model")
    assert summary["total"] == 6 and summary["ok"] + summary["failed"] == 6
    empty = cluster.worker_addresses["w-empty"]
    failed = [row for row in rows.values() if row["status"] == "failed"]
    assert failed, "w-empty was sent no video"
    for row in failed:
        assert row["failed_stage"] == "render" and row["worker"] == empty
        assert row["error"].startswith(f"worker {empty} cannot load the renderer: ")
        assert "models/tiny-sd" in row["error"]
    assert all(row["worker"] == cluster.worker_addresses["w-model"] for row in rows.values() if row["status"] == "ok")

    # A worker of another checkout joins: the next job is refused before any render.
    cluster.start_worker("w-old", env={"PYTHONPATH": str(other_checkout(tmp_path / "old-checkout"))})
    cluster.wait_for_workers("w-old")
    done = run_cli(cluster.job_args(plans, "refused"), env, cwd=job_host, timeout=JOB_S)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    old = cluster.worker_addresses["w-old"]
    assert last.startswith(f"error: refused 1 of the 3 workers of {cluster.address}, before any render: {old} runs "
                           "direct2v 0.0.0-old-"), last
    assert "Traceback" not in done.stderr
    assert not list((job_host / "outputs" / "refused" / "videos").glob("*.mp4"))


def test_clusters_the_job_starts_listen_on_loopback_only():
    from flows.runners import cluster_kwargs

    for kind, workers in (("local", 2), ("cuda", None), ("cuda", 4)):
        kwargs = cluster_kwargs(kind, workers)
        assert kwargs["host"] == "127.0.0.1" and kwargs["dashboard_address"] == "127.0.0.1:0", kind
    assert "n_workers" not in cluster_kwargs("cuda", None)  # dask-cuda: one worker per visible GPU


def test_a_worker_is_refused_for_another_checkout_an_unreachable_api_or_no_answer():
    from direct2v.job import cluster

    ours = cluster.checkout()
    api = "http://127.0.0.1:4200/api"
    reports = {"tcp://a:1": {"checkout": ours, "api_problem": ""},
               "tcp://b:1": {"checkout": {**ours, "video_hash_version": 1}, "api_problem": ""},
               "tcp://c:1": {"checkout": ours, "api_problem": "Connection refused"},
               "tcp://d:1": AttributeError("module 'direct2v.job' has no attribute 'cluster'")}
    reasons = cluster.refusals(reports, api)
    assert len(reasons) == 3 and not any(reason.startswith("tcp://a:1") for reason in reasons)
    assert reasons[0].startswith("tcp://b:1 runs direct2v ") and "video_hash_version 1; this job needs" in reasons[0]
    assert reasons[1].startswith(f"tcp://c:1 cannot reach the Prefect API at {api} (Connection refused)")
    assert reasons[2].startswith("tcp://d:1 could not say which checkout it runs") and "AttributeError" in reasons[2]


def test_a_job_started_outside_the_checkout_makes_its_prefect_home(tmp_path):
    """Prefect makes only the last level of its home; a directory without .state/ (a new working
    directory, a worker's) once kept the temporary server from opening its database."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    code = ("import os; from direct2v.core.environment import configure_prefect_environment as c; c(); "
            "print(os.environ['PREFECT_HOME'])")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == tmp_path / ".state" / "prefect" and (tmp_path / ".state" / "prefect").is_dir()


def test_a_scheduler_that_does_not_answer_is_one_line(tmp_path, run_cli, job_env):
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    env = {**job_env, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "3s"}  # Dask's own setting (default 30 s)
    done = run_cli(["dataset", "--plans", write_plans(tmp_path / "plans", 1), "--dask-address", address], env,
                   cwd=tmp_path, timeout=JOB_S)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: cannot reach the Dask scheduler at {address}: ")
    assert "Traceback" not in done.stderr
