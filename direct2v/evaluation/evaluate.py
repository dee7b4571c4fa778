"""``direct2v eval``: the paper's metrics for a finished run, QC, and the Table-1 comparison.

* ``ClipModel`` loads a CLIP from a local Hugging Face directory (``CLIPModel`` +
  ``CLIPTokenizer`` + ``CLIPImageProcessorPil``; ``local_files_only``, safetensors only).
* ``evaluate_run`` decodes every rendered MP4 of a run directory, computes per-frame CLIP scores
  (to the frame's prompt and to the user prompt), Avg. Dist., consecutive-frame consistency and
  flicker (``metrics``), applies the optional QC thresholds (``EvalSettings``) and records the
  results as new manifest columns: an updated row per video is appended to the run's journal
  (last row wins) and ``manifest.parquet`` is compacted again (``manifest.compact``, which
  folds in every journal and part; evaluate finished runs, not one still being written). A video that misses a threshold
  gets ``status = "rejected"`` and a ``qc_reason``; its files stay where they are. Evaluating
  again (say with other thresholds) re-decides every evaluated video, and reuses its stored
  metrics when they came from the same CLIP model (``force`` recomputes them).
* It also writes the run's Table-1-style summary: ``evaluation.md`` and ``evaluation.json``.

Why manifest columns and not a separate file: the manifest is the one table a dataset team reads,
and ``status`` must say ``rejected`` there anyway; the journal's last-row-wins rule makes an
evaluation one more append, with no join and no second file to keep in step.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from direct2v.core.config import EvalSettings
from direct2v.core.errors import Direct2VError
from direct2v.core.files import model_id, write_atomically
from direct2v.evaluation import metrics
from direct2v.job.manifest import ManifestError, ManifestRow, VideoMetrics, append_rows, compact, read_rows
from direct2v.job.rundir import EVALUATION_JSON, EVALUATION_MD
from direct2v.render.encode import read_video

log = logging.getLogger(__name__)

#: Rows ``evaluate_run`` looks at: rendered videos (a rejected one may pass new thresholds).
EVALUATED_STATUSES = ("ok", "rejected")


class EvalError(Direct2VError, RuntimeError):
    """The evaluation cannot start (no CLIP model, an unusable model directory, no manifest)."""


# --------------------------------------------------------------------------------------------------
# CLIP from a local directory


class ClipModel:
    """A CLIP loaded once; embeds frames and texts into unit vectors of the joint space."""

    def __init__(self, model_dir: Path, device: str = "auto", batch_size: int = 32):
        import torch
        from transformers import CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise EvalError(f"{model_dir}: not a Hugging Face CLIP directory (no config.json)")
        if not any(model_dir.glob("*.safetensors")):
            raise EvalError(f"{model_dir}: no .safetensors weights (only safetensors are loaded)")
        if device == "cuda" and not torch.cuda.is_available():
            raise EvalError("eval.device is 'cuda' but no CUDA GPU is available")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model_id = model_id(model_dir, "config.json")
        try:
            self.model = CLIPModel.from_pretrained(model_dir, local_files_only=True, use_safetensors=True)
            self.tokenizer = CLIPTokenizer.from_pretrained(model_dir, local_files_only=True)
            self.processor = CLIPImageProcessorPil.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as error:
            raise EvalError(f"cannot load CLIP from {model_dir}: {error}") from None
        self.model.to(self.device).eval()
        self.max_tokens = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)

    @staticmethod
    def _features(output):
        # transformers 5 returns a model output whose pooler_output is the projected embedding
        return output if hasattr(output, "shape") else output.pooler_output

    def embed_images(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 frames -> (N, D) unit embeddings (float64)."""
        import torch
        from PIL import Image

        chunks = []
        for start in range(0, len(frames), self.batch_size):
            images = [Image.fromarray(frame) for frame in frames[start : start + self.batch_size]]
            pixels = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
            with torch.inference_mode():
                chunks.append(self._features(self.model.get_image_features(pixel_values=pixels)).float().cpu().numpy())
        return metrics.normalize(np.concatenate(chunks))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> (N, D) unit embeddings; texts longer than CLIP's 77 tokens are truncated, as SD does."""
        import torch

        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                output = self.model.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                )
                chunks.append(self._features(output).float().cpu().numpy())
        return metrics.normalize(np.concatenate(chunks))


# --------------------------------------------------------------------------------------------------
# Per-video metrics


