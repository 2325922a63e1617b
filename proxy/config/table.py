"""The running route table: routes.yaml compiled for the hot path.

One `RouteTable` is built per successful load and never changed; a reload builds a new one and
the store swaps one reference, so a request sees one table from start to end. Everything a
request needs is precomputed here: weights as basis points per (channel, cohort), the prefix index,
the rollback scopes as a set, the upstream headers as tuples.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from proxy.config.load_errors import RuleIssues
from proxy.config.spec import (
    READ_METHODS,
    ConfigSpec,
    CustomerSource,
    MirrorLimits,
    RouteSpec,
    Side,
)
from proxy.dualwrite.ids import IdRule
from shadow.contract import Contract, RuleError, compile_contract
from shadow.rules import CompareRules, compile_rules

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
RollbackKey = tuple[str | None, str | None, str | None]  # (route, channel, cohort); None = all
WeightKey = tuple[str, str]  # (channel, cohort)

#: the cohort of a request no cohort rule matched (only when no catch-all rule is given)
IMPLICIT_COHORT = "everyone"
#: the channel and cohort names a route's weight resolves through, most specific first
DEFAULT = "default"


@dataclass(frozen=True, slots=True)
class Upstream:
    """One platform API: where it is and how cutover talks to it."""

    side: Side
    api: str
    url: str
    timeout: float
    connect_timeout: float
    headers: tuple[tuple[str, str], ...]
    pool: int
    mirror: MirrorLimits
    #: "old-crm": the key of its mirror lane and metrics; made once here, as it is asked for
    #: several times on every shadowed read
    name: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", f"{self.side}-{self.api}")


@dataclass(frozen=True, slots=True)
class CohortRule:
    name: str
    customers: frozenset[str] | None = None
    header: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True, slots=True)
class CustomerRule:
    """Where to find the customer key: a header, a query parameter or a path template."""

    header: str | None = None
    query: str | None = None
    pattern: re.Pattern[str] | None = None

    @classmethod
    def from_spec(cls, spec: CustomerSource) -> CustomerRule:
        if spec.path is not None:
            before, _, after = spec.path.partition("{customer}")
            regex = re.escape(before) + r"(?P<customer>[^/?]+)" + re.escape(after) + r"(?:/|$)"
            return cls(pattern=re.compile(regex))
        return cls(header=spec.header, query=spec.query)

    def path_match(self, path: str) -> str | None:
        assert self.pattern is not None
        match = self.pattern.match(path)
        return unquote(match.group("customer")) if match else None


@dataclass(frozen=True, slots=True)
class Route:
    index: int
    name: str
    api: str
    prefix: str
    methods: frozenset[str]
    spec: RouteSpec
    weights: Mapping[WeightKey, int]  # basis points (percent x 100) on the new platform
    shadow_bp: int
    new_prefix: str  # where the new platform serves this route (contract.new_path)
    contract: Contract | None  # None when both platforms speak the same API
    rules: CompareRules
    ids: IdRule | None  # where the route's records keep their ids (dual-write, id map)

    def weight_bp(self, channel: str, cohort: str) -> int:
        return self.weights.get((channel, cohort), 0)

    def is_read(self, method: str) -> bool:
        return method in READ_METHODS


@dataclass(frozen=True, slots=True)
class RouteTable:
    spec: ConfigSpec
    source: str  # the file it came from, for messages
    base_dir: Path  # relative paths in routes.yaml are relative to the file's folder
    text: str  # the file as loaded, for publishing to the fleet
    version: str  # content hash: two instances with the same version run the same file
    channels: tuple[str, ...]
    channel_set: frozenset[str]
    default_channel: str
    channel_header: str
    customer_rules: tuple[CustomerRule, ...]
    cohorts: tuple[CohortRule, ...]
    routes: tuple[Route, ...]
    upstreams: Mapping[tuple[Side, str], Upstream]
    rollback: frozenset[RollbackKey]
    trusted_proxies: tuple[IPNetwork, ...]
    _index: Mapping[str, tuple[Route, ...]] = field(repr=False)
    _by_name: Mapping[str, Route] = field(repr=False)

    @property
    def migration(self) -> str:
        return self.spec.migration

    def match(self, method: str, path: str) -> Route | None:
        """The route for a canonical path: the longest prefix, by whole segments."""
        index = self._index
        candidate = path
        while True:
            routes = index.get(candidate)
            if routes is not None:
                for route in routes:
                    if method in route.methods:
                        return route
            if candidate == "/":
                return None
            cut = candidate.rfind("/")
            candidate = candidate[:cut] if cut > 0 else "/"

    def route(self, name: str) -> Route | None:
        return self._by_name.get(name)

    def trusts(self, peer: str | None) -> bool:
        """Whether `peer` is one of `server.trusted_proxies` (its forwarding headers count)."""
        if not self.trusted_proxies or peer is None:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.trusted_proxies)

    def upstream(self, side: Side, api: str) -> Upstream:
        return self.upstreams[(side, api)]

    def resolve(self, path: str) -> Path:
        """A path from routes.yaml, relative to the file's own folder."""
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.base_dir / candidate

    @property
    def cohort_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cohorts)


