"""The run gallery (index.html) opened in real headless Chromium over the DevTools protocol.

Needs the Debian package ``chromium`` (``apt-get install -y chromium``); skipped, saying so, only
when no Chromium binary is installed. The page must load with no console errors, no uncaught
exceptions and no failed resource loads; it must show one entry per manifest row with every
contact sheet decoded and every video's metadata readable (H.264 playable); a screenshot is taken.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0", "--window-size=1200,900", "--hide-scrollbars",
]

# Waits (inside the page) until every <video> has its metadata or an error and every <img> is done.
MEDIA_STATE = """
new Promise(resolve => {
  const deadline = Date.now() + 15000;
  (function poll() {
    const videos = [...document.querySelectorAll('video')];
    const images = [...document.querySelectorAll('img')];
    const ready = videos.every(v => v.readyState >= 1 || v.error) && images.every(i => i.complete);
    if (ready || Date.now() > deadline) {
      resolve(JSON.stringify({
        entries: document.querySelectorAll('section.entry').length,
        entryIds: [...document.querySelectorAll('section.entry')].map(e => e.id),
        videos: videos.map(v => ({src: v.getAttribute('src'), ready: v.readyState, error: v.error && v.error.code,
                                  duration: v.duration, width: v.videoWidth})),
        images: images.map(i => ({src: i.getAttribute('src'), width: i.naturalWidth})),
        scripts: document.querySelectorAll('script').length,
        title: document.title,
      }));
    } else { setTimeout(poll, 100); }
  })();
})
"""


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class DevTools:
    """A minimal synchronous Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, url: str):
        from websockets.sync.client import connect

        self.socket = connect(url, max_size=64 * 2**20, open_timeout=20)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 30) -> dict:
        for message in self.events:
            if message.get("method") == event:
                return message
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic())))
            self.events.append(message)
            if message.get("method") == event:
                return message
        raise TimeoutError(event)

    def close(self) -> None:
        self.socket.close()


def open_page(chromium: str, page: Path, profile: Path):
    """Start Chromium, return (process, DevTools client attached to its page)."""
    process = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    port = None
    while time.monotonic() < deadline and port is None:
        line = process.stderr.readline()
        if not line and process.poll() is not None:
            break
        match = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
        if match:
            port = int(match.group(1))
    if port is None:
        process.kill()
        raise RuntimeError(f"chromium did not start its DevTools endpoint: {process.stderr.read()[-2000:]}")
    # Drain stderr in the background so Chromium never blocks on a full pipe.
    import threading

    threading.Thread(target=lambda: process.stderr.read(), daemon=True).start()
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    targets = json.loads(no_proxy.open(f"http://127.0.0.1:{port}/json/list", timeout=20).read())
    page_target = next(t for t in targets if t.get("type") == "page")
    return process, DevTools(page_target["webSocketDebuggerUrl"])


def console_problems(events: list[dict]) -> list[str]:
    problems = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            problems.append("console." + params["type"] + ": " + " ".join(
                str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            problems.append("uncaught: " + str(details.get("exception", {}).get("description", details.get("text"))))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            problems.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
    return problems


@pytest.fixture(scope="session")  # session: checked before the session-wide model fixtures are built
def chromium() -> str:
    binary = chromium_binary()
    if binary is None:
        message = "chromium is not installed (Debian: apt-get install -y chromium): gallery browser test skipped"
        print(message, file=sys.stderr)
        pytest.skip(message)
    return binary


@pytest.fixture(scope="module")
def gallery(chromium, tmp_path_factory, rendered_run, tiny_clip_dir):
    """An evaluated copy of the tiny run, with a hostile prompt and a failed row, and its index.html."""
    from direct2v.core.config import EvalSettings
    from direct2v.evaluation.evaluate import evaluate_run
    from direct2v.job.manifest import ManifestRow, append_rows, compact
    from direct2v.publish.gallery import write_review

    run_dir = tmp_path_factory.mktemp("gallery") / "run with space"
    shutil.copytree(rendered_run, run_dir)
    append_rows(run_dir, [ManifestRow(run_id=run_dir.name, prompt_id="broken", prompt="</section><b>x</b>",
                                      status="failed", failed_stage="render", error="boom <script>alert(1)</script>")])
    compact(run_dir)
    evaluate_run(run_dir, EvalSettings(clip_model_dir=tiny_clip_dir, max_flicker=0.0))  # everything rejected
    return write_review(run_dir)


def test_gallery_in_headless_chromium(chromium, gallery, tmp_path):
    from direct2v.job.manifest import read_rows as run_rows

    rows = run_rows(gallery.parent)
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path))
    process, devtools = open_page(chromium, gallery, profile)
    try:
        devtools.send("Runtime.enable")
        devtools.send("Log.enable")
        devtools.send("Page.enable")
        devtools.send("Emulation.setDeviceMetricsOverride", width=1200, height=900, deviceScaleFactor=1, mobile=False)
        devtools.send("Page.navigate", url=gallery.as_uri())
        devtools.wait_for("Page.loadEventFired")
        state = json.loads(devtools.send("Runtime.evaluate", expression=MEDIA_STATE, awaitPromise=True,
                                         returnByValue=True)["result"]["value"])
        shot = devtools.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        time.sleep(0.2)
        devtools.send("Runtime.evaluate", expression="1")  # collect events that arrived meanwhile
    finally:
        devtools.close()
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
    screenshot = Path(os.environ.get("DIRECT2V_SCREENSHOT", tmp_path / "gallery.png"))
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    print(f"screenshot: {screenshot}")

    assert console_problems(devtools.events) == []
    assert state["title"].startswith("DirecT2V run")
    assert state["entries"] == len(rows) == 3  # two videos and the failed row
    assert state["entryIds"] == [f"video-{row.prompt_id}" for row in rows]
    assert state["scripts"] == 1  # the page's own filter: the hostile texts were escaped, not run
    rendered = [row for row in rows if row.video_path]
    assert len(state["videos"]) == len(state["images"]) == len(rendered) == 2
    for video, row in zip(state["videos"], rendered):
        assert video["error"] is None and video["ready"] >= 1, video  # H.264 decodes in the browser
        assert video["width"] == 64 and video["duration"] > 0
    assert all(image["width"] > 0 for image in state["images"]), state["images"]
    assert screenshot.stat().st_size > 10_000
    from PIL import Image

    with Image.open(screenshot) as image:
        assert image.size == (1200, 900)
        colours = image.convert("RGB").resize((60, 45)).getcolors(maxcolors=60 * 45)
        assert colours is not None and len(colours) > 50  # not a blank page
