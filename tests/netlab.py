"""A network lab for fleet and fault tests: stations in network namespaces, the plant's services in the root one.

Every station gets its own veth pair and /30, not a port on a shared bridge: a partition or a loss rate is then
a property of one link, matched by one interface name, and stations cannot reach each other behind the
gateway's back. All addresses come from 198.18.0.0/15, the block RFC 2544 reserves for test labs, so they name
no real host; each /30 is picked under a machine-wide lock among the blocks no route or address of the root
namespace overlaps yet, so concurrent labs (two pytest-xdist workers) never share one.

Faults are nftables rules at the receiving end of each direction (the root namespace's table for what a host
sends, the host's own table for what it receives), in prerouting before conntrack. Dropping on arrival, not
on departure, matters: a packet dropped in the sender's output hook fails its send() with EPERM, which a real
partition never does; dropped on arrival it simply vanishes, so connects time out and established TCP
connections stall and retransmit.

There is no netem in this kernel, so delay is added by tests/delay_proxy.py, a TCP proxy in the path to a service.

Names carry the creating pid and a random suffix (``nl<pid>_<rnd>``): a lab finds and removes the leftovers of
labs whose process is dead, whatever killed it, and never touches another live lab's.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

LAB_SUPERNET = ipaddress.IPv4Network("198.18.0.0/15")
HOST_IFNAME = "lab0"
_NS_TABLE = "netlab"
_TAG_RE = re.compile(r"^nl(\d+)_([0-9a-f]{3})")
_HOST_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,31}$")
_CAP_NET_ADMIN = 12
_CAP_SYS_ADMIN = 21

_live_tags: set[str] = set()
_live_tags_lock = threading.Lock()


def is_available() -> str | None:
    """Why this machine cannot host a lab, or None. Only what a machine may legitimately lack is checked (root,
    the capabilities, the binaries, namespaces in the kernel): a lab that fails on a machine that has them all
    is a broken lab, and its tests must fail rather than skip."""
    if os.geteuid() != 0:
        return "the network lab needs root (network namespaces, veth pairs and nftables)"
    caps = _effective_capabilities()
    if caps is not None:
        for bit, name in ((_CAP_NET_ADMIN, "CAP_NET_ADMIN"), (_CAP_SYS_ADMIN, "CAP_SYS_ADMIN")):
            if not caps >> bit & 1:
                return f"the network lab needs {name}, which this process lacks"
    for binary in ("ip", "nft"):
        if shutil.which(binary) is None:
            return f"the network lab needs the '{binary}' binary (scripts/setup installs iproute2 and nftables)"
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespaces"
    return None


def _effective_capabilities() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        return None
    return None


def _run(argv: list[str], input_text: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(argv, input=input_text, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip()
        raise NetLabError(f"{' '.join(argv)} failed ({proc.returncode}): {detail}")
    return proc.stdout


class NetLabError(RuntimeError):
    pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(tag_match: re.Match[str]) -> bool:
    pid = int(tag_match.group(1))
    if pid == os.getpid():
        with _live_tags_lock:
            return tag_match.group(0) not in _live_tags
    return not _pid_alive(pid)


def _kill_namespace_processes(ns: str) -> None:
    out = _run(["ip", "netns", "pids", ns], check=False)
    for word in out.split():
        with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
            os.kill(int(word), signal.SIGKILL)


def remove_stale_labs() -> list[str]:
    """Leftovers of killed runs hold addresses this lab would otherwise avoid forever, and processes in their
    namespaces keep the namespaces (and veths) alive after ``ip netns del``; removing them is safe because
    only names whose creating process is dead are touched. Returns what was removed."""
    removed: list[str] = []
    for ns in _netns_names():
        m = _TAG_RE.match(ns)
        if m and _is_stale(m):
            _kill_namespace_processes(ns)
            _run(["ip", "netns", "del", ns], check=False)
            removed.append(f"netns {ns}")
    for ifname in _link_names():
        m = _TAG_RE.match(ifname)
        if m and _is_stale(m):
            _run(["ip", "link", "del", ifname], check=False)
            removed.append(f"link {ifname}")
    for table in _inet_tables():
        m = _TAG_RE.match(table)
        if m and _is_stale(m):
            _run(["nft", "delete", "table", "inet", table], check=False)
            removed.append(f"nft table inet {table}")
    return removed


def _netns_names() -> list[str]:
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line.strip()]


def _link_names() -> list[str]:
    return [str(link["ifname"]) for link in json.loads(_run(["ip", "-j", "link", "show"]) or "[]")]


def _inet_tables() -> list[str]:
    out = _run(["nft", "list", "tables", "inet"])
    return [line.split()[2] for line in out.splitlines() if line.startswith("table inet ")]


def lab_leftovers(tag: str) -> list[str]:
    """Everything in the root namespace still named after the lab ``tag``; empty once it is torn down."""
    found = [f"netns {n}" for n in _netns_names() if n.startswith(tag)]
    found += [f"link {n}" for n in _link_names() if n.startswith(tag)]
    found += [f"nft table inet {t}" for t in _inet_tables() if t.startswith(tag)]
    return found


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    """Held from choosing a /30 until its address is on an interface, so a concurrent lab's scan sees it."""
    directory = Path("/run/lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir())
    with open(directory / "amflow-netlab.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _used_networks() -> list[ipaddress.IPv4Network]:
    used: list[ipaddress.IPv4Network] = []
    for route in json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]) or "[]"):
        dst = str(route.get("dst", ""))
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(dst, strict=False))
    for link in json.loads(_run(["ip", "-j", "-4", "addr", "show"]) or "[]"):
        for info in link.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                used.append(ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False))
    return used


