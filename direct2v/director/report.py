"""What a batch of plans came to: ``DirectorReport``, the rule rates written to director_report.json
and compared by the benchmarks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class DirectorReport:
    """Counts for a batch: how many answers broke each rule on the first try and in the end.

    ``valid_*`` counts answers that break no rule (a plan accepted with quality warnings is not
    valid here); ``usable_first_try`` those that pass the hard rules, ``accepted_final`` every
    plan that reached the renderer (with or without warnings, per the quality policy).
    ``truncated`` counts engine answers cut off at their token cap (``finish_reason`` "length")
    or ended by an engine error, among ``answers``; ``unchanged_repairs`` the repair turns that
    got the same answer back (the repair stops there); ``redraws`` the samples drawn again for
    repeating an earlier sample of their prompt (their first answers are not counted as first
    tries: those are the prompts'), ``repeated_samples`` those still repeating one in the end.
    """

    prompts: int = 0
    cached: int = 0
    valid_first_try: int = 0
    usable_first_try: int = 0
    valid_final: int = 0
    accepted_final: int = 0
    failed: int = 0
    answers: int = 0
    truncated: int = 0
    unchanged_repairs: int = 0
    redraws: int = 0  # samples drawn again for repeating an earlier sample of their prompt
    repeated_samples: int = 0  # samples that still repeat one after their redraws
    first_try_rules: Counter = field(default_factory=Counter)
    final_rules: Counter = field(default_factory=Counter)
    engine_calls: list[dict] = field(default_factory=list)  # one per batched call: answers, tokens, seconds

    def as_dict(self) -> dict:
        planned = max(self.prompts - self.cached, 1)
        return {
            "prompts": self.prompts,
            "cached": self.cached,
            "valid_first_try": self.valid_first_try,
            "usable_first_try": self.usable_first_try,
            "valid_final": self.valid_final,
            "accepted_final": self.accepted_final,
            "accepted_with_warnings": self.accepted_final - self.valid_final,
            "failed": self.failed,
            "answers": self.answers,
            "truncated": self.truncated,
            "unchanged_repairs": self.unchanged_repairs,
            "redraws": self.redraws,
            "repeated_samples": self.repeated_samples,
            "valid_rate_first_try": round(self.valid_first_try / planned, 4),
            "usable_rate_first_try": round(self.usable_first_try / planned, 4),
            "valid_rate_final": round(self.valid_final / planned, 4),
            "accepted_rate_final": round(self.accepted_final / planned, 4),
            "rule_rates_first_try": {k: round(v / planned, 4) for k, v in sorted(self.first_try_rules.items())},
            "rule_rates_final": {k: round(v / planned, 4) for k, v in sorted(self.final_rules.items())},
            "engine_calls": self.engine_calls,
        }
