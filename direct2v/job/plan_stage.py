"""The plan stage of a job: every shard of the prompt file (or of the plan directory) to a plan
for each prompt that can have one, and a shard file listing what the render stage is to make.

    PlanStage(run).units() --plan(unit)--> shards/<n>.jsonl    (one director process per prompt shard)

Plans still on disk that fit their prompt are kept; the rest of a shard goes to one director
process (``planning``), which exits, freeing the GPU, before the shard's plan returns. Hand-written
plan files are validated and imported the same way. Memory stays bounded by the shard size.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from direct2v.job import planning, shards
from direct2v.job.request import Run

log = logging.getLogger(__name__)


class PlanStage:
    """The plan stage over one run: ``units()`` streams its shards, ``plan(unit)`` plans one and
    writes its shard file; ``counts`` adds up what every shard did."""

    def __init__(self, run: Run, progress: bool = False):
        from tqdm import tqdm

        self.run = run
        self.counts: Counter = Counter()
        self._seen: set[str] = set()  # prompt ids of imported plan files so far: one short string each
        self._budget = planning.token_budget(run.settings) if run.job.plans_dir else None
        total = shards.count_prompt_lines(Path(run.job.prompt_file)) if progress and run.job.prompt_file else None
        self._bar = tqdm(total=total, desc="plan", unit="prompt", disable=not progress, file=sys.stderr)

    def units(self) -> Iterator[shards.PromptShard | tuple[int, list[Path]]]:
        """Prompt shards, or (index, plan files) for a plan directory, one at a time."""
        if self.run.job.plans_dir:
            yield from enumerate(shards.stream_plan_files(Path(self.run.job.plans_dir), self.run.job.shard_size), start=1)
        else:
            yield from shards.stream_prompt_shards(Path(self.run.job.prompt_file), self.run.job.shard_size)

    def plan(self, unit) -> shards.ShardWork:
        """One shard through the director (or, for plan files, through validation) to its shard file."""
        if isinstance(unit, shards.PromptShard):
            work, counts = self._plan_prompts(unit)
        else:
            work, counts = self._import_plan_files(*unit)
        shards.write_shard_file(self.run.dir, work)
        self.counts.update(counts)
        self.counts["to_render"] += len(work.to_render)
        self.counts["shards"] += 1
        self._bar.update(counts["prompts"])
        return work

    def close(self) -> Counter:
        self._bar.close()
        return self.counts

    def _plan_prompts(self, shard: shards.PromptShard) -> tuple[shards.ShardWork, Counter]:
        run = self.run
        records, unsampled = planning.expand_samples(shard.records, run.settings)
        problems = [*shard.problems, *unsampled]
        rows = [planning.problem_row(run.id, problem, index) for index, problem in enumerate(problems)]
        for problem in problems:
            log.error("%s", problem)
        reused, to_plan = planning.reusable_plans(records, run.dir, run.settings)
        planned, failed = planning.plan_records(to_plan, run.dir, run.settings)
        for row in failed:
            log.error("%s (%s): planning failed: %s", row.prompt_id, row.source, row.error)
        have_plan = {plan.prompt_id for plan in (*reused, *planned)}
        work = shards.ShardWork(shard.index, [(r.id, r.source) for r in records if r.id in have_plan], rows + failed)
        return work, Counter(prompts=len(shard.records) + len(shard.problems), input_problems=len(problems),
                             plans_reused=len(reused), planned=len(planned), plan_failed=len(failed))

    def _import_plan_files(self, index: int, paths: list[Path]) -> tuple[shards.ShardWork, Counter]:
        imported, rows = planning.import_plan_files(paths, self.run.dir, self._budget, self._seen)
        work = shards.ShardWork(index, [(plan.prompt_id, source) for plan, source in imported], rows)
        return work, Counter(prompts=len(paths), input_problems=len(rows), plans_reused=len(imported))
