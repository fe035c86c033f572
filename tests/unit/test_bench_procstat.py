"""How bench.e2e reads the CPU time of processes from /proc."""

from __future__ import annotations

import os
import socket

import pytest

from bench import procstat

pytestmark = pytest.mark.unit

TICK = 1 / procstat.CLOCK_TICKS


def test_a_stat_line_is_read_past_a_name_with_spaces_and_parentheses() -> None:
    # Fields: pid (name) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
    # stime cutime cstime ...
    line = "4242 (py (x) y) S 17 4242 4242 0 -1 4194560 100 0 0 0 30 12 500 200 20 0 1 0 5 0 0"
    stat = procstat.parse_stat(4242, line)
    assert (stat.pid, stat.ppid, stat.name) == (4242, 17, "py (x) y")
    assert stat.own == pytest.approx(42 * TICK)
    assert stat.children == pytest.approx(700 * TICK)


def stat(pid: int, ppid: int, own: float, children: float = 0.0) -> procstat.Stat:
    return procstat.Stat(pid, ppid, "postgres", own, children)


def test_a_server_is_counted_with_its_live_children_and_those_it_reaped() -> None:
    table = (stat(10, 1, 1.0, 5.0), stat(11, 10, 2.0), stat(12, 11, 0.5), stat(20, 1, 9.0))
    stats = {s.pid: s for s in table}
    assert sorted(procstat.descendants(10, stats)) == [11, 12]
    assert procstat.tree_seconds(10, stats) == pytest.approx(8.5)
    assert procstat.tree_seconds(99, stats) == 0.0
    assert procstat.own_seconds([11, 20, 99], stats) == pytest.approx(11.0)


def test_the_machines_busy_time_leaves_idle_and_io_wait_out() -> None:
    text = "cpu  100 5 50 9000 300 7 8 2 0 0\ncpu0 50 2 25 4500 150 3 4 1 0 0\n"
    assert procstat.machine_busy_seconds(text) == pytest.approx(172 * TICK)


def test_only_listening_sockets_on_the_port_are_taken() -> None:
    tcp = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   106        0 111 1\n"
        "   1: 0100007F:1538 0100007F:D2B4 01 00000000:00000000 00:00000000 00000000   106        0 222 1\n"
        "   2: 0100007F:1628 00000000:0000 0A 00000000:00000000 00:00000000 00000000   107        0 333 1\n"
    )
    tcp6 = (
        "  sl  local_address                         remote_address                        st ...\n"
        "   0: 00000000000000000000000001000000:1538 00000000000000000000000000000000:0000 0A"
        " 00000000:00000000 00:00000000 00000000   106        0 444 1\n"
    )
    assert procstat.listening_inodes(5432, [tcp, tcp6]) == {"111", "444"}
    assert procstat.listening_inodes(5672, [tcp]) == {"333"}


def test_the_process_listening_on_a_port_and_its_cpu_are_found() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert procstat.listener_pid(server.getsockname()[1]) == os.getpid()
    me = procstat.stat(os.getpid())
    assert me is not None and me.own > 0 and me.ppid == os.getppid()
    assert os.getpid() in procstat.all_stats()


def test_a_connection_to_a_local_server_is_traced_to_the_process_holding_it() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                client_port = client.getsockname()[1]
                assert procstat.client_owners(port, [os.getpid()]) == {client_port: os.getpid()}
                assert procstat.client_owners(port, [os.getppid()]) == {}
