"""The main job air-gapped (issue #6): ``direct2v run`` with the models already in place succeeds
inside a network namespace that has no interface but loopback, and tries no DNS lookup and no
connection to any address outside the machine.

The main job itself runs once, in ``test_flow.py`` (``main_job``: the flow's checks and these read
the same run); this module holds the isolation, the two recorders, and their negative controls.

How it is proven:

* **Isolation** -- the job runs under ``unshare -n`` (``unshare -rn`` when not root): a fresh
  network namespace. Its only interface, ``lo``, is brought up (Prefect's temporary API server
  listens on 127.0.0.1 and the CLI talks to it over loopback; with ``lo`` down the run cannot
  start). The namespace's interface list is recorded from inside and must be exactly ``["lo"]``:
  no route leads out, so a run that needed the network would fail.
* **No attempt** -- two independent recorders run for every process of the job (the CLI, Prefect's
  server, the director subprocess and vLLM's engine process, ffmpeg):
  ``strace -f`` logs every ``connect``/``sendto``/``sendmsg``/``bind`` system call with its address,
  whatever library makes it (C code included), and a ``sitecustomize`` audit hook logs Python's
  ``socket.connect``/``socket.getaddrinfo``/``gethostbyname``/... events with host names. Every
  address must be loopback (127.0.0.0/8, ::1), a Unix socket or netlink; no host name but a
  loopback literal or ``localhost`` may be resolved, and nothing may go to port 53 (DNS).
  Without strace installed, the audit hook alone is checked (the reason is printed).
"""

import ast
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.airgap

# Runs inside the new namespace (argv, not a shell string): record the interfaces, bring lo up with
# the SIOCSIFFLAGS ioctl (no dependency on iproute2), then exec the rest of argv.
LO_UP_AND_EXEC = textwrap.dedent("""
    import fcntl, json, os, socket, struct, sys
    with open(sys.argv[1], "w") as out:
        json.dump([name for _, name in socket.if_nameindex()], out)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    request = struct.pack("16sH", b"lo", 0)
    flags = struct.unpack("16sH", fcntl.ioctl(probe, 0x8913, request)[:18])[1]  # SIOCGIFFLAGS
    fcntl.ioctl(probe, 0x8914, struct.pack("16sH", b"lo", flags | 0x1))  # SIOCSIFFLAGS |= IFF_UP
    probe.close()
    os.execvp(sys.argv[2], sys.argv[2:])
""")

# Loaded by every Python process of the job through PYTHONPATH: logs network-related audit events.
AUDIT_SITECUSTOMIZE = textwrap.dedent("""
    import os, sys
    _log = os.environ.get("DIRECT2V_NET_AUDIT_LOG")
    _EVENTS = {"socket.connect", "socket.sendto", "socket.bind", "socket.getaddrinfo",
               "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr", "socket.getnameinfo"}
    if _log:
        def _audit(event, args, _log=_log, _getpid=os.getpid):
            if event in _EVENTS:
                detail = args[1:] if event in ("socket.connect", "socket.sendto", "socket.bind") else args
                try:
                    with open(_log, "a", encoding="utf-8") as out:
                        out.write(f"{_getpid()}\\t{event}\\t{detail!r}\\n")
                except Exception:
                    pass
        sys.addaudithook(_audit)
""")

