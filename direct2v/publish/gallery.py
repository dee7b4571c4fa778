"""Review outputs for a run directory: a contact sheet per video and a static ``index.html``.

    outputs/<run-id>/
        review/<id>.png      the video's frames in a grid, each frame's prompt (and score) under it
        index.html           every manifest row: player, contact sheet, prompts, metrics, status

The page is self-contained: inline CSS and a few lines of inline JavaScript (a status filter), no
external assets, relative links only (copy or serve the run directory as it is). Every text from a
prompt file, a plan or an error is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from direct2v.core.files import atomic_path, write_atomically, writing
from direct2v.evaluation import storylines
from direct2v.job.manifest import ManifestRow, read_rows
from direct2v.job.rundir import EVALUATION_JSON
from direct2v.render.encode import EncodeError, read_video
from direct2v.shape_world.stories import known_story

log = logging.getLogger(__name__)

REVIEW_DIR = "review"
INDEX_HTML = "index.html"

_BACKGROUND = (250, 250, 250)
_TEXT = (20, 20, 20)
_MUTED = (90, 90, 90)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's bundled TrueType font (no system fonts needed)


def wrap_text(text: str, font, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; a too-long last line ends with an ellipsis."""
    words, lines, line = text.split(), [], ""
    for word in words:
        while font.getlength(word) > width:  # a single word wider than the cell: cut it
            cut = len(word)
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut -= 1
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:cut])
            word = word[cut:]
        candidate = f"{line} {word}".strip()
        if font.getlength(candidate) <= width:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + " …") > width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last.rstrip() + " …"]
    return lines


def _tile(frame: np.ndarray, min_width: int, max_width: int) -> Image.Image:
    """One frame at a readable size: small frames enlarged by whole factors (sharp pixels), big ones reduced."""
    image = Image.fromarray(frame)
    if image.width < min_width:
        factor = math.ceil(min_width / image.width)
        return image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    if image.width > max_width:
        return image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
    return image


def contact_sheet(
    frames: np.ndarray,
    frame_prompts: Sequence[str],
    title: str = "",
    subtitle: str = "",
    scores: Sequence[float] | None = None,
    columns: int = 4,
    min_tile: int = 192,
    max_tile: int = 256,
    caption_lines: int = 4,
) -> Image.Image:
    """Frames in a grid (``columns`` wide), each with "frame number [score]" and its wrapped prompt below."""
    if len(frames) == 0:
        raise ValueError("no frames")
    tiles = [_tile(np.asarray(frame, dtype=np.uint8), min_tile, max_tile) for frame in frames]
    tile_w, tile_h = tiles[0].size
    columns = max(1, min(columns, len(tiles)))
    rows = math.ceil(len(tiles) / columns)
    pad, size = 8, 13
    body, small, head = _font(size), _font(size - 1), _font(size + 3)
    line_h = size + 4
    caption_h = line_h * (caption_lines + 1) + pad
    header_h = (pad + (size + 8) + (line_h if subtitle else 0)) if title or subtitle else 0
    width = columns * tile_w + (columns + 1) * pad
    height = header_h + rows * (tile_h + caption_h) + (rows + 1) * pad
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((pad, pad), title, font=head, fill=_TEXT)
    if subtitle:
        for line in wrap_text(subtitle, body, width - 2 * pad, 1):
            draw.text((pad, pad + size + 8), line, font=body, fill=_MUTED)
    for index, tile in enumerate(tiles):
        row, column = divmod(index, columns)
        x = pad + column * (tile_w + pad)
        y = header_h + pad + row * (tile_h + caption_h + pad)
        sheet.paste(tile, (x, y))
        label = f"frame {index + 1}"
        if scores is not None and index < len(scores) and scores[index] is not None:
            label += f"  CLIP {scores[index]:.3f}"
        draw.text((x, y + tile_h + 4), label, font=small, fill=_MUTED)
        prompt = frame_prompts[index] if index < len(frame_prompts) else ""
        for line_index, line in enumerate(wrap_text(prompt, body, tile_w, caption_lines)):
            draw.text((x, y + tile_h + 4 + line_h * (line_index + 1)), line, font=body, fill=_TEXT)
    return sheet


