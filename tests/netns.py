"""Network namespaces as stand-in machines for tests.

``NetworkNamespace`` makes a namespace joined to this host by a veth pair on a private /30
subnet: the host side gets ``.1`` (``server_address``), the namespace side, named ``eth0``
in there, gets ``.2`` (``client_address``). A process started with ``command(argv)``
(``ip netns exec NAME argv``) has only that interface and its own loopback, so it reaches
a server on the host through ``server_address`` over a real network interface, as a
drainer on another machine would, and cannot use the host's 127.0.0.1. The namespace has
no default route: nothing in it can reach anything but the host side of its own veth.

Making namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) and a kernel and sandbox
that allow them. ``netns_support()`` tries once and says why not; ``remote_host()`` yields a
namespace where it can and otherwise a ``LoopbackHost`` (same interface, 127.0.0.1, a
``reason``), so callers can fall back without branching.

No imports from the project or pytest: benchmarks can import it from ``tests/`` on
sys.path, like ``postgres_cluster``.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

#: Namespace names are ``pipeline-test-<pid>-<random>``: unique (even if this module is
#: imported twice, as ``tests.netns`` and ``netns``), and a namespace whose process is gone
#: is recognizably stale.
NAME_PREFIX = "pipeline-test-"
#: Host-side veth names are ``pt<pid in hex>n<random>`` (interface names have 15
#: characters at most).
VETH_PREFIX = "pt"

#: The /30 subnets are drawn at random from this block, skipping any that overlaps an
#: address or route the host already has (another test run's namespace, say).
SUBNET_POOL = ipaddress.IPv4Network("10.200.0.0/13")


class NetnsError(RuntimeError):
    """A command that makes or removes a namespace failed."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL
    )
    if check and completed.returncode != 0:
        detail = (completed.stderr or completed.stdout).strip()
        raise NetnsError(f"ip {' '.join(args)}: {detail} (exit {completed.returncode})")
    return completed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host has an address or a route in."""
    used = []
    for args in (("-4", "-o", "addr", "show"), ("-4", "route", "show", "table", "all")):
        text = _ip(*args, check=False).stdout
        for match in re.finditer(r"(\d+\.\d+\.\d+\.\d+(?:/\d+)?)", text):
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(match.group(1), strict=False))
    return used


def _pick_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    subnets = 2 ** (30 - SUBNET_POOL.prefixlen)
    for _ in range(100):
        index = random.randrange(subnets)
        candidate = ipaddress.IPv4Network((int(SUBNET_POOL.network_address) + 4 * index, 30))
        if not any(candidate.overlaps(network) for network in used):
            return candidate
    raise NetnsError(f"no free /30 subnet in {SUBNET_POOL}")


def sweep_stale() -> None:
    """Delete namespaces and host veths left by test processes that died (SIGKILL) before
    they could clean up. Those of live processes, ours or another run's, are left alone."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        match = re.match(rf"{re.escape(NAME_PREFIX)}(\d+)-[0-9a-f]+\b", line)
        if match and not _pid_alive(int(match.group(1))):
            _ip("netns", "delete", match.group(0), check=False)
    links = _ip("-o", "link", "show", "type", "veth", check=False).stdout
    for match in re.finditer(rf"^\d+: ({VETH_PREFIX}([0-9a-f]+)n[0-9a-f]+)@", links, re.M):
        if not _pid_alive(int(match.group(2), 16)):
            _ip("link", "delete", match.group(1), check=False)