def resolve_weight(weights: Mapping[str, Any], channel: str, cohort: str) -> float:
    """The percentage on new for one cell, most specific rule first.

    channel.cohort > cohort (all channels) > channel (or channel.default) > default > 0
    """
    by_channel = weights.get(channel)
    if isinstance(by_channel, Mapping) and cohort in by_channel:
        return float(by_channel[cohort])
    if cohort in weights:
        return float(weights[cohort])
    if isinstance(by_channel, Mapping):
        if DEFAULT in by_channel:
            return float(by_channel[DEFAULT])
    elif by_channel is not None:
        return float(by_channel)
    return float(weights.get(DEFAULT, 0))


def build_table(
    spec: ConfigSpec, *, source: str, base_dir: Path, text: str, version: str
) -> RouteTable:
    cohorts = [
        CohortRule(
            name=c.name,
            customers=frozenset(c.customers) if c.customers is not None else None,
            header=tuple((k.lower(), v) for k, v in c.header.items())
            if c.header is not None
            else None,
        )
        for c in spec.cohorts
    ]
    if not any(c.customers is None and c.header is None for c in cohorts):
        cohorts.append(CohortRule(name=IMPLICIT_COHORT))
    cohort_names = [c.name for c in cohorts]

    routes: list[Route] = []
    index: dict[str, list[Route]] = {}
    problems: list[RuleError] = []
    for i, rs in enumerate(spec.routes):
        contract: Contract | None = None
        rules = CompareRules()
        try:
            if rs.contract is not None:
                contract = compile_contract(rs.contract, ("routes", i, "contract"))
            rules = compile_rules(rs.compare, contract, ("routes", i, "compare"))
        except RuleError as exc:
            problems.append(exc)
        weights = {
            (channel, cohort): round(resolve_weight(rs.weights, channel, cohort) * 100)
            for channel in spec.channels
            for cohort in cohort_names
        }
        route = Route(
            index=i,
            name=rs.name,
            api=rs.api,
            prefix=rs.path,
            methods=frozenset(rs.methods),
            spec=rs,
            weights=weights,
            shadow_bp=round(rs.shadow_percent * 100),
            new_prefix=rs.contract.new_path if rs.contract and rs.contract.new_path else rs.path,
            contract=contract,
            rules=rules,
            ids=IdRule.compile(rs.ids) if rs.ids is not None else None,
        )
        routes.append(route)
        index.setdefault(rs.path, []).append(route)

    if problems:
        raise RuleIssues(problems)

    upstreams: dict[tuple[Side, str], Upstream] = {}
    for side, apis in (("old", spec.platforms.old), ("new", spec.platforms.new)):
        for api, us in apis.items():
            upstreams[(side, api)] = Upstream(  # type: ignore[index]
                side=side,  # type: ignore[arg-type]
                api=api,
                url=us.url,
                timeout=us.timeout,
                connect_timeout=us.connect_timeout
                if us.connect_timeout is not None
                else min(us.timeout, 2.0),
                headers=tuple(us.headers.items()),
                pool=us.pool,
                mirror=us.mirror,
            )

    rollback = {scope.key for scope in spec.rollback}
    rollback.update((r.name, None, None) for r in spec.routes if r.rollback)

    return RouteTable(
        spec=spec,
        source=source,
        base_dir=base_dir,
        text=text,
        version=version,
        channels=tuple(spec.channels),
        channel_set=frozenset(spec.channels),
        default_channel=spec.identify.channel.default,
        channel_header=spec.identify.channel.header,
        customer_rules=tuple(CustomerRule.from_spec(c) for c in spec.identify.customer),
        cohorts=tuple(cohorts),
        routes=tuple(routes),
        upstreams=upstreams,
        rollback=frozenset(rollback),
        trusted_proxies=tuple(
            ipaddress.ip_network(n, strict=False) for n in spec.server.trusted_proxies
        ),
        _index={k: tuple(v) for k, v in index.items()},
        _by_name={r.name: r for r in routes},
    )
