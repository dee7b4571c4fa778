"""One settings model for the CLI, the flows and the stages.

Precedence (highest first): keyword overrides (CLI flags, flow parameters) > environment
variables (``DIRECT2V_<KEY>``, nested with ``__``: ``DIRECT2V_RENDER__NUM_INFERENCE_STEPS=20``)
> a TOML file (``--config FILE`` or ``DIRECT2V_CONFIG``) > the embedded defaults below.

The embedded defaults point at the tiny models that ``direct2v models build`` writes under
``.state/models``; a real deployment points ``director.model_dir`` and ``render.model_dir`` at
its own local Hugging Face directories.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from direct2v.core.errors import Direct2VError
from direct2v.core.messages import problem
from direct2v.core.schedule import Schedule, resolve_schedule

#: No settings file is larger (the whole of docs/configuration.md's settings fit in a few KB).
MAX_CONFIG_BYTES = 1 << 20
STATE_DIR = Path(".state")
#: The most videos one prompt may ask for (``samples``).
MAX_SAMPLES = 64
DEFAULT_LLM_DIR = STATE_DIR / "models" / "smollm2-135m-instruct"
#: the shape-world profile's director: DEFAULT_LLM_DIR with the committed storyline LoRA merged in (template storyline)
DEFAULT_SHAPE_DIRECTOR_DIR = STATE_DIR / "models" / "smollm2-135m-storyline"
DEFAULT_SD_DIR = STATE_DIR / "models" / "shape-world"
DEFAULT_GUIDANCE_SCALE = 12.0  # the paper's (App. C)
#: The shape-world renderer's: chosen on the dev storylines (3, 5, 7.5, 12, 20 tried); at 12 it draws
#: fewer of the asked shapes and, at 20, stray blobs (docs/shape-world.md "Decoder tuning and guidance").
SHAPE_WORLD_GUIDANCE_SCALE = 7.5
LCM_GUIDANCE_SCALE = 1.0  # latent consistency sampling runs without classifier-free guidance
LCM_MAX_STEPS = 50  # diffusers' LCMScheduler original_inference_steps: it refuses more


class ConfigError(Direct2VError, ValueError):
    """A user's configuration is invalid; the message names the offending keys."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DirectorSettings(_Section):
    """The LLM director (vLLM offline engine)."""

    profile: Literal["auto", "shape-world", "general"] = Field(
        "auto", description="which director: shape-world = SmolLM2 fine-tuned on the shape world's storylines with "
        "template storyline (for the embedded shape-world renderer); general = the bundled SmolLM2 with template v2 "
        "(for real Stable Diffusion models); auto = shape-world when render.model_dir is the embedded shape-world "
        "model (or another made by `direct2v models train-shapes`), general otherwise. director.model_dir and template_version, where set, win over the profile's",
    )
    model_dir: Path = DEFAULT_LLM_DIR
    dtype: Literal["auto", "bfloat16", "float16", "float32"] | None = Field(
        None, description="the engine's weights and activations; None = float32 on CPU builds (the same seed then "
        "gives the same plan: with bfloat16 the greedy answers changed from run to run, measured), bfloat16 on "
        "GPUs; auto = the model config's",
    )
    max_model_len: int = Field(8192, ge=256, description="prompt + every round's answers must fit")
    tensor_parallel_size: int = Field(1, ge=1)
    data_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0.0, le=1.0)
    cpu_kvcache_gib: int = Field(1, ge=1, description="VLLM_CPU_KVCACHE_SPACE on CPU builds")
    cpu_reserved_cores: int | None = Field(
        None, ge=0, description="VLLM_CPU_NUM_OF_RESERVED_CPU on CPU builds: cores kept from the model's threads "
        "for vLLM's scheduler. None = 0 on machines with at most 2 usable cores (1.5x the tokens/s measured on "
        "2 cores), vLLM's own choice otherwise",
    )
    enforce_eager: bool | None = Field(
        None, description="skip torch.compile/CUDA graphs; None = eager on CPU (starts in ~25 s instead of ~100 s)"
    )
    temperature: float = Field(0.0, ge=0.0)
    repair_temperature: float | None = Field(
        None, ge=0.0, description="temperature of repair turns (seeded, so still deterministic); None = the "
        "template's (v2: 0.5, as it samples repair_candidates; v1: temperature)",
    )
    repair_candidates: int = Field(
        4, ge=1, le=16, description="v2: answers sampled per repaired frame; the first that breaks no rule is kept",
    )
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, description="vLLM's; it also penalises the prompt's own words "
                                      "(measured: frames drift off the subject), so the default leaves it off")
    presence_penalty: float | None = Field(
        None, ge=-2.0, le=2.0, description="None = the template's measured default (v2: 1.0, v1: 0); see "
        "benchmarks/plan_quality.py",
    )
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0, description="measured: pads answers with whitespace")
    template_version: Literal["v1", "v2", "shapes", "storyline"] = Field(
        "v2", description="v2 = one request per frame with a worked example (the general profile's, by "
        "measurement); v1 = the paper's single request for the whole list; shapes = the whole list in the shape "
        "world's words (a director trained with `train-director --answer frames`); storyline = the shape-world "
        "profile's: the storyline as JSON (objects, cells, timing), the frames written from it",
    )
    frame_chars: int | None = Field(
        None, ge=20, le=300, description="cap on each description's characters (JSON schema maxLength); None = the "
        "template's (v2: 150, v1: 200), lowered to what the renderer's text encoder can read",
    )
    seed: int = 0
    sample_temperature: float = Field(
        0.8, gt=0.0, description="temperature of samples 1, 2, ... of a prompt (``samples``); sample 0 is the "
        "director's usual answer",
    )
    sample_top_p: float = Field(0.95, gt=0.0, le=1.0, description="top-p of samples 1, 2, ... of a prompt")
    sample_redraws: int = Field(
        2, ge=0, le=8, description="times a sample whose frames repeat an earlier sample's of the same prompt is "
        "drawn again (with the next seed); what was kept is in its plan's director_sampling",
    )
    max_tokens: int = Field(4096, ge=16, description="cap on answer tokens (the schema bounds them too)")
    max_attempts: int = Field(3, ge=1, description="first try plus repair turns per prompt")
    quality_policy: Literal["warn", "retry", "fail"] = Field(
        "retry",
        description="soft rules (frames repeating the prompt, identical neighbours, a static video, fragments): "
        "warn = accept with warnings; retry = repair turns, then accept with warnings; fail = repair turns, then fail",
    )
    cache: bool = Field(True, description="reuse plans of identical (prompt, settings, template, model) requests")
    camera: bool = Field(True, description="ask for camera angles and movements (paper Fig. 13)")
    timeout_s: float | None = Field(
        None, gt=0, description="stop a director process still running after this many seconds (a hung "
        "engine); its unplanned prompts are recorded as failed. None = no limit",
    )