def _free_block() -> ipaddress.IPv4Network:
    used = [net for net in _used_networks() if net.overlaps(LAB_SUPERNET)]
    for block in LAB_SUPERNET.subnets(new_prefix=30):
        if not any(block.overlaps(net) for net in used):
            return block
    raise NetLabError(f"no free /30 left in {LAB_SUPERNET}")


@dataclass
class Host:
    """A station's machine: its own namespace, one link to the plant and nothing else (no default route, so
    nothing it sends can leave the lab)."""

    name: str
    ns: str
    addr: str
    gateway: str
    root_ifname: str
    _lab: NetLab = field(repr=False)
    _partitioned: bool = field(default=False, repr=False)
    _loss_percent: int = field(default=0, repr=False)

    def run(self, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Started processes are killed at teardown if still running: a namespace with a process in it outlives
        ``ip netns del``, and so does its veth."""
        proc: subprocess.Popen[Any] = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], **popen_kwargs)
        self._lab._processes.append(proc)
        return proc

    def partition(self) -> None:
        self._partitioned = True
        self._apply()

    def heal(self) -> None:
        self._partitioned = False
        self._apply()

    def set_loss(self, percent: float) -> None:
        """Each direction loses ``percent`` of its packets independently; 0 removes the rule."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss must be 0..100 %, not {percent}")
        self._loss_percent = round(percent)
        self._apply()

    @property
    def partitioned(self) -> bool:
        return self._partitioned

    @property
    def loss_percent(self) -> int:
        return self._loss_percent

    def _link_rules(self) -> list[str]:
        if self._partitioned:
            return ["drop"]
        if self._loss_percent > 0:
            return [f"numgen random mod 100 < {self._loss_percent} drop"]
        return []

    def _apply(self) -> None:
        rules = self._link_rules()
        table, chain = self._lab.table, _chain_name(self.root_ifname)
        root_script = f"flush chain inet {table} {chain}\n" + "".join(
            f"add rule inet {table} {chain} {rule}\n" for rule in rules
        )
        ns_script = f"flush chain inet {_NS_TABLE} link\n" + "".join(
            f"add rule inet {_NS_TABLE} link {rule}\n" for rule in rules
        )
        _run(["nft", "-f", "-"], input_text=root_script)
        _run(["ip", "netns", "exec", self.ns, "nft", "-f", "-"], input_text=ns_script)


def _chain_name(ifname: str) -> str:
    return "link_" + ifname.replace("-", "_")


