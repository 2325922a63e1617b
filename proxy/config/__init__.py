"""routes.yaml: its shape (spec), its cross-checks (semantics), loading, and the running table."""

from proxy.config.load import ConfigError, ConfigIssue, content_version, load_config, parse_config
from proxy.config.table import RollbackKey, Route, RouteTable, Upstream

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "RollbackKey",
    "Route",
    "RouteTable",
    "Upstream",
    "content_version",
    "load_config",
    "parse_config",
]
