"""``direct2v models check DIR``: what a local diffusers directory is and whether the renderer will run it.

Reads only configs and safetensors headers (no torch, no weights loaded), so it answers in a
moment for a 7 GB SDXL checkpoint as for the tiny test models.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError, safe_open

from direct2v.render.model_dir import (
    Architecture,
    ModelDirError,
    attention_blocks,
    default_rvm_blocks,
    missing_model_files,
    read_architecture,
    read_index,
)


@dataclass
class Component:
    """One subfolder's weights: parameter count, bytes on disk, dtypes of its tensors."""

    name: str
    parameters: int = 0
    bytes: int = 0
    dtypes: Counter = field(default_factory=Counter)  # dtype -> tensors


@dataclass
class ModelReport:
    """What ``check_model`` found; ``problem`` is None when the renderer will run the directory."""

    path: str
    pipeline_class: str = ""
    architecture: str = ""
    label: str = ""
    native_size: int | None = None
    prediction_type: str = ""
    scheduler: str = ""
    attention_blocks: list[str] = field(default_factory=list)
    default_rvm_blocks: list[str] = field(default_factory=list)
    components: list[Component] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    problem: str | None = None

    @property
    def runs(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict:
        return {
            "path": self.path, "runs": self.runs, "problem": self.problem, "pipeline_class": self.pipeline_class,
            "architecture": self.architecture, "label": self.label, "native_size": self.native_size,
            "prediction_type": self.prediction_type, "scheduler": self.scheduler,
            "attention_blocks": self.attention_blocks, "default_rvm_blocks": self.default_rvm_blocks,
            "components": [{"name": c.name, "parameters": c.parameters, "bytes": c.bytes, "dtypes": dict(c.dtypes)}
                           for c in self.components],
            "missing": self.missing,
        }

    def lines(self) -> list[str]:
        """The report as a person reads it."""
        out = [f"{self.path}: {self.label or 'not a model this renderer runs'}"
               + (f" ({self.pipeline_class})" if self.pipeline_class else "")]
        if self.native_size:
            out.append(f"  native size     {self.native_size} px")
        if self.scheduler:
            out.append(f"  scheduler       {self.scheduler}, prediction {self.prediction_type or 'epsilon'} "
                       "(renders with PNDM from this config unless render.scheduler says otherwise)")
        if self.default_rvm_blocks:
            out.append(f"  RVM blocks      'up' = {', '.join(self.default_rvm_blocks)}; with attention: "
                       f"{', '.join(self.attention_blocks)}")
        for c in self.components:
            dtypes = ", ".join(f"{dtype} x{count}" for dtype, count in sorted(c.dtypes.items()))
            out.append(f"  {c.name:<15} {c.parameters / 1e6:9.2f} M parameters  {c.bytes / 2**20:9.1f} MiB  {dtypes}")
        if self.missing:
            out.append(f"  missing         {', '.join(self.missing)}")
        out.append("  will run        yes" if self.runs else f"  will not run    {self.problem}")
        return out


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files of one component (a single file, or the shards an index lists)."""
    files = sorted(folder.glob("*.safetensors"))
    for index in folder.glob("*.safetensors.index.json"):
        shards = set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values())
        files += [folder / shard for shard in sorted(shards) if folder / shard not in files]
    return files


def _component(root: Path, name: str) -> Component:
    component = Component(name)
    for path in _weight_files(root / name):
        if not path.is_file():
            continue
        component.bytes += path.stat().st_size
        with safe_open(str(path), framework="numpy") as weights:
            for key in weights.keys():
                tensor = weights.get_slice(key)
                count = 1
                for size in tensor.get_shape():
                    count *= size
                component.parameters += count
                component.dtypes[tensor.get_dtype()] += 1
    return component


def check_model(path: Path) -> ModelReport:
    """Read ``path`` as the renderer would, without loading a weight: a report whose ``problem``
    says, in one line, why it will not run (None when it will)."""
    root = Path(path)
    report = ModelReport(str(root))
    if not root.is_dir():
        report.problem = "directory not found"
        return report
    try:
        report.pipeline_class = str(read_index(root).get("_class_name") or "")
    except (OSError, ValueError):
        pass
    try:
        architecture: Architecture = read_architecture(root)
    except ModelDirError as error:
        report.problem = str(error)
        return report
    report.architecture, report.label = architecture.name, architecture.label
    report.missing = missing_model_files(root, architecture)
    try:
        unet = json.loads((root / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((root / "vae" / "config.json").read_text(encoding="utf-8"))
        report.native_size = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
        report.attention_blocks = attention_blocks(root)
        report.default_rvm_blocks = list(default_rvm_blocks(unet.get("up_block_types", [])))
        scheduler = json.loads((root / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        report.scheduler = str(scheduler.get("_class_name", ""))
        report.prediction_type = str(scheduler.get("prediction_type", "epsilon"))
    except (OSError, ValueError, KeyError, TypeError) as error:
        report.problem = report.problem or f"a component's config cannot be read ({type(error).__name__}: {error})"
    for name in architecture.required:
        if name not in ("tokenizer", "tokenizer_2", "scheduler"):
            try:
                report.components.append(_component(root, name))
            except (OSError, ValueError, SafetensorError) as error:
                report.problem = report.problem or f"{name}: its weights cannot be read ({error})"
    if report.missing and report.problem is None:
        report.problem = (f"missing {', '.join(report.missing)} "
                          f"(a complete {architecture.label} directory, safetensors only)")
    if not report.default_rvm_blocks and report.problem is None:
        report.problem = "the UNet has no up blocks with attention: rotational value mapping has nowhere to act"
    return report

