"""CPU time of processes from /proc (Linux): what `bench.e2e` charges to each part of the system.

A process's `utime` + `stime` (fields 14 and 15 of /proc/<pid>/stat) is the CPU it used so far; its
`cutime` + `cstime` (16, 17) is that of its children that ended and were waited for. A server that forks
a process per connection (PostgreSQL) is therefore measured whole as its postmaster's four fields plus
its live children's two: a backend that ends between two readings moves from the second sum to the
first, and nothing is lost.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# /proc/net/tcp: the state of a listening socket.
LISTEN = "0A"


@dataclass(frozen=True)
class Stat:
    pid: int
    ppid: int
    name: str
    # seconds
    own: float
    children: float


def parse_stat(pid: int, text: str) -> Stat:
    """One /proc/<pid>/stat line. The name (field 2) is in parentheses and may itself hold spaces and
    parentheses, so the fields are counted from its last closing one."""
    head, _, rest = text.rpartition(")")
    name = head.partition("(")[2]
    fields = rest.split()
    # fields[0] is field 3 (state): field n is fields[n - 3].
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return Stat(pid, ppid, name, (utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS)


def stat(pid: int) -> Stat | None:
    """None when the process is gone."""
    try:
        return parse_stat(pid, (PROC / str(pid) / "stat").read_text())
    except (FileNotFoundError, ProcessLookupError):
        return None


def all_stats() -> dict[int, Stat]:
    stats: dict[int, Stat] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (s := stat(int(entry.name))) is not None:
            stats[s.pid] = s
    return stats


def descendants(root: int, stats: dict[int, Stat]) -> list[int]:
    """Every process below `root` (children, their children, ...), from one reading of the table."""
    children: dict[int, list[int]] = {}
    for s in stats.values():
        children.setdefault(s.ppid, []).append(s.pid)
    found, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, ())
    return found


def tree_seconds(root: int, stats: dict[int, Stat]) -> float:
    """CPU of `root` and every process below it, including the children that ended and were reaped."""
    top = stats.get(root)
    if top is None:
        return 0.0
    return top.own + top.children + sum(stats[p].own for p in descendants(root, stats))


def own_seconds(pids: Iterable[int], stats: dict[int, Stat]) -> float:
    return sum(stats[p].own for p in pids if p in stats)


def environ(pid: int) -> dict[str, str]:
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _port(address: str) -> int:
    """The port of a /proc/net/tcp address (`0100007F:1538`)."""
    return int(address.rsplit(":", 1)[1], 16)


def listening_inodes(port: int, tables: Iterable[str]) -> set[str]:
    """The socket inodes listening on `port`, from the text of /proc/net/tcp and /proc/net/tcp6."""
    inodes = set()
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[3] == LISTEN and _port(fields[1]) == port:
                inodes.add(fields[9])
    return inodes


def _tables() -> list[str]:
    return [(PROC / "net" / name).read_text() for name in ("tcp", "tcp6") if (PROC / "net" / name).exists()]


def connection_inodes(remote_port: int, tables: Iterable[str]) -> dict[int, str]:
    """Local port -> socket inode of every connection to `remote_port` (a client's side of it)."""
    inodes: dict[int, str] = {}
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[3] != LISTEN and _port(fields[2]) == remote_port:
                inodes[_port(fields[1])] = fields[9]
    return inodes


def socket_inodes(pid: int) -> set[str]:
    found = set()
    try:
        for fd in (PROC / str(pid) / "fd").iterdir():
            with contextlib.suppress(FileNotFoundError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    found.add(link[8:-1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return found


def client_owners(server_port: int, pids: Iterable[int]) -> dict[int, int]:
    """Client port -> which of `pids` holds that connection to the local `server_port` (which service a
    PostgreSQL backend works for: pg_stat_activity gives the backend's client port)."""
    by_inode = {inode: port for port, inode in connection_inodes(server_port, _tables()).items()}
    owners: dict[int, int] = {}
    for pid in pids:
        for inode in socket_inodes(pid) & by_inode.keys():
            owners[by_inode[inode]] = pid
    return owners


def listener_pid(port: int) -> int:
    """The process that listens on a local TCP port (the postmaster, RabbitMQ's beam.smp)."""
    targets = {f"socket:[{inode}]" for inode in listening_inodes(port, _tables())}
    if not targets:
        raise RuntimeError(f"nothing listens on port {port}")
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(entry.name)
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
            continue
    raise RuntimeError(f"no process found holding the socket that listens on port {port}")


def machine_busy_seconds(text: str | None = None) -> float:
    """CPU seconds the whole machine spent busy (every core, every process), from /proc/stat."""
    text = (PROC / "stat").read_text() if text is None else text
    fields = [int(v) for v in text.splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS
