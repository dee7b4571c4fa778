"""``python -m direct2v ARGS`` for the suite, from a warm process: each command is a fork of one
process that has already imported what every job command imports (torch, diffusers,
transformers, Prefect, the flow), so a test pays ~5 s of imports once instead of per command.

The child is the command as a user runs it from there on: it takes the test's environment and
working directory, its own stdout and stderr, and runs ``direct2v.cli.main`` to a normal exit
(atexit handlers included). What a fork cannot give is what the libraries read at import time:
Prefect's settings (the ``PREFECT_*`` variables) and the OpenMP thread count. A command whose
``PREFECT_*`` variables differ from the warm process's runs as a plain subprocess instead; the
thread count is set from the test's ``OMP_NUM_THREADS`` in the child. The warm process refuses to
fork if anything it imported started a Python thread (a fork would copy a lock held by it).

Protocol on the warm process's stdin/stdout, one JSON line each: request ``{"args", "env",
"cwd", "stdout", "stderr"}`` -> ``{"pid"}`` at once, then ``{"returncode"}`` when the child ends.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

PRELOAD = ("torch", "diffusers", "transformers", "direct2v.cli", "direct2v.render.renderer", "flows.generate")


def serve() -> None:  # the warm process
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    import threading

    replies = os.fdopen(os.dup(1), "w", buffering=1)
    # No Python thread may run at a fork (it could hold a lock the child needs, logging's say). The
    # native pools these imports start are idle and handle a fork themselves (OpenBLAS's and
    # jemalloc's pthread_atfork handlers); the child starts its own as it needs them.
    threads = threading.active_count()
    replies.write(json.dumps({"ready": threads == 1, "threads": threads}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            replies.close()
            _child(request)  # never returns
        replies.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")


def _child(request: dict) -> None:
    import random

    os.setsid()  # its own process group: a timeout kills what it started too
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    random.seed()  # (the warm process's state is every child's: reseed as a new process would)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    sys.argv = ["direct2v", *request["args"]]
    from direct2v.cli import main

    main()  # exits through SystemExit: the interpreter's normal exit


class WarmCli:
    """``run(args, env=None, cwd=None, timeout=900)`` -> ``subprocess.CompletedProcess``."""

    def __init__(self, base_env: dict[str, str]):
        self.base_env = base_env
        self.process: subprocess.Popen | None = None
        self.usable = os.environ.get("DIRECT2V_TESTS_WARM_CLI", "1") != "0"  # 0: every command a plain subprocess
        self.scratch = Path(tempfile.mkdtemp(prefix="warm-cli-"))

    def _start(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", "import warm_cli; warm_cli.serve()"],
                                        env={**self.base_env, "PYTHONPATH": os.pathsep.join(
                                            [str(Path(__file__).parent), self.base_env.get("PYTHONPATH", "")])},
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.buffer = b""
        hello = self._reply(timeout=300)
        self.usable = bool(hello and hello.get("ready"))

    def _reply(self, timeout: float) -> dict | None:
        """The next JSON line of the warm process, or None after ``timeout`` seconds."""
        fd = self.process.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self.buffer:
                if not selector.select(timeout):
                    return None
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise RuntimeError("the warm direct2v process ended")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def _forkable(self, env: dict[str, str]) -> bool:
        prefect = {key: value for key, value in env.items() if key.startswith("PREFECT_")}
        return prefect == {key: value for key, value in self.base_env.items() if key.startswith("PREFECT_")}

    def run(self, args, env=None, cwd=None, timeout=900) -> subprocess.CompletedProcess:
        args = [str(arg) for arg in args]
        env = {**self.base_env, **(env or {})}
        cwd = str(cwd or os.getcwd())
        if self.usable and self.process is None:
            self._start()
        if not (self.usable and self._forkable(env)):
            return subprocess.run([sys.executable, "-m", "direct2v", *args], env=env, cwd=cwd, capture_output=True,
                                  text=True, timeout=timeout)
        out, err = self.scratch / "stdout", self.scratch / "stderr"
        request = {"args": args, "env": env, "cwd": cwd, "stdout": str(out), "stderr": str(err)}
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()
        pid = self._reply(timeout=60)["pid"]
        done = self._reply(timeout)
        if done is None:
            os.killpg(pid, signal.SIGKILL)
            self._reply(timeout=60)
            raise subprocess.TimeoutExpired(["direct2v", *args], timeout)
        return subprocess.CompletedProcess(["direct2v", *args], done["returncode"], out.read_text(errors="replace"),
                                           err.read_text(errors="replace"))

    def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait(timeout=30)
        shutil.rmtree(self.scratch, ignore_errors=True)