def write_contact_sheet(row: ManifestRow, run_dir: Path, frames: np.ndarray | None = None) -> Path:
    """``review/<id>.png`` for one rendered row (frames decoded from its MP4 unless given)."""

    run_dir = Path(run_dir)
    if frames is None:
        frames = read_video(run_dir / row.video_path)
    status = row.status + (f" ({row.qc_reason})" if row.qc_reason else "")
    sheet = contact_sheet(
        frames, row.frame_prompts, title=f"{row.prompt_id}  [{status}]", subtitle=row.prompt or "",
        scores=row.clip_frame_scores,
    )
    path = run_dir / REVIEW_DIR / f"{row.prompt_id}.png"
    with writing(path):  # a full disk stops the gallery (a DiskFullError), not just this sheet
        path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        sheet.save(temporary, format="PNG", optimize=True)
    return path


# --------------------------------------------------------------------------------------------------
# index.html

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f4f4;color:#222}
header{padding:16px 24px;background:#222;color:#eee}header h1{margin:0 0 4px;font-size:20px}
main{padding:16px 24px}.filters label{margin-right:12px}
table{border-collapse:collapse}td,th{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}
.entry{background:#fff;border-radius:6px;margin:16px 0;padding:12px 16px;box-shadow:0 1px 3px rgba(0,0,0,.12)}
.entry h2{font-size:16px;margin:0 0 8px}.media{display:flex;gap:16px;flex-wrap:wrap;align-items:flex-start}
video{width:256px;background:#000;image-rendering:pixelated}.sheet{max-width:100%;border:1px solid #ddd}
.status{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;color:#fff;vertical-align:middle}
.status-ok{background:#2e7d32}.status-rejected{background:#b26a00}.status-failed{background:#c62828}
.entry[data-status=ok]{border-left:5px solid #2e7d32}.entry[data-status=rejected]{border-left:5px solid #b26a00}
.entry[data-status=failed]{border-left:5px solid #c62828}.reason{color:#b26a00}
.error{color:#c62828;white-space:pre-wrap}.prompt{font-size:15px}.story{margin:4px 0;color:#333}
ol{margin:4px 0 8px;padding-left:28px}.muted{color:#666}.hidden{display:none}
.samples>h2{font-size:16px;margin:20px 0 0}.sample-row{display:flex;gap:12px;overflow-x:auto;align-items:flex-start}
.sample-row .entry{flex:0 0 440px;margin:8px 0}
"""

_SCRIPT = """
document.querySelectorAll('.filters input').forEach(function (box) {
  box.addEventListener('change', function () {
    document.querySelectorAll('.entry').forEach(function (entry) {
      if (entry.dataset.status === box.value) entry.classList.toggle('hidden', !box.checked);
    });
  });
});
"""

_METRICS = (
    ("clip_frame", "CLIP to frame prompts"),
    ("clip_prompt", "CLIP to user prompt"),
    ("avg_dist", "Avg. Dist."),
    ("consistency", "consistency"),
    ("flicker", "flicker"),
)


def _e(text: object) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _url(relative: str) -> str:
    return "/".join(quote(part) for part in relative.split("/"))


def plan_warnings(run_dir: Path, row: ManifestRow) -> list[str]:
    """The director's warnings on the row's plan (e.g. ``static_video``: accepted, but it broke a soft rule)."""
    path = Path(run_dir) / row.plan_path if row.plan_path else None
    if path is None or not path.is_file():
        return []
    try:
        warnings = json.loads(path.read_text(encoding="utf-8")).get("warnings") or []
    except (OSError, ValueError, AttributeError):
        return []  # an unreadable plan is the plan stage's to report, not the gallery's
    return [str(warning) for warning in warnings]


def storyline_checks(row: ManifestRow, run_dir: Path, frames: np.ndarray | None = None) -> dict[str, dict[str, bool]] | None:
    """For a rendered row whose prompt is a known shape-world storyline (``stories.known_story``):
    the storyline checks of its plan (the frame prompts) and of its video (``frames``, decoded from
    its MP4 unless given, read with the world's detectors), ``{"plan": {check: passed}, "video":
    {...}}``; None for any other row."""
    story = known_story(row.prompt or "")
    if story is None or row.status != "ok" or not row.frame_prompts or not row.video_path:
        return None
    checks = {"plan": storylines.check_plan(story, row.frame_prompts)}
    try:
        if frames is None:
            frames = read_video(Path(run_dir) / row.video_path)
        checks["video"] = storylines.check_video(story, frames)
    except (OSError, EncodeError) as error:
        log.error("no storyline checks for %s: %s", row.prompt_id, error)
        return None
    return checks


def _storyline(checks: dict[str, dict[str, bool]] | None) -> str:
    if checks is None:
        return ""
    parts = []
    for level, results in checks.items():
        told = "tells its story" if storylines.tells_story(results) else "does not tell its story"
        marks = " ".join(f"{name} {'&#10003;' if passed else '&#10007;'}" for name, passed in results.items())
        parts.append(f"{level}: {told} ({marks})")
    return f'<div class="story">storyline &mdash; {"; ".join(parts)}</div>'


def _entry(row: ManifestRow, run_dir: Path, story_checks: dict | None) -> str:
    parts = [f'<section class="entry" data-status="{_e(row.status)}" id="video-{_e(row.prompt_id)}">']
    parts.append(f'<h2>{_e(row.prompt_id)} <span class="status status-{_e(row.status)}">{_e(row.status)}</span></h2>')
    parts.append(f'<div class="prompt">{_e(row.prompt)}</div>')
    warnings = plan_warnings(run_dir, row)
    if warnings:
        parts.append(f'<div class="reason warnings">director: {_e("; ".join(warnings))}</div>')
    if row.qc_reason:
        parts.append(f'<div class="reason">QC: {_e(row.qc_reason)}</div>')
    if row.error:
        parts.append(f'<div class="error">{_e(row.failed_stage)}: {_e(row.error)}</div>')
    parts.append(_storyline(story_checks))
    media = []
    if row.video_path and (run_dir / row.video_path).is_file():
        media.append(
            f'<video controls loop muted playsinline preload="metadata" src="{_e(_url(row.video_path))}"></video>'
        )
    sheet = f"{REVIEW_DIR}/{row.prompt_id}.png"
    if (run_dir / sheet).is_file():
        media.append(f'<a href="{_e(_url(sheet))}"><img class="sheet" loading="lazy" src="{_e(_url(sheet))}" '
                     f'alt="contact sheet of {_e(row.prompt_id)}"></a>')
    if media:
        parts.append('<div class="media">' + "".join(media) + "</div>")
    if row.frame_prompts:
        scores = row.clip_frame_scores or []
        items = []
        for index, prompt in enumerate(row.frame_prompts):
            score = f' <span class="muted">({scores[index]:.3f})</span>' if index < len(scores) else ""
            items.append(f"<li>{_e(prompt)}{score}</li>")
        parts.append("<ol>" + "".join(items) + "</ol>")
    values = [(label, getattr(row, key)) for key, label in _METRICS if getattr(row, key) is not None]
    facts = [("frames", row.frame_count), ("fps", row.fps), ("seed", row.seed), ("renderer", row.render_model),
             ("director", row.director_model), ("CLIP", row.eval_model)]
    cells = [f"<tr><td>{_e(label)}</td><td>{value:.4f}</td></tr>" for label, value in values]
    cells += [f"<tr><td>{_e(label)}</td><td>{_e(value)}</td></tr>" for label, value in facts if value not in (None, "")]
    parts.append("<table>" + "".join(cells) + "</table>")
    parts.append("</section>")
    return "\n".join(parts)


def _summary_table(evaluation: dict) -> str:
    frame_rows = evaluation.get("table_frame_prompt") or []
    if not frame_rows:
        return ""
    user = {item["row"]: item["value"] for item in evaluation.get("table_user_prompt") or []}
    lines = ["<table><tr><th>Frame #</th><th>CLIP to frame prompt</th><th>CLIP to user prompt</th></tr>"]
    for item in frame_rows:
        other = user.get(item["row"])
        lines.append(f"<tr><td>{_e(item['row'])}</td><td>{item['value']:.4f}</td>"
                     f"<td>{'' if other is None else f'{other:.4f}'}</td></tr>")
    lines.append("</table>")
    return "<h2>CLIP similarity per frame (paper Table 1 layout)</h2>" + "".join(lines)


def _by_prompt(rows: Sequence[ManifestRow]) -> list[list[ManifestRow]]:
    """Rows in order, the samples of one prompt (``sample_of``) together, by sample number."""
    groups: dict[str, list[ManifestRow]] = {}
    for row in rows:
        groups.setdefault(row.sample_of, []).append(row)
    return [sorted(group, key=lambda row: row.sample) for group in groups.values()]


def _group(rows: list[ManifestRow], run_dir: Path, checks: dict) -> str:
    """One prompt's videos: its entry, or its samples side by side under the prompt's id."""
    entries = "".join(_entry(row, run_dir, checks.get(row.prompt_id)) for row in rows)
    if len(rows) == 1:
        return entries
    prompt_id = rows[0].sample_of
    return (f'<section class="samples" id="samples-{_e(prompt_id)}"><h2>{_e(prompt_id)}: {len(rows)} samples</h2>'
            f'<div class="sample-row">{entries}</div></section>')


def write_index(run_dir: Path, rows: Sequence[ManifestRow], story_checks: dict[str, dict | None] | None = None) -> Path:
    """``index.html`` listing every row; reads ``evaluation.json`` for the summary table if present.
    ``story_checks``: prompt id -> ``storyline_checks`` (worked out here when not given)."""
    run_dir = Path(run_dir)
    checks = story_checks if story_checks is not None else {row.prompt_id: storyline_checks(row, run_dir) for row in rows}
    evaluation_file = run_dir / EVALUATION_JSON
    evaluation = json.loads(evaluation_file.read_text(encoding="utf-8")) if evaluation_file.is_file() else {}
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    filters = "".join(
        f'<label><input type="checkbox" value="{_e(status)}" checked> {_e(status)} ({count})</label>'
        for status, count in sorted(counts.items())
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>DirecT2V run {_e(run_dir.name)}</title>
<style>{_CSS}</style></head>
<body><header><h1>DirecT2V run {_e(run_dir.name)}</h1>
<div>{len(rows)} prompts; {', '.join(f'{_e(s)}: {n}' for s, n in sorted(counts.items()))}</div></header>
<main><div class="filters">Show: {filters}</div>
{_summary_table(evaluation)}
{"".join(_group(group, run_dir, checks) for group in _by_prompt(rows))}
</main><script>{_SCRIPT}</script></body></html>
"""
    return write_atomically(run_dir / INDEX_HTML, page)


def write_review(run_dir: Path) -> Path:
    """Contact sheets for every rendered video, then ``index.html``; returns the page's path."""
    run_dir = Path(run_dir)
    rows = read_rows(run_dir)
    story_checks = {}
    for row in rows:
        if row.video_path and (run_dir / row.video_path).is_file():
            try:
                frames = read_video(run_dir / row.video_path)  # decoded once: the sheet and the story checks
                write_contact_sheet(row, run_dir, frames)
                story_checks[row.prompt_id] = storyline_checks(row, run_dir, frames)
            except (OSError, ValueError, EncodeError) as error:
                log.error("no contact sheet for %s: %s", row.prompt_id, error)
    return write_index(run_dir, rows, story_checks)
