"""Plan quality as pure functions on frame descriptions: no model, no files.

The director's soft rules (``plan.quality_problems``) and the plan-quality benchmark
(``benchmarks/plan_quality.py``) both measure plans with these, so a rule means the same thing
in a run's warnings and in the benchmark's table.

Text is compared as *words*: lower-cased runs of letters and digits (``words``). Content words
drop a small closed list of function words (``STOPWORDS``); ``stem`` folds plural and verb
endings ("corgis", "running", "runs" -> "corgi", "runn", "run") so that a frame which says
"the kittens" keeps the subject of "a kitten plays".

* **restates the prompt**: the frame is the prompt again, normalised, or its content words are
  nearly the prompt's (Jaccard >= ``RESTATE_OVERLAP``): it adds no direction;
* **phrase loop**: a run of ``LOOP_NGRAM`` + 1 words occurs twice inside one frame, or of
  ``LOOP_NGRAM`` words three times ("a sight that is not a sight that is not"), the signature of
  a small model's degenerate decoding;
* **on topic**: the frame names the prompt's subject (``subject_terms``: the head noun of the
  prompt's leading noun phrase, or terms the caller gives);
* **progression**: neighbouring frames share most content words but are not the same
  (Jaccard in ``PROGRESSION_BAND``);
* a **clean plan**: valid, every frame distinct, none restating the prompt, no loop, every
  frame on topic, not truncated.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

LOOP_NGRAM = 3
RESTATE_OVERLAP = 0.8
PROGRESSION_BAND = (0.1, 1.0)  # similar (some shared words) but not the same set of words

STOPWORDS = frozenset(
    """a an the this that these those some any each every one two three four five several many
    and or but then while as so of to in on at by for from with without into onto over under
    above below across through along around past near after before during toward towards behind
    up down out off away again later first next finally still just very is are was were be been
    being am has have had do does did it its it's their his her them they he she we you i
    there here which who whom whose what where when how all both another other more most""".split()
)
# words that end a subject noun phrase ("A corgi *is* running", "Rain *falls*"): auxiliaries; any
# other verb is found by its ending (see ``subject_terms``)
_AUXILIARIES = frozenset("is are was were be been has have had do does did can will would may might".split())
_IRREGULAR_PLURALS = frozenset("children people men women mice geese feet teeth".split())
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits: punctuation and quotes are not words."""
    return _WORD.findall(text.lower())


