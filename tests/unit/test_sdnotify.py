"""systemd's notify protocol: one datagram per message on $NOTIFY_SOCKET; a no-op without it."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from npcforge.worker.sdnotify import SystemdNotifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    try:
        yield str(path), sock
    finally:
        sock.close()


def test_without_notify_socket_every_call_is_a_silent_no_op():
    notifier = SystemdNotifier(None)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.ready("x") is False
    assert notifier.watchdog() is False
    assert notifier.status("x") is False
    assert notifier.stopping() is False


def test_messages_arrive_as_single_datagrams(receiver):
    path, sock = receiver
    notifier = SystemdNotifier(path)
    assert notifier.ready("in flight 0/16, done 0")
    assert sock.recv(4096) == b"READY=1\nSTATUS=in flight 0/16, done 0"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.status("in flight 3/16, done 7")
    assert sock.recv(4096) == b"STATUS=in flight 3/16, done 7"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"


def test_abstract_namespace_address():
    name = f"npcforge-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert SystemdNotifier("@" + name).watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_a_vanished_socket_is_not_an_error(tmp_path):
    notifier = SystemdNotifier(str(tmp_path / "gone"))
    assert notifier.enabled
    assert notifier.ready() is False


@pytest.mark.parametrize(
    ("usec", "interval"),
    [("30000000", 15.0), ("1000000", 0.5), ("0", None), ("", None), ("abc", None), (None, None)],
)
def test_watchdog_pings_at_half_the_timeout(usec, interval):
    assert SystemdNotifier("/run/x", usec).watchdog_interval == interval


def test_the_watchdog_is_only_for_the_process_watchdog_pid_names():
    mine = str(os.getpid())
    assert SystemdNotifier("/run/x", "1000000", mine).watchdog_interval == 0.5
    assert SystemdNotifier("/run/x", "1000000", "").watchdog_interval == 0.5
    assert SystemdNotifier("/run/x", "1000000", str(os.getpid() + 1)).watchdog_interval is None
