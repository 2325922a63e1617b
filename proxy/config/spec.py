"""The shape of routes.yaml (version 1), as frozen pydantic models.

These models check structure and value types only; names that refer to other parts of the file
(channels and cohorts in weights, a route's API, rollback scopes, overlapping routes) are checked
by `proxy.config.semantics`, which walks the raw document so that every error in the file is
reported in one run, not one layer at a time. docs/routes-reference.md is the user-facing text of
this module; keep both in step.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from yarl import URL

from proxy.config.units import Duration, HeaderName, HeaderValue, HostPort, Name, Percent, Size
from shadow import jsonpath

Side = Literal["old", "new"]
Method = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ALL_METHODS: tuple[Method, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

#: the value normalizers a `compare.normalize` rule may name (shadow.rules implements them)
NORMALIZERS = frozenset(
    {"lower", "upper", "trim", "collapse_space", "digits", "e164", "iso8601", "sort", "number"}
)


def _check_path(value: str) -> str:
    try:
        jsonpath.parse(value)
    except jsonpath.PathError as exc:
        raise ValueError(str(exc)) from None
    return value


def _check_url_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"a path starts with '/', got {value!r}")
    segments = value.split("/")
    if any(seg in {".", ".."} for seg in segments) or "//" in value or "%" in value:
        raise ValueError(f"a path without '.', '..', '//' or %-escapes, got {value!r}")
    if len(value) > 1 and value.endswith("/"):
        raise ValueError(f"a path prefix without a trailing '/', got {value!r}")
    return value


def _check_url(value: str) -> str:
    if any(char.isspace() or not char.isprintable() for char in value):
        raise ValueError(f"a URL without spaces or control characters, got {value!r}")
    try:
        url = URL(value)
    except (ValueError, TypeError):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}") from None
    if url.scheme not in {"http", "https"} or not url.host:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    if url.query_string or url.fragment:
        raise ValueError(f"a base URL without query or fragment, got {value!r}")
    return value.rstrip("/")


def _check_store(value: str) -> str:
    if not value.startswith(("sqlite://", "redis://", "rediss://")):
        raise ValueError(
            f"expected sqlite:///path/to/file.db or redis://host:port/db, got {value!r}"
        )
    return value


def _check_mqtt_url(value: str) -> str:
    if not value.startswith(("mqtt://", "mqtts://")):
        raise ValueError(f"expected mqtt://host:port or mqtts://host:port, got {value!r}")
    return value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, dict) else value


def _normalizers(value: Any) -> Any:
    names = [value] if isinstance(value, str) else value
    if isinstance(names, list):
        for name in names:
            if not isinstance(name, str) or name.split(":", 1)[0] not in NORMALIZERS:
                raise ValueError(
                    f"unknown normalizer {name!r} (known: {', '.join(sorted(NORMALIZERS))})"
                )
    return names


def _rollback(value: Any) -> Any:
    if value is True:
        return [{}]
    if value is False or value is None:
        return []
    return value


JsonPath = Annotated[str, AfterValidator(_check_path)]
UrlPath = Annotated[str, AfterValidator(_check_url_path)]
Url = Annotated[str, AfterValidator(_check_url)]
Scalar = str | int | float | bool | None


class Spec(BaseModel):
    """Frozen, and strict about unknown keys: a typo must not silently become a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- platforms ---------------------------------------------------------------------------------


class MirrorLimits(Spec):
    """Budget for secondary (shadow and dual-write) traffic sent to one upstream."""

    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 128
    # a secondary slower than this x the primary gets fewer slots (proxy/mirror.py slow_limit);
    # 0: always `concurrency`
    slow_ratio: Annotated[float, Field(ge=0, le=1_000)] = 4.0
    queue: Annotated[int, Field(ge=0, le=1_000_000)] = 1000
    rate: Annotated[float, Field(ge=0)] = 0  # requests/s; 0 means no rate budget
    # a shadow read that waited longer than this would compare answers of different moments
    max_wait: Duration = 2.0


class UpstreamSpec(Spec):
    url: Url
    timeout: Duration = 5.0
    connect_timeout: Duration | None = None
    headers: dict[HeaderName, HeaderValue] = {}
    pool: Annotated[int, Field(ge=1, le=100_000)] = 256
    mirror: MirrorLimits = MirrorLimits()


class PlatformsSpec(Spec):
    old: dict[Name, UpstreamSpec]
    new: dict[Name, UpstreamSpec]


# --- identity ----------------------------------------------------------------------------------


class ChannelSource(Spec):
    header: HeaderName = "X-Channel"
    default: Name = "web"