class NetLab:
    """Namespaces, veths, the lab's nft tables and a service address, all removed on exit even after a failure.

    ``service_addr`` is one address (on the lab's own interface in the root namespace: a veth pair, since this
    kernel has no dummy devices) that every host reaches through its own link, so a broker or proxy needs a single listener for a whole fleet while each
    host's partition and loss still apply to it.
    """

    def __init__(self, mtu: int = 1500) -> None:
        self.mtu = mtu
        self.tag = f"nl{os.getpid()}_{secrets.token_hex(2)[:3]}"
        self.table = self.tag
        self.hosts: list[Host] = []
        self.service_addr = ""
        self._service_ifname = f"{self.tag}sv"
        self._processes: list[subprocess.Popen[Any]] = []
        self._namespaces: list[str] = []
        self._entered = False

    def __enter__(self) -> NetLab:
        reason = is_available()
        if reason is not None:
            raise NetLabError(reason)
        with _live_tags_lock:
            if self.tag in _live_tags:
                raise NetLabError(f"lab tag {self.tag} already in use in this process")
            _live_tags.add(self.tag)
        self._entered = True
        try:
            remove_stale_labs()
            self._create_root()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _create_root(self) -> None:
        _run(
            ["nft", "-f", "-"],
            input_text=(
                f"table inet {self.table} {{\n"
                "  chain prerouting { type filter hook prerouting priority -300; policy accept; }\n"
                "}\n"
            ),
        )
        with _allocation_lock():
            block = _free_block()
            self.service_addr = str(block.network_address + 1)
            sv = self._service_ifname
            _run(["ip", "link", "add", sv, "type", "veth", "peer", "name", f"{self.tag}sw"])
            for ifname in (sv, f"{self.tag}sw"):
                _run(["ip", "link", "set", ifname, "addrgenmode", "none"])
            _run(["ip", "addr", "add", f"{self.service_addr}/30", "dev", sv])
            for ifname in (sv, f"{self.tag}sw"):
                _run(["ip", "link", "set", ifname, "up"])

    def add_host(self, name: str | None = None) -> Host:
        if not self._entered:
            raise NetLabError("add_host() outside the lab's with-block")
        index = len(self.hosts)
        if index > 0xFF:
            raise NetLabError("a lab holds at most 256 hosts")
        name = name or f"h{index}"
        if not _HOST_NAME_RE.match(name) or any(h.name == name for h in self.hosts):
            raise NetLabError(f"bad or duplicate host name {name!r}")
        ns = f"{self.tag}-{name}"
        root_if = f"{self.tag}{index:02x}"
        chain = _chain_name(root_if)
        _run(["ip", "netns", "add", ns])
        self._namespaces.append(ns)
        mtu = str(self.mtu)
        with _allocation_lock():
            block = _free_block()
            gateway, addr = str(block.network_address + 1), str(block.network_address + 2)
            _run(
                [
                    "ip",
                    "link",
                    "add",
                    root_if,
                    "mtu",
                    mtu,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    HOST_IFNAME,
                    "mtu",
                    mtu,
                    "netns",
                    ns,
                ]
            )
            _run(["ip", "link", "set", root_if, "addrgenmode", "none"])
            _run(["ip", "addr", "add", f"{gateway}/30", "dev", root_if])
        _run(
            ["nft", "-f", "-"],
            input_text=(
                f"add chain inet {self.table} {chain}\n"
                f'add rule inet {self.table} prerouting iifname "{root_if}" jump {chain}\n'
            ),
        )
        _run(["ip", "link", "set", root_if, "up"])
        in_ns = ["ip", "netns", "exec", ns]
        _run(
            [*in_ns, "nft", "-f", "-"],
            input_text=(
                f"table inet {_NS_TABLE} {{\n"
                "  chain prerouting { type filter hook prerouting priority -300; policy accept; }\n"
                "  chain link { }\n"
                "}\n"
                f'add rule inet {_NS_TABLE} prerouting iifname "{HOST_IFNAME}" jump link\n'
            ),
        )
        _run([*in_ns, "ip", "link", "set", "lo", "up"])
        _run([*in_ns, "ip", "link", "set", HOST_IFNAME, "addrgenmode", "none"])
        _run([*in_ns, "ip", "addr", "add", f"{addr}/30", "dev", HOST_IFNAME])
        _run([*in_ns, "ip", "link", "set", HOST_IFNAME, "up"])
        _run([*in_ns, "ip", "route", "add", f"{self.service_addr}/32", "via", gateway, "dev", HOST_IFNAME])
        host = Host(name=name, ns=ns, addr=addr, gateway=gateway, root_ifname=root_if, _lab=self)
        self.hosts.append(host)
        return host

    def close(self) -> None:
        """Best effort over every step, then a check: a lab that cannot remove itself says so."""
        if not self._entered:
            return
        for proc in self._processes:
            if proc.poll() is None:
                proc.kill()
        for proc in self._processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for ns in self._namespaces:
            _kill_namespace_processes(ns)
            _run(["ip", "netns", "del", ns], check=False)
        for ifname in _link_names():
            if ifname.startswith(self.tag):
                _run(["ip", "link", "del", ifname], check=False)
        _run(["nft", "delete", "table", "inet", self.table], check=False)
        self._entered = False
        leftovers: list[str] = []
        for _ in range(50):
            leftovers = lab_leftovers(self.tag)
            if not leftovers:
                break
            time.sleep(0.02)
        with _live_tags_lock:
            _live_tags.discard(self.tag)
        if leftovers:
            raise NetLabError(f"lab {self.tag} left behind: {', '.join(leftovers)}")
