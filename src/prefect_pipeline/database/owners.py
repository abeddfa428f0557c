"""Who holds a claim, and whether that process is still alive.

Every claim records its owner: the command's host name, the process namespace it runs in,
its process id, and the process's start time. A lease alone lets a dead command's inputs
wait for the lease to run out (minutes); an owner lets a command on the same host see at
once that the holder is gone and take its inputs over.

A process id alone is not enough: ids are reused, so the start time must match too. A host
name alone is not enough either: containers may share a host name but not a process
namespace, and a process id means nothing outside its namespace, so the namespace (the
boot and the pid namespace) is part of the identity. An owner elsewhere (another host,
another namespace) is never judged: its claims wait for their lease.
"""

from __future__ import annotations

import functools
import os
import socket
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Owner:
    """A process that claims inputs."""

    host: str
    #: The boot and pid namespace the process id belongs to ("" where unknown).
    namespace: str
    pid: int
    #: The process's start time (epoch seconds, as the operating system reports it).
    started_at: float

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"

    def same_namespace(self, other: Owner) -> bool:
        """Whether ``other``'s process id can be looked up from this process."""
        return bool(self.namespace) and (self.host, self.namespace) == (
            other.host,
            other.namespace,
        )


def _namespace() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()
        pid_namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""  # no /proc: owners are never judged dead here, leases decide
    return f"{boot}:{pid_namespace}"


@functools.cache
def this_process() -> Owner:
    """This process as an owner (computed once: a claim stamps it on every row)."""
    process = psutil.Process()
    return Owner(socket.gethostname(), _namespace(), process.pid, process.create_time())


def is_gone(owner: Owner) -> bool:
    """Whether ``owner`` (a process of this host and namespace) no longer runs: no process
    has its id, or the one that has it started at another time (the id was reused)."""
    try:
        process = psutil.Process(owner.pid)
        started = process.create_time()
        if process.status() == psutil.STATUS_ZOMBIE:  # dead, not yet reaped by its parent
            return True
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # e.g. access denied: it exists, and we cannot tell more
        return False
    # create_time() is read from /proc with a clock-tick resolution: equal within it.
    return abs(started - owner.started_at) > 0.05
