"""The network lab the fleet tests stand on: if a partition resets instead of stalling, or loss is not loss, a
fleet test passes for the wrong reason, so each fault is shown to be the fault it claims."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.delay_proxy import DelayProxy
from tests.netlab import Host, NetLab, is_available, lab_leftovers

_UNAVAILABLE = is_available()
# On CI the lab must work: a missing binary or privilege there is a failure, not a reason to skip.
pytestmark = pytest.mark.skipif(
    _UNAVAILABLE is not None and not os.environ.get("CI"), reason=f"network lab unavailable: {_UNAVAILABLE}"
)

END = b"END"
SO_RCVBUFFORCE = 33  # Linux's value; Python 3.11's socket module does not name it. Root may exceed rmem_max.


@pytest.fixture
def lab() -> Iterator[NetLab]:
    with NetLab() as instance:
        yield instance


class EchoServer:
    """Echoes every byte back; ``close_after`` closes a connection after its first chunk."""

    def __init__(self, host: str, close_after_first: bool = False) -> None:
        self.sock = socket.create_server((host, 0))
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.close_after_first = close_after_first
        self.eof_seen = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    self.eof_seen.set()
                    return
                conn.sendall(data)
                if self.close_after_first:
                    return

    def close(self) -> None:
        self.sock.close()
        for conn in self._conns:
            conn.close()


def run_in(host: Host, code: str, *args: str, timeout_s: float = 15.0) -> str:
    proc = host.run([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, err
    return str(out)


CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
        s.sendall(b"ping")
        print("reply", s.recv(100).decode())
except TimeoutError:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
"""


def closed_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def test_a_host_reaches_servers_on_its_gateway_and_the_service_address_but_not_root_loopback(lab: NetLab) -> None:
    host = lab.add_host("st1")
    on_gateway, on_service, on_loopback = (
        EchoServer(host.gateway),
        EchoServer(lab.service_addr),
        EchoServer("127.0.0.1"),
    )
    try:
        for server in (on_gateway, on_service):
            assert run_in(host, CONNECT, server.address[0], str(server.address[1]), "3").split() == ["reply", "ping"]
        # 127.0.0.1 inside the namespace is the namespace's own loopback, where nothing listens.
        assert run_in(host, CONNECT, "127.0.0.1", str(on_loopback.address[1]), "3").split() == ["refused"]
    finally:
        for server in (on_gateway, on_service, on_loopback):
            server.close()


CLIENT = """
import socket, sys
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for line in sys.stdin:
    cmd, arg, wait = line.split()
    if cmd == "send":
        conn.sendall(arg.encode())
    if cmd in ("send", "recv"):
        conn.settimeout(float(wait))
        try:
            print("reply", conn.recv(100).decode() or "EOF", flush=True)
        except TimeoutError:
            print("timeout", flush=True)
    elif cmd == "connect":
        try:
            socket.create_connection((sys.argv[1], int(arg)), timeout=float(wait)).close()
            print("connected", flush=True)
        except TimeoutError:
            print("timeout", flush=True)
        except ConnectionRefusedError:
            print("refused", flush=True)
"""


SEND_ONE_UDP = """
import socket, sys
try:
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", (sys.argv[1], int(sys.argv[2])))
    print("sent")
except OSError as e:
    print(repr(e))
"""


def connect_from_root(addr: str) -> str:
    """Nothing listens in a new namespace, so port 9 there is closed."""
    try:
        socket.create_connection((addr, 9), timeout=1).close()
    except TimeoutError:
        return "timeout"
    except ConnectionRefusedError:
        return "refused"
    return "connected"


def test_partition_stalls_connects_and_established_connections_until_heal(lab: NetLab) -> None:
    host = lab.add_host("st1")
    server = EchoServer(host.gateway)
    nothing = str(closed_port(host.gateway))
    client = host.run(
        [sys.executable, "-c", CLIENT, host.gateway, str(server.address[1])],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert client.stdin is not None and client.stdout is not None

    def ask(command: str) -> str:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(command + "\n")
        client.stdin.flush()
        return client.stdout.readline().strip()

    try:
        assert ask("send a 3") == "reply a"
        assert ask(f"connect {nothing} 3") == "refused"

        assert connect_from_root(host.addr) == "refused"

        host.partition()
        # A closed port answers with a reset; behind a partition nothing answers at all, in either direction.
        assert ask(f"connect {nothing} 1") == "timeout"
        assert connect_from_root(host.addr) == "timeout"
        assert ask("send b 1") == "timeout"
        # Nor does the sender hear of it: the packet leaves and is lost on the way, no EPERM from its own stack.
        assert run_in(host, SEND_ONE_UDP, host.gateway, nothing).strip() == "sent"
        # One-way traffic shows the host's side drops too (a TCP exchange would be cut by either side alone).
        assert udp_to_host(host, count=20, wait_s=1.0) == 0

        host.heal()
        # The same connection carries on: TCP retransmits what the partition swallowed, nothing was reset.
        assert ask("recv - 10") == "reply b"
        assert ask(f"connect {nothing} 3") == "refused"
        assert ask("send c 3") == "reply c"
    finally:
        client.kill()
        client.wait()
        server.close()


SEND_UDP = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[3])):
    sock.sendto(b"%d" % i, (sys.argv[1], int(sys.argv[2])))
