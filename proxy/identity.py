"""Who is asking: a request's channel, customer key and cohort.

Pure: takes the request's parts as plain values, so routing can be tested without a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl

from proxy.config.table import IMPLICIT_COHORT, RouteTable

MAX_CUSTOMER_KEY = 128


class BadIdentity(ValueError):
    """A customer key cutover refuses to bucket (too long, control characters)."""


@dataclass(slots=True)  # not frozen: made per request (a frozen dataclass's __init__ is ~4x slower)
class Identity:
    channel: str
    customer: str | None
    cohort: str


def identify(
    table: RouteTable, headers: Mapping[str, str], path: str, query_string: str
) -> Identity:
    """Channel from its header (unknown -> the default), customer from the first source that has
    one, cohort from the first rule that matches. `headers` must be case-insensitive."""
    channel = headers.get(table.channel_header)
    if channel is not None:
        channel = channel.strip().lower()
        if channel not in table.channel_set:
            channel = table.default_channel
    else:
        channel = table.default_channel

    customer = _customer(table, headers, path, query_string)
    return Identity(channel=channel, customer=customer, cohort=_cohort(table, headers, customer))


def _customer(
    table: RouteTable, headers: Mapping[str, str], path: str, query_string: str
) -> str | None:
    for rule in table.customer_rules:
        value: str | None
        if rule.header is not None:
            value = headers.get(rule.header)
        elif rule.query is not None:
            value = _query_value(query_string, rule.query) if query_string else None
        else:
            value = rule.path_match(path)
        if value is not None:
            value = value.strip()
            if not value:
                continue
            if len(value) > MAX_CUSTOMER_KEY or not value.isprintable():
                raise BadIdentity("the customer key is longer than 128 characters or not printable")
            return value
    return None


def _query_value(query_string: str, name: str) -> str | None:
    for key, value in parse_qsl(query_string, keep_blank_values=False):
        if key == name:
            return value
    return None


def _cohort(table: RouteTable, headers: Mapping[str, str], customer: str | None) -> str:
    for rule in table.cohorts:
        if rule.customers is not None:
            if customer is not None and customer in rule.customers:
                return rule.name
        elif rule.header is not None:
            if all(headers.get(name) == value for name, value in rule.header):
                return rule.name
        else:
            return rule.name
    return IMPLICIT_COHORT