class RenderSettings(_Section):
    """The diffusion renderer. Defaults follow the paper (App. C)."""

    model_dir: Path = DEFAULT_SD_DIR
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    height: int | None = Field(None, ge=8, description="pixels; None = the model's native size")
    width: int | None = Field(None, ge=8)
    num_inference_steps: int = Field(100, ge=2)
    guidance_scale: float | None = Field(
        None, ge=1.0, description="classifier-free guidance; None = 12.0 (the paper's), 7.5 for a shape-world model "
        "(measured: docs/shape-world.md), 1.0 (no CFG) for scheduler 'lcm'"
    )
    t0_fraction: float = Field(0.90, gt=0.0, lt=1.0, description="Text2Video-Zero's t0 as a fraction of the steps (90 of 100)")
    t1_fraction: float = Field(0.95, gt=0.0, lt=1.0, description="Text2Video-Zero's t1 as a fraction of the steps (95 of 100)")
    t0: int | None = Field(None, ge=0, description="absolute t0 (steps from the end frame 1 is denoised to alone); overrides t0_fraction")
    t1: int | None = Field(None, ge=1, description="absolute t1 (the last t1+1 steps are joint); overrides t1_fraction")
    rvm_period: float = Field(
        4, ge=1, description="RVM period m in steps of a 100-step run, scaled to num_inference_steps; inf = Text2Video-Zero"
    )
    rvm_period_steps: int | None = Field(None, ge=1, description="absolute RVM period in steps; overrides rvm_period")
    rvm_blocks: Literal["up", "all"] | tuple[str, ...] = Field(
        "up", description="'up': the self-attention of the two highest-resolution up blocks with attention (SD 1.x/2.x: "
        "up_blocks.2/.3, the authors' choice; SDXL: up_blocks.0/.1); 'all': every attention layer; or block names, "
        "a list or comma-separated (e.g. up_blocks.1,mid_block): the self-attention inside them",
    )
    value_mapping: Literal["rotational", "random"] = Field(
        "rotational", description="reference frame per step: RVM, or the paper's random-VM ablation (seeded)"
    )
    dsf: bool = Field(True, description="dual-softmax filtering (paper Eq. 3-4)")
    dsf_quantile: float = Field(0.05, ge=0.0, lt=1.0, description="phi: queries at or below this confidence quantile keep their own frame's attention")
    scheduler: Literal["pndm", "ddim", "dpmsolver++", "euler", "euler-ancestral", "lcm"] = "pndm"
    lora_dir: Path | None = Field(None, description="a local LoRA directory (safetensors), fused into the UNet at load")
    lora_scale: float = Field(1.0, description="the LoRA's weight when fused")
    batch_size: int = Field(8, ge=2, description="most frames per UNet call (and VAE decode); longer videos use cached-attention chunking")
    compile: Literal["auto"] | bool = Field(
        "auto", description="torch.compile the UNet with the RVM/DSF processors: 'auto' = on for CUDA, off for CPU "
        "(there the first render compiles for minutes, later ones run ~15% faster: worth it for long prompt lists); "
        "a failed compile is logged and the render runs eagerly"
    )
    channels_last: Literal["auto"] | bool = Field(
        "auto", description="channels-last memory format for the UNet: 'auto' = on for CUDA (faster convolutions there), off for CPU"
    )
    negative_prompt: str = ""
    motion_strength_x: float = 0.0
    motion_strength_y: float = 0.0

    @field_validator("rvm_blocks", mode="before")
    @classmethod
    def _block_names(cls, value):
        """``--set render.rvm_blocks=up_blocks.1,mid_block`` is a string: a list of names, comma-separated."""
        if isinstance(value, str) and value not in ("up", "all"):
            value = tuple(name.strip() for name in value.split(",") if name.strip())
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError("name at least one block (or 'up', 'all')")
        return value

    @model_validator(mode="after")
    def _check_schedule(self) -> "RenderSettings":
        self.schedule()  # raises ScheduleError (a ValueError) naming the keys
        if self.scheduler == "lcm" and self.num_inference_steps > LCM_MAX_STEPS:
            raise ValueError(
                f"render.num_inference_steps={self.num_inference_steps} is more than render.scheduler=lcm can take "
                f"(at most {LCM_MAX_STEPS}, the steps of its distillation; LCM is meant for 2-8)"
            )
        return self

    def schedule(self) -> Schedule:
        """The absolute Text2Video-Zero window and RVM period for this step count (``schedule.py``)."""
        return resolve_schedule(
            self.num_inference_steps, self.t0_fraction, self.t1_fraction, self.t0, self.t1,
            self.rvm_period, self.rvm_period_steps,
        )

    def resolved_guidance_scale(self) -> float:
        """``guidance_scale``, or when it is None the usual one for the scheduler and the model."""
        if self.guidance_scale is not None:
            return self.guidance_scale
        if self.scheduler == "lcm":
            return LCM_GUIDANCE_SCALE
        return SHAPE_WORLD_GUIDANCE_SCALE if is_shape_world_model(self.model_dir) else DEFAULT_GUIDANCE_SCALE


