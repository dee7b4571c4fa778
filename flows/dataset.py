"""The dataset deployments' entrypoint: the one flow of ``flows/generate.py`` under the name
``direct2v-dataset`` (so ``direct2v-dataset/dataset-nightly`` and ``direct2v-dataset/prompt-list``
keep their names). Same parameters: a prompt list of any length is streamed in shards, rendering
can fan out on Dask, and an existing ``run_id`` under ``output_root`` is resumed in place.

    python -m flows.dataset prompts_in/examples.txt          # or: direct2v dataset PROMPTS
"""

from __future__ import annotations

import json
import sys

from direct2v.job.request import JobRequest
from flows.generate import generate

generate_dataset = generate.with_options(name="direct2v-dataset")

if __name__ == "__main__":
    print(json.dumps(generate_dataset(JobRequest(prompt_file=sys.argv[1] if len(sys.argv) > 1 else "prompts_in/examples.txt")), indent=2))
