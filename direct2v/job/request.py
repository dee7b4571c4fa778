"""The job request: the one validated object that ``direct2v`` commands, the Prefect flow and every
deployment in prefect.yaml pass, whole, from where a job is asked for to where it runs.

    JobRequest --resolve_run--> Run (directory, job.json, settings) --check_job--> ready
               --start_run--> recorded, holding the run's lock

``resolve_run`` only reads, so the command line resolves a request first, to report what can be
checked before Prefect or any model starts (``check_job``), then hands the flow the same request
pinned to the run's directory (``JobRequest.pinned``), which resolves to the same run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from direct2v.core.config import ConfigError, Settings, load_settings
from direct2v.core.files import LORA_WEIGHTS
from direct2v.director.prompt_files import check_prompt_file
from direct2v.director.prompts import PromptFileError
from direct2v.job import manifest, shards
from direct2v.job.rundir import Job, check_run_id, clean_partials, new_run_id, open_run, record_run

#: The training-ready formats a job can end with (``direct2v.publish.export`` writes them).
ExportFormat = Literal["webdataset", "hf"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)


class JobRequest(BaseModel):
    """What a command or a deployment asks for. ``run_dir`` (a path) or ``run_id`` (a name under
    ``output_root``) that already holds a run continues it; a new run is named after the time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt_file: str | None = Field(None, description="plan and render this prompt file (.txt, .jsonl, .csv) ...")
    plans_dir: str | None = Field(None, description="... or render these plan files (no director)")
    run_dir: str | None = Field(None, description="the run directory (an existing run is continued)")
    run_id: str | None = Field(None, description="or the run's name under output_root")
    settings: dict[str, Any] = Field(default_factory=dict, description="settings over env/TOML/defaults (a new "
                                     "run) or over the run's settings.json (a resumed one), nested as in TOML")
    shard_size: int | None = Field(None, ge=1, description="prompts per director process and per manifest part")
    reuse_from: list[str] | None = Field(None, description="globs of runs whose finished videos are reused by hash")
    verify_videos: bool | None = Field(None, description="on a resume, decode every finished MP4 before keeping it")
    dask_address: str | None = Field(None, description="render on a running Dask scheduler")
    dask_workers: int | None = Field(None, ge=1, description="render on a local Dask cluster of N processes")
    dask_cluster: Literal["local", "cuda"] = Field("local", description="cuda: one Dask worker per GPU")
    progress: bool = Field(False, description="progress bars on stderr")
    gallery: bool = Field(True, description="end with the run's index.html and contact sheets")
    export: ExportFormat | None = Field(None, description="end with a training-ready copy")
    export_dir: str | None = Field(None, description="where the export goes (default RUN/export/FORMAT)")

    def pinned(self, run: Run) -> JobRequest:
        """This request for the run it resolved to: the same run however often it is resolved."""
        return self.model_copy(update={"run_dir": str(run.dir), "run_id": None,
                                       "prompt_file": run.job.prompt_file, "plans_dir": run.job.plans_dir})


@dataclass
class Run:
    """An opened run: what every stage is given."""

    dir: Path
    job: Job
    settings: Settings
    resumed: bool

    @property
    def id(self) -> str:
        return self.dir.name


def resolve_run(request: JobRequest) -> Run:
    """Which directory, job and settings ``request`` means (reads only; ``start_run`` writes)."""
    if request.prompt_file and request.plans_dir:
        raise ConfigError("give either a prompt file (prompt_file) or a plan directory (plans_dir), not both")
    if not (request.prompt_file or request.plans_dir or request.run_dir or request.run_id):
        raise ConfigError("give a prompt file (prompt_file), a plan directory (plans_dir), or a run to resume")
    if request.dask_address and (request.dask_workers or request.dask_cluster != "local"):
        raise ConfigError("dask_address uses a running cluster; dask_workers/dask_cluster start a new one: give one")
    job = None
    if request.prompt_file:
        check_prompt_file(Path(request.prompt_file))  # named as the user gave it
    if request.prompt_file or request.plans_dir:
        given = {key: value for key, value in request.model_dump(include={"shard_size", "reuse_from", "verify_videos"}).items()
                 if value is not None}
        job = Job(prompt_file=str(Path(request.prompt_file).resolve()) if request.prompt_file else None,
                  plans_dir=str(Path(request.plans_dir).resolve()) if request.plans_dir else None, **given)
    if request.run_dir:
        run_dir = Path(request.run_dir)
        settings = load_settings(**request.settings) if job else None
    else:
        settings = load_settings(**request.settings)
        run_dir = Path(settings.output_root) / (check_run_id(request.run_id) if request.run_id else new_run_id())
    run_dir, job, settings, resumed = open_run(run_dir, job, settings, request.settings)
    return Run(run_dir, job, settings, resumed)


def check_job(run: Run) -> None:
    """What can be checked before Prefect or any model starts: the prompt file or plan directory,
    and the model directories (a ConfigError names the setting)."""
    from direct2v.director.engine import check_model_dir
    from direct2v.render import model_dir

    if run.job.prompt_file:
        path = Path(run.job.prompt_file)
        if shards.count_prompt_lines(path) == 0:  # checks the file as a whole too
            raise PromptFileError(f"{path}: no prompts (the file is empty, or every line is blank or a # comment)")
        try:
            check_model_dir(run.settings.director.model_dir)
        except FileNotFoundError as error:
            raise ConfigError(f"director.model_dir: {error}") from None
    elif not any(Path(run.job.plans_dir).glob("*.json")):
        raise ConfigError(f"{run.job.plans_dir}: no plan .json files found")
    root = Path(run.settings.render.model_dir)
    if not root.is_dir():
        raise ConfigError(f"render.model_dir: directory not found: {root} (run `direct2v models build` for the tiny "
                          f"default, or set render.model_dir to a local diffusers {model_dir.SUPPORTED} directory)")
    try:
        model_dir.check_model_dir(root)
    except (FileNotFoundError, model_dir.ModelDirError) as error:
        raise ConfigError(f"render.model_dir: {error}") from None
    blocks = run.settings.render.rvm_blocks
    if isinstance(blocks, tuple):
        unknown = [block for block in blocks if block.rstrip(".") not in model_dir.attention_blocks(root)]
        if unknown:
            raise ConfigError(f"render.rvm_blocks: {', '.join(unknown)} hold no attention layers in {root}; "
                              f"blocks that do: {', '.join(model_dir.attention_blocks(root))}")
    lora = run.settings.render.lora_dir
    if lora is not None and not (Path(lora) / LORA_WEIGHTS).is_file():
        raise ConfigError(f"render.lora_dir: no LoRA at {lora}: expected {Path(lora) / LORA_WEIGHTS} "
                          "(diffusers' save_lora_weights layout, safetensors)")


def start_run(run: Run) -> None:
    """Record the run (holding its lock); a resumed one first loses what an interrupted process left
    half-written and folds its leftover journals into the manifest, for the lookups."""
    if run.resumed:
        clean_partials(run.dir)
        manifest.compact(run.dir)
    record_run(run.dir, run.job, run.settings)
    shards.clear_shard_files(run.dir)