def video_metrics(
    frames: np.ndarray, frame_prompts: Sequence[str], prompt: str, clip: ClipModel | None
) -> VideoMetrics:
    """All metrics of one video (``VideoMetrics``: the manifest's metric columns); without ``clip``
    only the model-free flicker score."""
    if len(frames) < 2:
        raise ValueError(f"need at least 2 frames, got {len(frames)}")
    result = VideoMetrics(flicker=metrics.flicker(frames))
    if clip is None:
        return result
    if len(frame_prompts) != len(frames):
        raise ValueError(f"the video has {len(frames)} frames but there are {len(frame_prompts)} frame prompts")
    images = clip.embed_images(frames)
    texts = clip.embed_texts([*frame_prompts, prompt])
    frame_scores = metrics.clip_scores(images, texts[:-1])
    prompt_scores = metrics.clip_scores(images, texts[-1])
    result.clip_frame_scores = [float(x) for x in frame_scores]
    result.clip_prompt_scores = [float(x) for x in prompt_scores]
    result.clip_frame = float(frame_scores.mean())
    result.clip_prompt = float(prompt_scores.mean())
    result.avg_dist = metrics.avg_dist(frame_scores)
    result.consistency = float(metrics.consecutive_consistency(images).mean())
    return result


#: (threshold field, metric field, True if the metric must be at least the threshold, label)
QC_RULES = (
    ("min_frame_clip", "clip_frame", True, "frame CLIP score"),
    ("max_avg_dist", "avg_dist", False, "Avg. Dist."),
    ("min_consistency", "consistency", True, "consistency"),
    ("max_flicker", "flicker", False, "flicker"),
)