for _ in range(30):
    sock.sendto(b"END", (sys.argv[1], int(sys.argv[2])))
"""

RECEIVE_UDP = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)
sock.bind((sys.argv[1], 0))
sock.settimeout(float(sys.argv[2]))
print(sock.getsockname()[1], flush=True)
seen = set()
try:
    while (data := sock.recv(64)) != b"END":
        seen.add(data)
except TimeoutError:
    pass
print(len(seen), flush=True)
"""

DATAGRAMS = 2000


def udp_from_host(host: Host) -> int:
    """Datagrams the root namespace received of DATAGRAMS the host sent; the END marker is sent 30 times so that
    even at 80 % loss one gets through, and it follows the data because a veth keeps order."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        sock.bind((host.gateway, 0))
        sock.settimeout(10)
        run_in(host, SEND_UDP, host.gateway, str(sock.getsockname()[1]), str(DATAGRAMS))
        seen: set[bytes] = set()
        while (data := sock.recv(64)) != END:
            seen.add(data)
        return len(seen)


def udp_to_host(host: Host, count: int = DATAGRAMS, wait_s: float = 10.0) -> int:
    """Datagrams the host received of ``count`` the root namespace sent, waiting at most ``wait_s`` between two."""
    receiver = host.run(
        [sys.executable, "-c", RECEIVE_UDP, host.addr, str(wait_s)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert receiver.stdout is not None
    port = int(receiver.stdout.readline())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(count):
            sock.sendto(b"%d" % i, (host.addr, port))
        for _ in range(30):
            sock.sendto(END, (host.addr, port))
    out, err = receiver.communicate(timeout=15)
    assert receiver.returncode == 0, err
    return int(out)


def test_loss_drops_a_share_of_packets_in_each_direction_and_zero_restores(lab: NetLab) -> None:
    host = lab.add_host("st1")
    host.set_loss(50)
    for direction, received in (("host to root", udp_from_host(host)), ("root to host", udp_to_host(host))):
        assert 0.2 * DATAGRAMS <= received <= 0.8 * DATAGRAMS, f"{direction}: {received} of {DATAGRAMS} arrived"

    host.set_loss(0)
    assert udp_from_host(host) == DATAGRAMS
    assert udp_to_host(host) == DATAGRAMS


ROUND_TRIPS = """
import socket, sys, time
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10) as s:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for i in range(3):
        start = time.monotonic()
        s.sendall(b"x")
        assert s.recv(10) == b"x"
        print(time.monotonic() - start, flush=True)
"""


def test_delay_proxy_on_the_gateway_delays_each_way_of_a_round_trip(lab: NetLab) -> None:
    """The fleet's way to add latency: the proxy listens where the host reaches it and forwards to a service
    on the root namespace's loopback."""
    host = lab.add_host("st1")
    server = EchoServer("127.0.0.1")
    delay = 0.15
    try:
        with DelayProxy(listen=(host.gateway, 0), upstream=server.address, delay_s=delay) as proxy:
            round_trips = [float(line) for line in run_in(host, ROUND_TRIPS, *map(str, proxy.address)).split()]
        assert len(round_trips) == 3
        assert min(round_trips) >= 2 * delay, round_trips
    finally:
        server.close()


def round_trip(sock: socket.socket) -> float:
    start = time.monotonic()
    sock.sendall(b"x")
    assert sock.recv(10) == b"x"
    return time.monotonic() - start


def test_delay_proxy_set_delay_applies_to_new_traffic() -> None:
    server = EchoServer("127.0.0.1")
    try:
        with (
            DelayProxy(listen=("127.0.0.1", 0), upstream=server.address, delay_s=0.05) as proxy,
            socket.create_connection(proxy.address, timeout=10) as sock,
        ):
            assert round_trip(sock) >= 0.1
            proxy.set_delay(0.25)
            assert round_trip(sock) >= 0.5
    finally:
        server.close()


