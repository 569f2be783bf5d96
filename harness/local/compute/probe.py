"""What a running instance holds: its processes, their memory, their listening sockets.

For benchmarks (memory per idle instance) and tests (no TCP listener), and later for
the doctor. Read from /proc, so Linux only; elsewhere the answers are empty.

Memory is split the way it is shared: an instance's main shared memory segment (shared
buffers, locks, the process array) and its dynamic segments are its own, counted once;
the binaries and libraries are shared with every other PostgreSQL of the same
installation, so each process is charged its proportional share (PSS); what a process
alone holds (USS) is what one more instance costs at least.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
# how the kernel names PostgreSQL's shared memory: the main segment (an anonymous shared
# mapping, or System V), and the dynamic segments of dynamic_shared_memory_type=posix
_SHARED_SEGMENT_MARKS = ("/dev/zero", "SYSV", "/dev/shm/PostgreSQL.")
_TCP_LISTEN = "0A"


@dataclass(frozen=True)
class Memory:
    processes: int
    rss: int  # bytes, summed over processes (libraries counted in each)
    pss: int  # bytes, each shared page charged in proportion to its users
    uss: int  # bytes no other process shares
    shared_segment_pss: int  # of `pss`: the part in PostgreSQL's shared memory segments

    @property
    def beyond_shared_memory(self) -> int:
        """PSS outside the shared memory segments: the processes' own memory and their
        share of the binaries."""
        return self.pss - self.shared_segment_pss


def family(pid: int) -> list[int]:
    """`pid` and its children (a postmaster's backends and auxiliary processes)."""
    found = [pid]
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _smaps(pid: int) -> tuple[int, int, int, int]:
    rss = pss = uss = segment = 0
    in_segment = False
    try:
        lines = (_PROC / str(pid) / "smaps").read_text().splitlines()
    except OSError:
        return 0, 0, 0, 0
    for line in lines:
        head, _, rest = line.partition(":")
        if not rest or " " in head:  # a mapping's header line: "addr perms offset dev inode path"
            in_segment = any(mark in line for mark in _SHARED_SEGMENT_MARKS)
            continue
        if not rest.strip().endswith("kB"):
            continue
        kib = int(rest.split()[0]) * 1024
        if head == "Rss":
            rss += kib
        elif head == "Pss":
            pss += kib
            segment += kib if in_segment else 0
        elif head in ("Private_Clean", "Private_Dirty"):
            uss += kib
    return rss, pss, uss, segment


def memory(postmaster_pid: int) -> Memory:
    pids = family(postmaster_pid)
    totals = [_smaps(pid) for pid in pids]
    return Memory(len(pids), *(sum(column) for column in zip(*totals, strict=True)))


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    fd_dir = _PROC / str(pid) / "fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def tcp_listeners(postmaster_pid: int) -> list[str]:
    """The TCP sockets (v4 and v6) the instance's processes listen on, as `addr:port` in
    the kernel's hex: empty for an instance that listens only on its unix socket."""
    inodes: set[str] = set()
    for pid in family(postmaster_pid):
        inodes |= _socket_inodes(pid)
    found = []
    for table in ("tcp", "tcp6"):
        try:
            rows = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == _TCP_LISTEN and fields[9] in inodes:
                found.append(fields[1])
    return found