def qc_reasons(values: dict, settings: EvalSettings) -> list[str]:
    """The checked thresholds a video misses, as readable reasons (empty = it passes)."""
    reasons = []
    for threshold_key, metric_key, at_least, label in QC_RULES:
        threshold = getattr(settings, threshold_key)
        if threshold is None:
            continue
        value = values.get(metric_key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            reasons.append(f"{label} not measured ({threshold_key} is set)")
        elif (value < threshold) if at_least else (value > threshold):
            reasons.append(f"{label} {value:.4f} {'<' if at_least else '>'} {threshold_key} {threshold:g}")
    return reasons


def needs_clip(settings: EvalSettings) -> bool:
    return any(getattr(settings, key) is not None for key in ("min_frame_clip", "max_avg_dist", "min_consistency"))


# --------------------------------------------------------------------------------------------------
# A run directory


@dataclass
class RunEvaluation:
    run_dir: Path
    rows: list[ManifestRow]
    table: list[tuple[str, float, int]] = field(default_factory=list)
    prompt_table: list[tuple[str, float, int]] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    manifest: Path | None = None

    def markdown(self) -> str:
        return evaluation_markdown(self)


def run_rows(run_dir: Path) -> list[ManifestRow]:
    """The run's rows as they stand (``manifest.read_rows``), or an EvalError for a non-run."""
    try:
        return read_rows(run_dir)
    except ManifestError as error:
        raise EvalError(str(error)) from None


def _needs_measuring(row: ManifestRow, model_id: str | None, force: bool) -> bool:
    """Stored metrics are reused unless forced, missing, or (with a model) from another model."""
    if force or row.flicker is None:
        return True
    return model_id is not None and (row.eval_model != model_id or row.clip_frame_scores is None)


def evaluate_run(
    run_dir: Path,
    settings: EvalSettings,
    clip: ClipModel | None = None,
    targets: dict[str, list[str]] | None = None,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> RunEvaluation:
    """Evaluate every rendered video of ``run_dir``; see the module docstring.

    ``clip`` defaults to the model of ``settings.clip_model_dir`` (loaded here); with neither,
    only flicker is measured. ``targets`` (prompt id -> frame prompts) scores frames against other
    prompts than the ones they were rendered from (``compare`` scores the one-prompt T2V-Z video
    against the plan's frames).
    """
    run_dir = Path(run_dir)
    rows = run_rows(run_dir)
    if clip is None and settings.clip_model_dir is not None:
        clip = ClipModel(settings.clip_model_dir, settings.device, settings.batch_size)
    if clip is None and needs_clip(settings):
        raise EvalError("CLIP thresholds are set but no CLIP model is: set eval.clip_model_dir (or --clip-model)")
    model_id = clip.model_id if clip else None
    updated = []
    for row in rows:
        if row.status not in EVALUATED_STATUSES:
            continue
        if progress:
            progress(row.prompt_id)
        values: dict = {}
        if _needs_measuring(row, model_id, force):
            try:
                frames = read_video(run_dir / row.video_path)
                frame_prompts = (targets or {}).get(row.prompt_id) or row.frame_prompts
                measured = video_metrics(frames, frame_prompts, row.prompt or "", clip)
            except (OSError, ValueError, RuntimeError) as error:  # a missing or unreadable video
                log.error("cannot evaluate %s: %s", row.prompt_id, error)
                cleared = dict.fromkeys(VideoMetrics.model_fields)
                updated.append(row.model_copy(update={
                    **cleared, "eval_model": model_id or "none", "status": "rejected",
                    "qc_reason": f"cannot evaluate: {error}",
                }))
                continue
            values = measured.model_dump()
            if clip is None:  # keep CLIP scores an earlier evaluation stored
                values = {"flicker": values["flicker"], "eval_model": row.eval_model or "none"}
            else:
                values["eval_model"] = model_id
        current = row.model_copy(update=values)
        reasons = qc_reasons(current.model_dump(), settings)
        updated.append(current.model_copy(update={
            "status": "rejected" if reasons else "ok", "qc_reason": "; ".join(reasons),
        }))
    append_rows(run_dir, updated)
    manifest = compact(run_dir).path  # every journal and part folded in, last row wins
    result = summarise_rows(run_dir, run_rows(run_dir))
    result.manifest = manifest
    write_atomically(run_dir / EVALUATION_MD, result.markdown() + "\n")
    write_atomically(run_dir / EVALUATION_JSON, json.dumps(evaluation_json(result), indent=2) + "\n")
    return result


def summarise_rows(run_dir: Path, rows: list[ManifestRow]) -> RunEvaluation:
    """Table-1 rows (scores to the frame prompts, and to the user prompt) and run-level means."""
    evaluated = [row for row in rows if row.status in EVALUATED_STATUSES and row.flicker is not None]
    scored = [row for row in evaluated if row.clip_frame_scores]

    def mean(key: str, of: list[ManifestRow]) -> float | None:
        values = [getattr(row, key) for row in of if getattr(row, key) is not None]
        return float(np.mean(values)) if values else None

    summary = {
        "videos": len([row for row in rows if row.video_path]),
        "evaluated": len(evaluated),
        "ok": sum(row.status == "ok" for row in evaluated),
        "rejected": sum(row.status == "rejected" for row in rows),
        "clip_model": scored[0].eval_model if scored else None,
        "clip_frame": mean("clip_frame", scored),
        "clip_prompt": mean("clip_prompt", scored),
        "avg_dist_per_video": mean("avg_dist", scored),
        "consistency": mean("consistency", scored),
        "flicker": mean("flicker", evaluated),
    }
    return RunEvaluation(
        run_dir=Path(run_dir),
        rows=rows,
        table=metrics.table_rows([row.clip_frame_scores for row in scored]),
        prompt_table=metrics.table_rows([row.clip_prompt_scores for row in scored]),
        summary=summary,
    )


def evaluation_markdown(result: RunEvaluation) -> str:
    s = result.summary
    lines = [f"# Evaluation of {result.run_dir.name}", ""]
    if result.table:
        lines += [
            f"CLIP similarity per frame index, mean over {len(_scored(result))} videos ({s['clip_model']}):",
            "",
            metrics.markdown_table({"frame prompt": result.table, "user prompt": result.prompt_table}),
            "",
            "Avg. Dist. = mean over f > 1 of |score_1 - score_f| of the rows above; "
            "(/F) divides by F, the convention of the paper's printed Table 1.",
            "",
        ]
        counts = [n for label, _, n in result.table if label.isdigit()]
        if len(set(counts)) > 1:
            lines += ["Frame counts differ: each frame row averages the videos that have that frame "
                      f"(videos per row: {', '.join(map(str, counts))}).", ""]
    else:
        lines += ["No CLIP scores (no CLIP model given): flicker only.", ""]
    lines += ["| run | value |", "| --- | --- |"]
    for key, value in s.items():
        lines.append(f"| {key} | {'' if value is None else (f'{value:.4f}' if isinstance(value, float) else value)} |")
    return "\n".join(lines)


def _scored(result: RunEvaluation) -> list[ManifestRow]:
    return [row for row in result.rows if row.status in EVALUATED_STATUSES and row.clip_frame_scores]


def evaluation_json(result: RunEvaluation) -> dict:
    return {
        "run": result.run_dir.name,
        "summary": result.summary,
        "table_frame_prompt": [{"row": label, "value": value, "videos": n} for label, value, n in result.table],
        "table_user_prompt": [{"row": label, "value": value, "videos": n} for label, value, n in result.prompt_table],
    }
