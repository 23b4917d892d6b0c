"""Which addresses a registry instance may point nginx at.

The registry is written by many teams, and any of them may be buggy or
hostile. An instance that names the host itself (``127.0.0.1``, ``::1``,
``0.0.0.0``), the link-local range (``169.254.169.254`` is the cloud
metadata service) or a multicast group would let one team's znode reach the
local interfaces nginx can talk to (the Lua interface, dyups, the status
listener, ZooKeeper on the host, cloud credentials) through nginx's own
proxying, and through them every other team's upstream.

Guarantees of :class:`NetworkPolicy`:

* by default an address that is loopback, link-local, unspecified ("this
  network", ``0.0.0.0/8``, ``::``), multicast or the IPv4 broadcast address
  is refused, in every spelling: IPv4, IPv6, and IPv4 embedded in IPv6
  (mapped ``::ffff:127.0.0.1``, translated ``::ffff:0:127.0.0.1``,
  compatible ``::127.0.0.1``); an embedded address is judged as the IPv4
  address it carries;
* ``allowed`` networks from the trusted config override the default refusal
  (a local sidecar on purpose); ``denied`` networks add refusals. When both
  lists match an address, the longer prefix wins (an IPv4 prefix counts as
  its IPv6-mapped length), and on a tie ``denied`` wins;
* the answer depends on the address and the policy only; the policy is a
  frozen value, so two upstreams with equal policies answer alike. A policy
  remembers its answers for the last :data:`VERDICTS_KEPT` or so addresses
  (a fleet's hosts come back in many upstreams, and an instance often comes
  back at the same address), forgetting them all at once beyond that, so a
  registry that names ever new addresses costs it bounded memory;
* only addresses are judged here: a host name is judged by what it resolves
  to (:mod:`reloader.resolve`), so ``localhost`` is refused as ``127.0.0.1``.

Static ``backup_servers`` come from the config file, which is trusted, and
never pass through here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: Refused unless an operator allows them, with the word a warning uses.
DEFAULT_REFUSED: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(network), kind)
    for network, kind in (
        ("0.0.0.0/8", "an unspecified ('this network') address"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address"),
        ("224.0.0.0/4", "a multicast address"),
        ("255.255.255.255/32", "the broadcast address"),
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        ("fe80::/10", "a link-local address"),
        ("ff00::/8", "a multicast address"),
    )
)

# IPv6 ranges that carry an IPv4 address in their last 32 bits and that a
# host may route to that IPv4 address.
_EMBEDDING = (
    ipaddress.IPv6Network("::ffff:0:0/96"),  # IPv4-mapped
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated); :: and ::1 are judged as IPv6 first
)

#: The most entries one list may hold: a policy is read by people.
MAX_NETWORKS = 1000

#: How many addresses' answers a policy remembers before it forgets them all.
VERDICTS_KEPT = 16384


def _embedded(address: Address) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv6Address) and any(address in network for network in _EMBEDDING):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _rank(network: Network) -> int:
    """The prefix length on one scale: an IPv4 /32 ranks as an IPv6 /128."""
    return network.prefixlen + (96 if network.version == 4 else 0)


@dataclass(frozen=True)
class NetworkPolicy:
    """The networks an operator allows or denies on top of the default refusal."""

    allowed: tuple[Network, ...] = ()
    denied: tuple[Network, ...] = ()
    # The answers given so far, by address as asked. Cluster threads share a
    # policy: a dict's get and set are each atomic, and a lost entry is only
    # asked again.
    _verdicts: dict[str, str | None] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def with_extra(self, allowed: tuple[Network, ...] = (), denied: tuple[Network, ...] = ()) -> "NetworkPolicy":
        """This policy with more entries (an upstream's own lists on top of the global ones)."""
        return NetworkPolicy(self.allowed + tuple(allowed), self.denied + tuple(denied))

    def refusal(self, host: str) -> str | None:
        """None when ``host`` (an IP address as the model stores it) may be served; otherwise why not.

        A string that is not an IP address is not judged here (None).
        """
        verdicts = self._verdicts
        try:
            return verdicts[host]
        except KeyError:
            pass
        if len(verdicts) >= VERDICTS_KEPT:
            verdicts.clear()
        verdict = verdicts[host] = self._judge(host)
        return verdict

    def _judge(self, host: str) -> str | None:
        try:
            address: Address = ipaddress.ip_address(host)
        except ValueError:
            return None
        forms: list[Address] = [address]
        inner = _embedded(address)
        if inner is not None and address not in (ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::1")):
            forms.append(inner)
        allowed = self._best(self.allowed, forms)
        denied = self._best(self.denied, forms)
        if denied is not None and (allowed is None or _rank(denied) >= _rank(allowed)):
            return f"{host} is in denied_networks ({denied})"
        if allowed is not None:
            return None
        for form in forms:
            for network, kind in DEFAULT_REFUSED:
                if form.version == network.version and form in network:
                    shown = host if form is address else f"{host} (IPv4 {form})"
                    return f"{shown} is {kind}, refused unless allowed_networks includes it"
        return None

    @staticmethod
    def _best(networks: tuple[Network, ...], forms: list[Address]) -> Network | None:
        best: Network | None = None
        for network in networks:
            if any(form.version == network.version and form in network for form in forms):
                if best is None or _rank(network) > _rank(best):
                    best = network
        return best


def parse_networks(value: Any) -> tuple[Network, ...]:
    """A config list of CIDR networks (``10.0.0.0/8``, ``::1/128``, or a bare address); ValueError says which entry."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ValueError(f"must be a list of networks like ['10.0.0.0/8', '127.0.0.1/32'], not {type(value).__name__}")
    if len(value) > MAX_NETWORKS:
        raise ValueError(f"has {len(value)} entries; at most {MAX_NETWORKS}")
    networks: list[Network] = []
    problems: list[str] = []
    for index, entry in enumerate(value):
        if not isinstance(entry, str) or not entry or len(entry) > 64:
            problems.append(f"[{index}] {str(entry)[:64]!r} is not a network in CIDR notation")
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=True))
        except ValueError as error:
            problems.append(f"[{index}] {entry!r} is not a network in CIDR notation ({error})")
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(networks)
