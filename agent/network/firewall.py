"""Published ports and outbound NAT: nftables first, an iptables ``CORRAL`` chain where ``nft``
is absent.

Every rule carries a comment: ``corral:<container id>`` for a container's published ports,
``corral-nat:<bridge>`` for the bridge's masquerade. Listing and removing go by that tag, so a
container's rules are removed exactly, and nothing of anyone else is touched. Tools are run
with an argv list (never a shell); rules for one container go in one ``nft -f -`` transaction,
so they are all in place or none is.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any, Protocol

from agent.network.errors import NetworkError
from agent.network.ipam import PublishedPort

logger = logging.getLogger(__name__)

CONTAINER_TAG = "corral:"
NAT_TAG = "corral-nat:"
_WILDCARDS = ("0.0.0.0", "")  # noqa: S104 - a wildcard to match, not to bind


def _run(argv: Sequence[str], stdin: str | None = None, step: str = "firewall") -> str:
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"step.{step}", f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise NetworkError(f"step.{step}", f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


class Firewall(Protocol):
    """What the manager needs of a packet filter backend."""

    name: str

    def setup(self, subnet: ipaddress.IPv4Network, bridge: str, nat: bool) -> None: ...
    def publish(self, container_id: str, ip: str, ports: Sequence[PublishedPort]) -> None: ...
    def unpublish(self, container_id: str) -> int: ...
    def tagged(self) -> dict[str, int]: ...
    def teardown(self, bridge: str) -> None: ...


class NftFirewall:
    """Rules in a table of our own (``inet corral`` by default)."""

    name = "nftables"

    def __init__(self, table: str = "corral") -> None:
        self.table = table

    def _base(self) -> str:
        t = self.table
        return (
            f"add table inet {t}\n"
            f"add chain inet {t} prerouting {{ type nat hook prerouting priority dstnat; }}\n"
            f"add chain inet {t} output {{ type nat hook output priority -100; }}\n"
            f"add chain inet {t} postrouting {{ type nat hook postrouting priority srcnat; }}\n"
        )

    def rules(self) -> list[dict[str, Any]]:
        """The rules of our table as nft's JSON objects (empty if the table does not exist)."""
        try:
            out = _run(["nft", "-j", "list", "table", "inet", self.table])
        except NetworkError as exc:
            if "No such file or directory" in exc.message:
                return []
            raise
        items = json.loads(out).get("nftables", [])
        return [item["rule"] for item in items if "rule" in item]

    def setup(self, subnet: ipaddress.IPv4Network, bridge: str, nat: bool) -> None:
        tag = f"{NAT_TAG}{bridge}"
        script = self._base()
        if not any(r.get("comment") == tag for r in self.rules()):
            # Host-originated connections to 127.0.0.1:<published> are DNATed onto the
            # bridge; they keep a loopback source unless masqueraded (plus route_localnet).
            script += (
                f'add rule inet {self.table} postrouting oifname "{bridge}" '
                f'ip saddr 127.0.0.0/8 masquerade comment "{tag}"\n'
            )
            if nat:
                script += (
                    f"add rule inet {self.table} postrouting ip saddr {subnet} "
                    f'oifname != "{bridge}" masquerade comment "{tag}"\n'
                )
            # A container reaching a published port of the host (its own or a neighbour's)
            # is DNATed back onto the bridge; masquerade so the reply returns via the host.
            script += (
                f'add rule inet {self.table} postrouting oifname "{bridge}" ip saddr {subnet} '
                f'ct status dnat masquerade comment "{tag}"\n'
            )
        _run(["nft", "-f", "-"], script, step="nft_setup")

    def publish(self, container_id: str, ip: str, ports: Sequence[PublishedPort]) -> None:
        if not ports:
            return
        tag = f"{CONTAINER_TAG}{container_id}"
        script = self._base()
        for p in ports:
            match = "fib daddr type local" if p.host_ip in _WILDCARDS else f"ip daddr {p.host_ip}"
            action = f"{p.protocol} dport {p.host_port} dnat ip to {ip}:{p.container_port}"
            for chain in ("prerouting", "output"):
                script += f'add rule inet {self.table} {chain} {match} {action} comment "{tag}"\n'
        _run(["nft", "-f", "-"], script, step="nft_publish")

    def _delete(self, predicate: Any) -> int:
        doomed = [r for r in self.rules() if predicate(str(r.get("comment", "")))]
        if doomed:
            script = "".join(
                f"delete rule inet {self.table} {r['chain']} handle {r['handle']}\n" for r in doomed
            )
            _run(["nft", "-f", "-"], script, step="nft_delete")
        return len(doomed)

    def unpublish(self, container_id: str) -> int:
        tag = f"{CONTAINER_TAG}{container_id}"
        return self._delete(lambda c: c == tag)

    def tagged(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.rules():
            comment = str(r.get("comment", ""))
            if comment.startswith(CONTAINER_TAG):
                cid = comment[len(CONTAINER_TAG) :]
                counts[cid] = counts.get(cid, 0) + 1
        return counts

    def teardown(self, bridge: str) -> None:
        tag = f"{NAT_TAG}{bridge}"
        self._delete(lambda c: c == tag)
        if not self.rules():
            with contextlib.suppress(NetworkError):  # already gone
                _run(["nft", "delete", "table", "inet", self.table], step="nft_teardown")


class IptablesFirewall:
    """The same rules in the ``nat`` table: a ``CORRAL`` chain reached from PREROUTING and
    OUTPUT for local destinations, masquerade in POSTROUTING."""

    name = "iptables"

    def __init__(self, chain: str = "CORRAL") -> None:
        self.chain = chain

    def _ipt(self, *args: str, step: str = "iptables") -> str:
        return _run(["iptables", "-w", "-t", "nat", *args], step=step)

    def _ensure_chain(self) -> None:
        existing = self._ipt("-S")
        if f"-N {self.chain}" not in existing.splitlines():
            self._ipt("-N", self.chain, step="iptables_setup")
        for hook in ("PREROUTING", "OUTPUT"):
            jump = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", self.chain]
            line = f"-A {hook} " + " ".join(jump)
            if line not in existing.splitlines():
                self._ipt("-A", hook, *jump, step="iptables_setup")

    def _tagged_lines(self) -> list[tuple[str, list[str]]]:
        """(comment, argv of the rule) for every rule of the nat table carrying a comment."""
        found = []
        for line in self._ipt("-S").splitlines():
            words = shlex.split(line)
            if words[:1] != ["-A"] or "--comment" not in words:
                continue
            found.append((words[words.index("--comment") + 1], words[1:]))
        return found

    def setup(self, subnet: ipaddress.IPv4Network, bridge: str, nat: bool) -> None:
        self._ensure_chain()
        tag = f"{NAT_TAG}{bridge}"
        if any(c == tag for c, _ in self._tagged_lines()):
            return
        comment = ["-m", "comment", "--comment", tag, "-j", "MASQUERADE"]
        self._ipt("-A", "POSTROUTING", "-s", "127.0.0.0/8", "-o", bridge, *comment)
        if nat:
            self._ipt("-A", "POSTROUTING", "-s", str(subnet), "!", "-o", bridge, *comment)
        hairpin = ["-m", "conntrack", "--ctstate", "DNAT"]
        self._ipt("-A", "POSTROUTING", "-s", str(subnet), "-o", bridge, *hairpin, *comment)

    def publish(self, container_id: str, ip: str, ports: Sequence[PublishedPort]) -> None:
        self._ensure_chain()
        tag = f"{CONTAINER_TAG}{container_id}"
        try:
            for p in ports:
                dst = [] if p.host_ip in _WILDCARDS else ["-d", p.host_ip]
                self._ipt(
                    "-A", self.chain, *dst, "-p", p.protocol, "--dport", str(p.host_port),
                    "-m", "comment", "--comment", tag,
                    "-j", "DNAT", "--to-destination", f"{ip}:{p.container_port}",
                    step="iptables_publish",
                )  # fmt: skip
        except NetworkError:
            self.unpublish(container_id)  # iptables has no transaction: undo what went in
            raise

    def _delete(self, predicate: Any) -> int:
        count = 0
        for comment, words in self._tagged_lines():
            if predicate(comment):
                self._ipt("-D", *words, step="iptables_delete")
                count += 1
        return count

    def unpublish(self, container_id: str) -> int:
        tag = f"{CONTAINER_TAG}{container_id}"
        return self._delete(lambda c: c == tag)

    def tagged(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for comment, _ in self._tagged_lines():
            if comment.startswith(CONTAINER_TAG):
                cid = comment[len(CONTAINER_TAG) :]
                counts[cid] = counts.get(cid, 0) + 1
        return counts

    def teardown(self, bridge: str) -> None:
        tag = f"{NAT_TAG}{bridge}"
        self._delete(lambda c: c == tag)
        if any(words[0] == self.chain for _, words in self._tagged_lines()):
            return  # other containers still publish ports through the chain
        existing = self._ipt("-S").splitlines()
        for hook in ("PREROUTING", "OUTPUT"):
            jump = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", self.chain]
            if f"-A {hook} " + " ".join(jump) in existing:
                self._ipt("-D", hook, *jump, step="iptables_teardown")
        if f"-N {self.chain}" in existing:
            self._ipt("-F", self.chain, step="iptables_teardown")
            self._ipt("-X", self.chain, step="iptables_teardown")


def choose(kind: str, *, table: str = "corral", chain: str = "CORRAL") -> Firewall:
    """``auto`` picks nftables when ``nft`` is installed, else iptables."""
    # Both names end up in nft scripts / iptables argv: keep them to plain identifiers.
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", table):
        raise NetworkError("nft_table", "letters, digits and '_', up to 32")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,27}", chain):
        raise NetworkError("iptables_chain", "letters, digits, '_' and '-', up to 28")
    if kind == "auto":
        kind = "nftables" if shutil.which("nft") else "iptables"
    if kind == "nftables":
        return NftFirewall(table)
    if kind == "iptables":
        if not shutil.which("iptables"):
            raise NetworkError("firewall", "neither nft nor iptables is installed")
        return IptablesFirewall(chain)
    raise NetworkError("firewall", f"unknown backend {kind!r}; use auto, nftables or iptables")