def stem(word: str) -> str:
    """A crude suffix fold, enough to match "corgis"/"corgi" and "runs"/"run" (not a lemmatiser)."""
    for suffix in ("ing", "ies", "es", "s", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def content_stems(text: str) -> set[str]:
    """The stems of a text's content words (function words dropped)."""
    return {stem(word) for word in words(text) if word not in STOPWORDS}


def jaccard(a: set[str], b: set[str]) -> float:
    """|a & b| / |a | b|; two empty sets are identical (1.0)."""
    return len(a & b) / len(a | b) if a | b else 1.0


def normalised(text: str) -> str:
    """Words joined by single spaces: case, punctuation and spacing do not make frames differ."""
    return " ".join(words(text))


def subject_terms(prompt: str) -> set[str]:
    """The stem of the head noun of the prompt's leading noun phrase: the last content word
    before its first verb ("A hot air balloon rises" -> {balloon}).

    No tagger is available offline, so a verb is an auxiliary ("is", "has") or, after the first
    content word, a word ending in "s"/"ing" ("runs", "falls", "running"); a plural noun ends the
    phrase ("Two kittens play" -> {kitten}); "-ly" adverbs are skipped ("Snow slowly covers" ->
    {snow}). A prompt with no content word before its verb falls back to all its content words.
    """
    terms: list[str] = []
    for word in words(prompt):
        if word in _AUXILIARIES and terms:
            break
        if word in STOPWORDS:
            if terms:
                break
            continue
        if word.endswith("ly") and terms:
            continue
        plural_or_verb = (word.endswith("ing") or word in _IRREGULAR_PLURALS
                          or (word.endswith("s") and not word.endswith(("ss", "us"))))
        if terms and plural_or_verb:
            break
        terms.append(word)
        if plural_or_verb:  # a plural head noun: its verb comes next
            break
    return {stem(terms[-1])} if terms else content_stems(prompt)


def restates_prompt(frame: str, prompt: str) -> bool:
    """The frame is the user prompt again (normalised), or nearly its content words."""
    if normalised(frame) == normalised(prompt):
        return True
    return jaccard(content_stems(frame), content_stems(prompt)) >= RESTATE_OVERLAP


def phrase_loop(frame: str, n: int = LOOP_NGRAM) -> str | None:
    """A phrase the frame keeps coming back to: a run of ``n`` + 1 words that occurs twice, or of
    ``n`` words that occurs three times (never overlapping itself), or one word three times in a
    row; or None.

    "The cat is a cat. The cat is a cat." loops; "the cat is watching the rain ... the cat is
    mesmerised" (three words twice) is plain, if clumsy, prose.
    """
    tokens = words(frame)
    for first, second, third in zip(tokens, tokens[1:], tokens[2:]):
        if first == second == third:  # "red red red"
            return f"{first} {second} {third}"
    for size, times in ((n + 1, 2), (n, 3)):
        starts: dict[tuple[str, ...], list[int]] = {}
        for start in range(len(tokens) - size + 1):
            gram = tuple(tokens[start:start + size])
            seen = starts.setdefault(gram, [])
            if not seen or start >= seen[-1] + size:
                seen.append(start)
                if len(seen) == times:
                    return " ".join(gram)
    return None


def on_topic(frame: str, subject: set[str]) -> bool:
    """The frame names at least one of the subject's stems, alone or at the start of a compound
    ("rain" in "raindrops", "rainbow"; only for stems of four letters or more: "car" is not in
    "carpet")."""
    stems = content_stems(frame)
    return bool(stems & subject) or any(word.startswith(term) for word in stems for term in subject if len(term) >= 4)


def adjacent_similarity(frames: Sequence[str]) -> list[float]:
    """(F - 1,) content-word Jaccard of each frame with the next."""
    stems = [content_stems(frame) for frame in frames]
    return [jaccard(a, b) for a, b in itertools.pairwise(stems)]


@dataclass(frozen=True)
class PlanQuality:
    """One plan's measures. Rates are over frames (or neighbouring pairs); a plan that did not parse
    (``valid`` False) has only ``truncated`` and ``valid`` meaningful."""

    valid: bool
    truncated: bool
    frames: int
    distinct: int
    adjacent_identical: float
    restating: int
    looping: int
    on_topic: float
    progression: float
    adjacent_similarity: float
    words_per_frame: float

    @property
    def clean(self) -> bool:
        return (self.valid and not self.truncated and self.distinct == self.frames and not self.restating
                and not self.looping and self.on_topic == 1.0)

    def as_dict(self) -> dict:
        return {**asdict(self), "clean": self.clean}


def measure_plan(frames: Sequence[str] | None, prompt: str, expected: int, truncated: bool = False,
                 subject: set[str] | None = None) -> PlanQuality:
    """Every measure of one plan. ``frames`` None (or not ``expected`` non-empty strings) is an
    invalid plan; ``truncated`` is the engine's ``finish_reason == "length"``; ``subject`` defaults
    to ``subject_terms(prompt)``."""
    if frames is None or len(frames) != expected or not all(isinstance(f, str) and f.strip() for f in frames):
        return PlanQuality(False, truncated, expected, 0, 0.0, 0, 0, 0.0, 0.0, 0.0, 0.0)
    subject = subject_terms(prompt) if subject is None else {stem(term) for term in subject}
    normal = [normalised(frame) for frame in frames]
    pairs = max(len(frames) - 1, 1)
    similarity = adjacent_similarity(frames)
    low, high = PROGRESSION_BAND
    return PlanQuality(
        valid=True,
        truncated=truncated,
        frames=len(frames),
        distinct=len(set(normal)),
        adjacent_identical=sum(a == b for a, b in itertools.pairwise(normal)) / pairs,
        restating=sum(restates_prompt(frame, prompt) for frame in frames),
        looping=sum(phrase_loop(frame) is not None for frame in frames),
        on_topic=sum(on_topic(frame, subject) for frame in frames) / len(frames),
        progression=sum(low <= s < high for s in similarity) / pairs,
        adjacent_similarity=sum(similarity) / pairs,
        words_per_frame=sum(len(words(frame)) for frame in frames) / len(frames),
    )


def summarise_plans(qualities: Sequence[PlanQuality]) -> dict[str, float]:
    """A run's means over its plans (the frame measures over valid plans only) and its clean rate."""
    count = max(len(qualities), 1)
    valid = [q for q in qualities if q.valid]
    per_valid = max(len(valid), 1)

    def mean(values) -> float:
        return sum(values) / per_valid

    return {
        "plans": len(qualities),
        "valid": len(valid) / count,
        "truncated": sum(q.truncated for q in qualities) / count,
        "distinct": mean(q.distinct / q.frames for q in valid),
        "adjacent_identical": mean(q.adjacent_identical for q in valid),
        "restating_plans": sum(q.restating > 0 for q in valid) / count,
        "looping_plans": sum(q.looping > 0 for q in valid) / count,
        "on_topic": mean(q.on_topic for q in valid),
        "all_on_topic_plans": sum(q.on_topic == 1.0 for q in valid) / count,
        "progression": mean(q.progression for q in valid),
        "adjacent_similarity": mean(q.adjacent_similarity for q in valid),
        "words_per_frame": mean(q.words_per_frame for q in valid),
        "clean": sum(q.clean for q in qualities) / count,
    }
