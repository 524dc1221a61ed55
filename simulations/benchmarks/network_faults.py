"""A factory behind a network this machine can make slow or lossy: a namespace of its own, joined by a veth pair.

The soak (`simulations.benchmarks.soak`) runs a factory's processes inside the namespace (``ip netns exec``)
and impairs its link while they run: a token bucket (``tc qdisc tbf``) caps the rate each way, and
``iptables -m statistic`` drops a share of the packets each way. (Linux's ``netem`` would add delay too,
but its kernel module is not on every machine; these two are.) Both act on the veth link only: the
namespace's loopback, where the factory's worker talks to its SuperNode, stays whole, as a WAN fault
would leave it. Needs root and iproute2 and iptables: `unavailable` says what is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from types import TracebackType

__all__ = ["FactoryNetwork", "unavailable"]

_TOOLS = ("ip", "tc", "iptables")


def unavailable() -> str | None:
    """Why this machine cannot make factory networks (None when it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    return f"missing {', '.join(missing)} (Debian: apt-get install iproute2 iptables)" if missing else None


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")


class FactoryNetwork:
    """Namespace ``name`` holding one end of a veth pair at ``factory_address``; this host holds the other at
    ``host_address``, where the factory reaches the server. ``index`` (0-63) picks the /30 of 10.231.x.y."""

    def __init__(self, name: str, index: int) -> None:
        if not 0 <= index < 64:
            raise ValueError(f"index must be in [0, 64), got {index}")
        self.name = name
        tag = f"{os.getpid() % 10_000}x{index}"
        self.host_link, self.factory_link = f"fmh{tag}", f"fmf{tag}"  # at most 15 characters
        prefix = f"10.231.{os.getpid() % 256}"  # a /30 each: 10.231.<this process>.<4 index + 1 or 2>
        self.host_address, self.factory_address = f"{prefix}.{4 * index + 1}", f"{prefix}.{4 * index + 2}"
        self._made = self._dropping = False
        self._shaped: list[tuple[str, ...]] = []  # the commands that take each cap off

    def __enter__(self) -> FactoryNetwork:
        if reason := unavailable():
            raise RuntimeError(f"cannot make the network of {self.name}: {reason}")
        _run("ip", "netns", "add", self.name)
        self._made = True
        inside = ("ip", "-n", self.name)
        _run("ip", "link", "add", self.host_link, "type", "veth", "peer", "name", self.factory_link)
        _run("ip", "link", "set", self.factory_link, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_address}/30", "dev", self.host_link)
        _run("ip", "link", "set", self.host_link, "up")
        _run(*inside, "addr", "add", f"{self.factory_address}/30", "dev", self.factory_link)
        _run(*inside, "link", "set", self.factory_link, "up")
        _run(*inside, "link", "set", "lo", "up")  # the factory's own local ports (its SuperNode's app API)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._made:
            _run("ip", "netns", "del", self.name)  # its end of the veth pair goes with it, and so the pair
            self._made = False

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (``ip netns exec`` execs it: the same process)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def impair(self, *, rate_kbit: int | None = None, loss: float = 0.0, upload_only: bool = False) -> None:
        """Cap the link's rate at ``rate_kbit`` and drop a ``loss`` share of the packets, each way or only on
        the way from the factory."""
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {loss}")
        self.restore()
        inside = ("ip", "netns", "exec", self.name)
        if rate_kbit is not None:
            shaping = ("root", "tbf", "rate", f"{rate_kbit}kbit", "burst", "1600", "latency", "500ms")
            links = [(*inside, "tc", "qdisc", "{}", "dev", self.factory_link)]
            if not upload_only:
                links.append(("tc", "qdisc", "{}", "dev", self.host_link))
            for link in links:
                _run(*(part.format("add") for part in link), *shaping)
                self._shaped.append(tuple(part.format("del") for part in link))
        if loss > 0.0:
            ways = [("OUTPUT", "-o")] if upload_only else [("INPUT", "-i"), ("OUTPUT", "-o")]
            for chain, link in ways:  # the link's packets only, not the loopback's
                _run(*inside, "iptables", "-A", chain, link, self.factory_link, "-m", "statistic", "--mode",
                     "random", "--probability", f"{loss:.4f}", "-j", "DROP")
            self._dropping = True

    def restore(self) -> None:
        """The link as made: no cap, no drops."""
        while self._shaped:
            _run(*self._shaped.pop(), "root")
        if self._dropping:
            _run("ip", "netns", "exec", self.name, "iptables", "-F")
            self._dropping = False