LOOPBACK_NAMES = {None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0", "::"}


def unshare_command() -> list[str]:
    return ["unshare", "-n", "--"] if os.geteuid() == 0 else ["unshare", "-r", "-n", "--"]


def namespace_unavailable() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run([*unshare_command(), sys.executable, "-c", "pass"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"this kernel/container forbids network namespaces: {probe.stderr.strip()}"
    return None


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified  # bind to 0.0.0.0/:: inside the namespace is still local


def air_gapped(command: list[str], env: dict[str, str], workdir: Path) -> tuple[list[str], dict[str, str]]:
    """``command`` wrapped to run in a fresh network namespace with ``lo`` up, under ``strace``
    where installed, and ``env`` with the audit hook on ``PYTHONPATH``. The records land in
    ``workdir``: ``interfaces.json``, ``audit.tsv``, ``strace.txt``."""
    site = workdir / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(AUDIT_SITECUSTOMIZE)
    strace = shutil.which("strace")
    tracer = [strace, "-f", "-qq", "-e", "trace=connect,sendto,sendmsg,sendmmsg,bind", "-e", "signal=none",
              "-o", str(workdir / "strace.txt")] if strace else []
    if strace and subprocess.run([strace, "--seccomp-bpf", "-e", "trace=connect", "true"],
                                 capture_output=True).returncode == 0:
        tracer.insert(1, "--seccomp-bpf")  # only the traced calls stop the process: vLLM keeps its speed
    env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")])),
           "DIRECT2V_NET_AUDIT_LOG": str(workdir / "audit.tsv")}
    wrapped = [*unshare_command(), sys.executable, "-c", LO_UP_AND_EXEC, str(workdir / "interfaces.json"),
               *tracer, *command]
    return wrapped, env


def check_air_gapped(workdir: Path) -> str:
    """Assert what ``air_gapped``'s records show: only ``lo`` in the namespace, and no process of the
    command reached (or looked up) anything outside the machine. Returns a one-line account."""
    # 1. it ran in a namespace with nothing but loopback
    assert json.loads((workdir / "interfaces.json").read_text()) == ["lo"]
    # 2. no process tried to reach anything outside the machine
    bad, events = audit_violations((workdir / "audit.tsv").read_text(encoding="utf-8").splitlines())
    assert events > 0, "the audit hook recorded nothing: it did not run"
    assert not bad, "\n".join(bad[:20])
    if not shutil.which("strace"):
        return f"{events} Python socket events, none outside (strace is not installed: apt-get install strace)"
    bad, loopback_connects = strace_violations((workdir / "strace.txt").read_text(errors="replace").splitlines())
    assert loopback_connects > 0, "strace saw no connect at all: it did not trace the job"
    assert not bad, "\n".join(bad[:20])
    return f"{loopback_connects} loopback connects traced, {events} Python socket events, none outside"


def strace_violations(lines: list[str]) -> tuple[list[str], int]:
    """(lines that reach outside the machine, number of loopback connects seen)."""
    bad, loopback_connects = [], 0
    for line in lines:
        families = re.findall(r"sa_family=(AF_\w+)", line)
        for family in families:
            if family not in {"AF_UNIX", "AF_NETLINK", "AF_INET", "AF_INET6", "AF_UNSPEC"}:
                bad.append(line)
        addresses = re.findall(r'inet_addr\("([^"]+)"\)', line) + re.findall(r'inet_pton\(AF_INET6, "([^"]+)"', line)
        if any(not is_loopback(a) for a in addresses) or "htons(53)" in line:
            bad.append(line)
        elif addresses and "connect(" in line:
            loopback_connects += 1
    return bad, loopback_connects


def audit_violations(lines: list[str]) -> tuple[list[str], int]:
    """(events that name a non-loopback host or address, number of events)."""
    bad = []
    for line in lines:
        _, event, detail = line.split("\t", 2)
        try:
            args = ast.literal_eval(detail)  # reprs of tuples of str/int/bytes/None
        except (ValueError, SyntaxError):
            bad.append(line)
            continue
        target = args[0] if args else None
        if isinstance(target, tuple):  # (host, port[, flow, scope]) of connect/sendto/bind
            if not is_loopback(str(target[0])) and target[0] not in LOOPBACK_NAMES:
                bad.append(line)
            elif len(target) > 1 and target[1] == 53:
                bad.append(line)
        elif isinstance(target, (str, bytes)) and event == "socket.connect":
            continue  # a Unix socket path
        elif event != "socket.connect":
            host = target.decode() if isinstance(target, bytes) else target
            if host not in LOOPBACK_NAMES and not is_loopback(str(host)):
                bad.append(line)
    return bad, len(lines)


@pytest.mark.parametrize("attempt", ["udp-connect", "dns-lookup"])
def test_the_recorders_catch_an_outside_attempt(tmp_path, attempt):
    """Negative control: a process that does try the network (inside an empty namespace, so nothing
    leaves the machine) is flagged by both recorders."""
    reason = namespace_unavailable()
    if reason:
        print(f"SKIPPED air-gap control: {reason}")
        pytest.skip(reason)
    code = {
        "udp-connect": "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).connect(('8.8.8.8', 80))",
        "dns-lookup": "import socket; socket.getaddrinfo('example.com', 443)",
    }[attempt]
    command, env = air_gapped([sys.executable, "-c", code], {**os.environ, "PYTHONPATH": ""}, tmp_path)
    subprocess.run(command, env=env, capture_output=True, timeout=60)
    assert json.loads((tmp_path / "interfaces.json").read_text()) == ["lo"]
    bad, _ = audit_violations((tmp_path / "audit.tsv").read_text().splitlines())
    assert bad, "the audit hook missed the attempt"
    if shutil.which("strace"):
        bad, _ = strace_violations((tmp_path / "strace.txt").read_text().splitlines())
        assert bad, "strace missed the attempt"
        assert ("8.8.8.8" if attempt == "udp-connect" else "htons(53)") in bad[0]
    with pytest.raises(AssertionError):
        check_air_gapped(tmp_path)  # the main job's check fails such a run