class NetworkNamespace:
    """A namespace with a veth pair to this host; a context manager that removes both,
    and any process still running inside, even when the test failed."""

    isolated = True
    reason = ""

    def __init__(self) -> None:
        number = secrets.token_hex(3)
        self.name = f"{NAME_PREFIX}{os.getpid()}-{number}"
        self.host_interface = f"{VETH_PREFIX}{os.getpid():x}n{number}"
        if len(self.host_interface) > 15:
            raise NetnsError(f"interface name too long: {self.host_interface}")
        self.subnet: ipaddress.IPv4Network | None = None
        self.server_address = ""
        self.client_address = ""
        self._started: list[subprocess.Popen[Any]] = []

    def __enter__(self) -> Self:
        self.create()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def create(self) -> None:
        sweep_stale()
        self.subnet = _pick_subnet()
        host, client = (str(address) for address in self.subnet.hosts())
        try:
            _ip("netns", "add", self.name)
            # The peer is created inside the namespace, so it can be called eth0 there
            # whatever the host's own interfaces are called.
            _ip(
                "link", "add", self.host_interface, "type", "veth",
                "peer", "name", "eth0", "netns", self.name,
            )  # fmt: skip
            _ip("addr", "add", f"{host}/30", "dev", self.host_interface)
            _ip("link", "set", self.host_interface, "up")
            _ip("-n", self.name, "addr", "add", f"{client}/30", "dev", "eth0")
            _ip("-n", self.name, "link", "set", "eth0", "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        self.server_address, self.client_address = host, client

    def command(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        """``argv`` run inside the namespace (for ``subprocess``)."""
        return ["ip", "netns", "exec", self.name, *(os.fspath(arg) for arg in argv)]

    def run(
        self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(self.command(argv), **kwargs)

    def popen(self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.Popen[Any]:
        process = subprocess.Popen(self.command(argv), **kwargs)
        self._started.append(process)
        return process

    def pids(self) -> list[int]:
        """Processes running in the namespace."""
        completed = _ip("netns", "pids", self.name, check=False)
        return [int(pid) for pid in completed.stdout.split() if pid.isdigit()]

    def close(self) -> None:
        """Kill what still runs inside (a process keeps a namespace, and so its veth,
        alive after its name is deleted), then delete the namespace and the veth pair."""
        # Ours first: one started a moment ago may not have entered the namespace yet
        # (``ip netns exec`` still between its fork and its setns), where ``pids()`` cannot
        # see it, and would run on in a namespace without a name.
        for process in self._started:
            if process.poll() is None:
                process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
        deadline = time.monotonic() + 5
        while (pids := self.pids()) and time.monotonic() < deadline:
            # Asked again each time: a process may fork while we kill. A killed child of
            # ours that nobody has waited for yet no longer counts (it has left the
            # namespace); ``_pid_alive`` would still see it.
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
        # Deleting one end of a veth pair deletes both, at once; deleting the namespace
        # would too, but in the kernel's own time.
        _ip("link", "delete", self.host_interface, check=False)
        _ip("netns", "delete", self.name, check=False)


class LoopbackHost:
    """The fallback when namespaces cannot be made: this host, over 127.0.0.1."""

    isolated = False
    name = None
    server_address = "127.0.0.1"
    client_address = "127.0.0.1"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def command(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        return [os.fspath(arg) for arg in argv]

    def run(
        self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(self.command(argv), **kwargs)

    def popen(self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.command(argv), **kwargs)


@dataclass(frozen=True)
class NetnsSupport:
    available: bool
    reason: str  # why not, when not available


@functools.cache
def netns_support() -> NetnsSupport:
    """Whether this process can make namespaces, found by making one (once per process):
    the capabilities are not enough, as container runtimes and sandboxes may forbid the
    mounts that ``ip netns`` needs."""
    if os.geteuid() != 0:
        return NetnsSupport(False, "network namespaces need root (CAP_SYS_ADMIN, CAP_NET_ADMIN)")
    if shutil.which("ip") is None:
        return NetnsSupport(False, "the `ip` command is missing (Debian package iproute2)")
    try:
        with NetworkNamespace() as namespace:
            completed = namespace.run(["true"], capture_output=True, text=True, timeout=30)
            if completed.returncode != 0:
                detail = completed.stderr.strip()
                return NetnsSupport(False, f"`ip netns exec` fails here: {detail}")
    except (NetnsError, OSError, subprocess.SubprocessError) as error:
        return NetnsSupport(False, f"cannot make a network namespace here: {error}")
    return NetnsSupport(True, "")


@contextlib.contextmanager
def remote_host() -> Iterator[NetworkNamespace | LoopbackHost]:
    """A namespace where namespaces work, else this host over 127.0.0.1 (``.reason``)."""
    support = netns_support()
    if not support.available:
        yield LoopbackHost(support.reason)
        return
    with NetworkNamespace() as namespace:
        yield namespace
