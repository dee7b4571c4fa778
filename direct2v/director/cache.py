"""The plan cache: a plan stored under a hash of everything that decided it (the request, the
sampling, the model's files), so the same request is not planned twice, across runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from direct2v.core.files import write_atomically
from direct2v.director.plan import FramePlan
from direct2v.director.prompts import PromptRecord


def model_fingerprint(model_dir: Path) -> str:
    """Identifies a model directory's contents cheaply: config, and weight file names and sizes."""
    model_dir = Path(model_dir)
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    for weights in sorted(model_dir.glob("*.safetensors")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return f"{model_dir.name}@{digest.hexdigest()[:12]}"


class PlanCache:
    """Plans keyed by a hash of everything that decides them, so the same request is not planned twice."""

    def __init__(self, root: Path, model: str):
        self.root = Path(root)
        self.model = model

    def _path(self, key: dict) -> Path:
        blob = json.dumps({**key, "model": self.model}, sort_keys=True).encode("utf-8")
        return self.root / f"{hashlib.sha256(blob).hexdigest()}.json"

    def get(self, key: dict, record: PromptRecord) -> FramePlan | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            plan = FramePlan.model_validate_json(path.read_text(encoding="utf-8"))
        except ValueError:
            return None  # a damaged entry is simply planned again
        return plan.model_copy(update={"prompt_id": record.id})

    def put(self, key: dict, plan: FramePlan) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, plan.model_dump_json())