class EvalSettings(_Section):
    """``direct2v eval``: the CLIP model for the paper's metrics, and optional QC thresholds.

    A threshold left at None is not checked. A video that misses any checked threshold is marked
    ``rejected`` in the manifest, with the reasons (its files stay on disk).
    """

    clip_model_dir: Path | None = Field(None, description="local Hugging Face CLIP directory (safetensors)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(32, ge=1, description="images or texts per CLIP forward pass")
    min_frame_clip: float | None = Field(None, description="reject if the mean frame-prompt CLIP score is lower")
    max_avg_dist: float | None = Field(None, ge=0.0, description="reject if Avg. Dist. is higher")
    min_consistency: float | None = Field(None, description="reject if the consecutive-frame CLIP consistency is lower")
    max_flicker: float | None = Field(None, ge=0.0, le=1.0, description="reject if the flicker score is higher")


def is_shape_world_model(model_dir: Path) -> bool:
    """Whether ``model_dir`` is the embedded shape-world renderer (its default place, built or not)
    or any model trained by ``direct2v models train-shapes`` (its TRAINING.json says so)."""
    model_dir = Path(model_dir)
    if model_dir.resolve() == DEFAULT_SD_DIR.resolve():
        return True
    return "models train-shapes" in str(training_record(model_dir).get("command", ""))


def training_record(model_dir: Path) -> dict:
    """A model directory's ``TRAINING.json`` (what trained it), {} when it has none or an unreadable one."""
    try:
        record = json.loads((Path(model_dir) / "TRAINING.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


class Settings(BaseSettings):
    """Everything a run needs; one instance is built per run and recorded with it."""

    model_config = SettingsConfigDict(
        env_prefix="DIRECT2V_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    output_root: Path = Path("outputs")
    state_dir: Path = STATE_DIR
    frames: int = Field(8, ge=2, le=512, description="frames per video unless a prompt record says otherwise")
    fps: int = Field(2, ge=1, le=120, description="frame rate given to the director and written to the MP4")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    samples: int = Field(
        1, ge=1, le=MAX_SAMPLES, description="videos per prompt unless a prompt record says otherwise: sample k "
        "gets its own plan (k >= 1 drawn at director.sample_temperature) and render seed, id <prompt id>-s<k>",
    )
    fps_doublings: int = Field(0, ge=0, le=6, description="FPS-doubling rounds of the director: F -> 2F -> 4F ...")
    director: DirectorSettings = DirectorSettings()
    render: RenderSettings = RenderSettings()
    eval: EvalSettings = EvalSettings()

    @model_validator(mode="after")
    def _resolve_director_profile(self) -> Settings:
        """``director.profile`` made concrete (and recorded so), its model and template filled in
        where the user did not set them."""
        director = self.director
        profile = director.profile
        if profile == "auto":
            profile = "shape-world" if is_shape_world_model(self.render.model_dir) else "general"
        update: dict[str, Any] = {"profile": profile}
        if profile == "shape-world":
            given = director.model_fields_set
            if "model_dir" not in given:
                update["model_dir"] = DEFAULT_SHAPE_DIRECTOR_DIR
            if "template_version" not in given:
                update["template_version"] = "storyline"
        update = {key: value for key, value in update.items() if getattr(director, key) != value}
        if update:  # (validate_assignment: assigning runs this again, which then finds nothing to do)
            self.director = director.model_copy(update=update)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = os.environ.get("DIRECT2V_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_file)))
        return tuple(sources)


def describe_errors(error: ValidationError) -> str:
    """A pydantic error as one indented line per offending key."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(settings)"
        lines.append(f"  {key}: {problem(item)} (got {item.get('input')!r})")
    return "\n".join(lines)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings, turning validation errors into a ConfigError that names each key."""
    if config_file is not None:
        if not Path(config_file).is_file():
            raise ConfigError(f"config file not found: {config_file}")
        os.environ["DIRECT2V_CONFIG"] = str(config_file)
    toml_file = os.environ.get("DIRECT2V_CONFIG")
    if toml_file and not Path(toml_file).is_file():
        raise ConfigError(f"DIRECT2V_CONFIG points at a missing file: {toml_file}")
    if toml_file and Path(toml_file).stat().st_size > MAX_CONFIG_BYTES:  # never read whole what cannot be settings
        raise ConfigError(f"invalid configuration file {toml_file}: larger than {MAX_CONFIG_BYTES >> 20} MiB; "
                          "is it a settings file?")
    try:
        return Settings(**overrides)
    except ValidationError as error:
        raise ConfigError("invalid configuration:\n" + describe_errors(error)) from None
    except UnicodeDecodeError as error:  # only the TOML file is decoded
        line = error.object[:error.start].count(b"\n") + 1
        raise ConfigError(f"invalid configuration file {toml_file}:{line}: not UTF-8 text (byte {error.start}); "
                          "save it as UTF-8") from None
    except RecursionError:  # tomllib recurses once per level of [[[... or {a = {b = ...
        if not toml_file:
            raise
        raise ConfigError(f"invalid configuration file {toml_file}: nested too deeply to read (arrays or tables "
                          "inside each other); settings are [section] key = value") from None
    except ValueError as error:  # e.g. a TOML syntax error
        # (Python refuses integers of more than 4300 digits, in words that suggest changing Python)
        reason = "a number of thousands of digits; write an ordinary number" if str(error).startswith("Exceeds the limit") else error
        raise ConfigError(f"invalid configuration file {toml_file}: {reason}") from None


def merge_settings(base: dict, overrides: dict) -> dict:
    """``overrides`` laid over ``base``, section by section (``{"render": {"t0": 3}}`` keeps the
    other render keys)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            value = merge_settings(base[key], value)
        merged[key] = value
    return merged


def saved_settings(saved: dict, overrides: dict) -> Settings:
    """The settings a run recorded (its ``settings.json``), with ``overrides`` laid over them;
    environment variables and TOML files are not consulted, so a resumed run stays the same run."""
    try:
        return Settings.model_validate(merge_settings(saved, overrides))
    except ValidationError as error:
        raise ConfigError("invalid configuration:\n" + describe_errors(error)) from None