def test_delay_proxy_is_latency_not_throttling_and_keeps_byte_order() -> None:
    server = EchoServer("127.0.0.1")
    delay = 0.2
    try:
        with DelayProxy(listen=("127.0.0.1", 0), upstream=server.address, delay_s=delay) as proxy:
            with socket.create_connection(proxy.address, timeout=10) as sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                messages = 30
                start = time.monotonic()
                for i in range(messages):
                    sock.sendall(b"%04d" % i)
                    time.sleep(0.02)
                received = b""
                while len(received) < 4 * messages:
                    received += sock.recv(4096)
                elapsed = time.monotonic() - start
            assert received == b"".join(b"%04d" % i for i in range(messages))
            # Chunks wait concurrently: about 0.6 s of sending plus one round trip (0.4 s). A proxy that slept
            # per chunk, one after another, would need at least messages * delay = 6 s.
            assert elapsed < messages * delay / 2, elapsed

            payload = os.urandom(8 << 20)
            echoed = bytearray()
            with socket.create_connection(proxy.address, timeout=30) as sock:
                sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
                sender.start()
                while len(echoed) < len(payload):
                    chunk = sock.recv(1 << 20)
                    assert chunk, f"proxy closed after {len(echoed)} bytes"
                    echoed += chunk
                sender.join(timeout=10)
            assert bytes(echoed) == payload
    finally:
        server.close()


def connect_and_read(address: tuple[str, int]) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        return sock.recv(10)


def test_delay_proxy_closes_both_sides_when_either_closes() -> None:
    closing = EchoServer("127.0.0.1", close_after_first=True)
    staying = EchoServer("127.0.0.1")
    try:
        with (
            DelayProxy(listen=("127.0.0.1", 0), upstream=closing.address, delay_s=0.05) as proxy,
            socket.create_connection(proxy.address, timeout=10) as sock,
        ):
            sock.sendall(b"hi")
            assert sock.recv(10) == b"hi"
            assert sock.recv(10) == b"", "the upstream closed, so must the client's side"

        with DelayProxy(listen=("127.0.0.1", 0), upstream=staying.address, delay_s=0.05) as proxy:
            with socket.create_connection(proxy.address, timeout=10) as sock:
                sock.sendall(b"hi")
                assert sock.recv(10) == b"hi"
            assert staying.eof_seen.wait(5), "the client closed, so must the upstream side"

        down = ("127.0.0.1", closed_port("127.0.0.1"))
        # The reset may reach the client before its connect() returns or after: either way it is a reset.
        with (
            DelayProxy(listen=("127.0.0.1", 0), upstream=down, delay_s=0.05) as proxy,
            pytest.raises(ConnectionResetError),
        ):
            connect_and_read(proxy.address)
    finally:
        closing.close()
        staying.close()


def root_state() -> str:
    commands = (["ip", "netns", "list"], ["ip", "link", "show"], ["nft", "list", "tables"])
    return "\n".join(subprocess.run(argv, capture_output=True, text=True, check=True).stdout for argv in commands)


def fail_inside_a_lab(seen: dict[str, Any]) -> None:
    with NetLab() as lab:
        seen["tag"] = lab.tag
        first, second = lab.add_host("st1"), lab.add_host("st2")
        first.partition()
        second.set_loss(5)
        seen["proc"] = first.run(["sleep", "60"])
        assert lab.tag in root_state()
        raise RuntimeError("the test failed")


def test_teardown_leaves_nothing_behind_even_after_a_failure() -> None:
    seen: dict[str, Any] = {}
    with pytest.raises(RuntimeError, match="the test failed"):
        fail_inside_a_lab(seen)
    assert seen["tag"] not in root_state()
    assert lab_leftovers(seen["tag"]) == []
    assert seen["proc"].poll() is not None, "a process in the lab outlived it"


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_new_lab_removes_leftovers_of_dead_runs_and_spares_live_labs(lab: NetLab) -> None:
    live = lab.add_host("st1")
    stale = f"nl{dead_pid()}_abc"
    subprocess.run(["ip", "netns", "add", f"{stale}-st1"], check=True)
    subprocess.run(["ip", "link", "add", f"{stale}00", "type", "veth", "peer", "name", f"{stale}01"], check=True)
    subprocess.run(["nft", "add", "table", "inet", stale], check=True)
    assert len(lab_leftovers(stale)) == 4

    with NetLab() as other:
        other_host = other.add_host("st1")
        assert lab_leftovers(stale) == []
        assert live.ns in root_state() and lab.table in root_state()
        assert {live.gateway, live.addr}.isdisjoint({other_host.gateway, other_host.addr, other.service_addr})
    server = EchoServer(live.gateway)
    try:
        assert run_in(live, CONNECT, live.gateway, str(server.address[1]), "3").split() == ["reply", "ping"]
    finally:
        server.close()