class CustomerSource(Spec):
    header: HeaderName | None = None
    query: str | None = None
    path: UrlPath | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> CustomerSource:
        given = [k for k in ("header", "query", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of header, query or path")
        if self.path is not None and "{customer}" not in self.path:
            raise ValueError(f"a customer path template contains {{customer}}, got {self.path!r}")
        return self


class IdentifySpec(Spec):
    channel: ChannelSource = ChannelSource()
    customer: Annotated[list[CustomerSource], BeforeValidator(_one_or_many)] = [
        CustomerSource(header="X-Customer-Id")
    ]


class CohortSpec(Spec):
    name: Name
    customers: list[str] | None = None
    header: dict[HeaderName, str] | None = None

    @model_validator(mode="after")
    def _at_most_one(self) -> CohortSpec:
        if self.customers is not None and self.header is not None:
            raise ValueError("a cohort matches by customers or by header, not both")
        return self

    @property
    def catch_all(self) -> bool:
        return self.customers is None and self.header is None


# --- per-route rules ---------------------------------------------------------------------------


class IdsSpec(Spec):
    """Where a route's records keep their ids, for the id map and record affinity."""

    resource: Name
    path: UrlPath  # template with {id}, e.g. /api/contacts/{id}
    response: JsonPath = "$.id"
    refs: dict[JsonPath, Name] = {}  # body fields (old contract) holding ids of other resources
    query: dict[str, Name] = {}  # query parameters (old names) holding ids, e.g. contact_id

    @model_validator(mode="after")
    def _has_id(self) -> IdsSpec:
        if "{id}" not in self.path:
            raise ValueError(f"an ids.path template contains {{id}}, got {self.path!r}")
        return self


class QueryRule(Spec):
    name: str
    values: dict[str, Scalar] = {}


class CollectionSpec(Spec):
    """Where a list answer keeps its records on each side (a bare JSON array needs nothing)."""

    old: JsonPath
    new: JsonPath


def _query_rules(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ({"name": v} if isinstance(v, str) else v) for k, v in value.items()}
    return value


class ConvertRule(Spec):
    """Normalizers applied to a value on its way to one platform (e.g. E.164 for new)."""

    to_new: Annotated[list[str], BeforeValidator(_normalizers)] | None = None
    to_old: Annotated[list[str], BeforeValidator(_normalizers)] | None = None


class ContractSpec(Spec):
    """How the new platform's API differs from the old contract that clients speak.

    Field paths are relative to one record; records are the body itself, each element of a
    top-level array, or each element at `collection`.
    """

    new_path: UrlPath | None = None
    query: Annotated[dict[str, QueryRule], BeforeValidator(_query_rules)] = {}
    collection: CollectionSpec | None = None
    envelope: dict[JsonPath, JsonPath] = {}
    fields: dict[JsonPath, JsonPath] = {}
    values: dict[JsonPath, dict[Any, Scalar]] = {}
    defaults: dict[JsonPath, Any] = {}
    new_defaults: dict[JsonPath, Any] = {}
    convert: dict[JsonPath, ConvertRule] = {}  # keyed by the OLD path, like values
    hook: str | None = None

    @model_validator(mode="after")
    def _hook_form(self) -> ContractSpec:
        if self.hook is not None and ":" not in self.hook:
            raise ValueError(f"a hook is 'package.module:function', got {self.hook!r}")
        return self


class CompareSpec(Spec):
    headers: list[HeaderName] = []
    ignore: list[JsonPath] = []
    normalize: dict[JsonPath, Annotated[list[str], BeforeValidator(_normalizers)]] = {}
    tolerance: dict[JsonPath, Annotated[float, Field(ge=0)]] = {}
    redact: list[JsonPath] = []
    list_keys: dict[JsonPath, str] = {}
    max_body: Size = 1024 * 1024
    noise_probe_percent: Percent = 0.0


class GuardSpec(Spec):
    window: Duration = 300.0
    interval: Duration = 10.0
    min_requests: Annotated[int, Field(ge=1)] = 200
    max_mismatch_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    max_error_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    max_latency_ratio: Annotated[float, Field(gt=0)] | None = None


class PlanStep(Spec):
    """One step of a phased plan: the weights (and shadow share) it sets, and how long it must
    hold before the next one."""

    weights: dict[str, Any] = {}  # checked like a route's weights
    shadow_percent: Percent | None = None
    hold: Duration = 0.0


class PlanSpec(Spec):
    auto: bool = False  # advance by itself once the gates have held
    step: Annotated[int, Field(ge=0)] = 0  # the step in force (written by cutover when it advances)
    steps: Annotated[list[PlanStep], Field(min_length=1)]

    @model_validator(mode="after")
    def _step_exists(self) -> PlanSpec:
        if self.step >= len(self.steps):
            raise ValueError(f"step {self.step} does not exist (the plan has {len(self.steps)})")
        return self


class RouteSpec(Spec):
    name: Name
    api: Name
    path: UrlPath
    methods: list[Method] = list(ALL_METHODS)
    weights: dict[str, Any] = {}  # checked by proxy.config.semantics against channels/cohorts
    shadow_percent: Percent = 0.0
    dual_write: bool = False
    without_customer: Side = "old"
    rollback: bool = False
    verify_after: Duration | None = None
    mirror_headers: dict[HeaderName, HeaderValue] = {}
    ids: IdsSpec | None = None
    contract: ContractSpec | None = None
    compare: CompareSpec = CompareSpec()
    guard: GuardSpec | None = None
    plan: PlanSpec | None = None


# --- top level ---------------------------------------------------------------------------------


class AdminSpec(Spec):
    listen: HostPort = "127.0.0.1:8081"
    token_env: str | None = "CUTOVER_ADMIN_TOKEN"  # noqa: S105 - the variable's name, not a token
    insecure_no_auth: bool = False  # only honoured on a loopback listener


class DiffLogSpec(Spec):
    dir: str = "./diffs"
    max_size: Size = 100 * 1000**2
    keep: Annotated[int, Field(ge=1, le=10_000)] = 10


class MqttTls(Spec):
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


class MqttSpec(Spec):
    url: Annotated[str, AfterValidator(_check_mqtt_url)] = "mqtt://127.0.0.1:1883"
    key_env: str = "CUTOVER_CONTROL_KEY"
    username_env: str | None = None
    password_env: str | None = None
    tls: MqttTls | None = None
    keepalive: Duration = 15.0


class OutboxSpec(Spec):
    """How the outbox worker treats secondary writes (docs/dual-write.md)."""

    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 15
    backoff_min: Duration = 0.5
    backoff_max: Duration = 60.0
    concurrency: Annotated[int, Field(ge=1, le=1000)] = 16
    intent_timeout: Duration = 60.0
    max_body: Size = 1024 * 1024
    recover: Literal["resend", "dead-letter"] = "resend"
    partitions: Annotated[int, Field(ge=1, le=256)] = 8


class RollbackScope(Spec):
    """One rollback flag: every field left out means 'all'. `{}` is the global brake."""

    route: Name | None = None
    channel: Name | None = None
    cohort: Name | None = None
    reason: str | None = None
    by: str | None = None
    at: str | None = None

    @property
    def key(self) -> tuple[str | None, str | None, str | None]:
        return (self.route, self.channel, self.cohort)


def _check_network(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(
            f"expected an IP address or network like 10.0.0.0/8 or ::1, got {value!r}"
        ) from None
    return value


class ServerSpec(Spec):
    """The data path's listener: its limits and deadlines (THREAT_MODEL.md says why each)."""

    max_body: Size = 100 * 1024**2
    max_header_bytes: Annotated[Size, Field(ge=1024, le=1024**2)] = 32 * 1024
    max_headers: Annotated[int, Field(ge=8, le=10_000)] = 100
    max_connections: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    max_in_flight: Annotated[int, Field(ge=1, le=1_000_000)] = 2048
    header_timeout: Duration = 10.0
    body_timeout: Duration = 30.0
    keepalive_timeout: Duration = 60.0
    # peers whose X-Forwarded-For (and -Proto, -Host) cutover extends rather than replaces
    trusted_proxies: list[Annotated[str, AfterValidator(_check_network)]] = []


class ConfigSpec(Spec):
    version: Literal[1]
    migration: Name
    listen: HostPort = "0.0.0.0:8080"
    server: ServerSpec = ServerSpec()
    admin: AdminSpec = AdminSpec()
    store: Annotated[str, AfterValidator(_check_store)] = "sqlite:///./state/cutover.db"
    state_dir: str = "./state"  # small local state (the fleet's rollback flags, plan progress)
    diff_log: DiffLogSpec = DiffLogSpec()
    outbox: OutboxSpec = OutboxSpec()
    mqtt: MqttSpec | None = None
    platforms: PlatformsSpec
    channels: Annotated[list[Name], Field(min_length=1)]
    identify: IdentifySpec = IdentifySpec()
    cohorts: list[CohortSpec] = []
    routes: list[RouteSpec]
    rollback: Annotated[list[RollbackScope], BeforeValidator(_rollback)] = []
