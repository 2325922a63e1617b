"""Identity: channel, customer key and cohort from a request's parts."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.identity import BadIdentity, identify
from tests.configs import base_doc, load

TABLE = load(base_doc())


def ident(headers: dict[str, str], path: str = "/api/contacts", query: str = "", table=TABLE):
    return identify(table, CIMultiDict(headers), path, query)


@pytest.mark.parametrize(
    ("header", "channel"),
    [("chat", "chat"), ("CHAT", "chat"), (" WhatsApp ", "whatsapp"), ("fax", "web"), (None, "web")],
)
def test_channel_from_header_unknown_is_default(header, channel):
    headers = {"X-Channel": header} if header is not None else {}
    assert ident(headers).channel == channel


def test_cohorts_first_match_wins():
    assert ident({"X-Customer-Id": "C-1001"}).cohort == "pilot"
    assert ident({"X-Customer-Id": "C-1001", "X-Segment": "business"}).cohort == "pilot"
    assert ident({"X-Customer-Id": "C-9", "X-Segment": "business"}).cohort == "business"
    assert ident({"X-Customer-Id": "C-9", "X-Segment": "Business"}).cohort == "everyone"
    assert ident({}).cohort == "everyone"


def test_implicit_catch_all_cohort():
    doc = base_doc()
    doc["cohorts"] = [{"name": "pilot", "customers": ["C-1"]}]
    table = load(doc)
    assert table.cohort_names == ("pilot", "everyone")
    assert ident({"X-Customer-Id": "C-2"}, table=table).cohort == "everyone"


def test_customer_from_header_query_or_path_in_order():
    doc = base_doc()
    doc["identify"]["customer"] = [
        {"header": "X-Customer-Id"},
        {"query": "customer"},
        {"path": "/api/customers/{customer}"},
    ]
    table = load(doc)
    assert ident({"X-Customer-Id": "C-1"}, query="customer=C-2", table=table).customer == "C-1"
    assert ident({}, query="a=1&customer=C-2", table=table).customer == "C-2"
    assert ident({}, path="/api/customers/C-3/tickets", table=table).customer == "C-3"
    assert ident({}, path="/api/customers/C%2D4", table=table).customer == "C-4"
    assert ident({}, path="/api/customersX/C-3", table=table).customer is None
    assert ident({"X-Customer-Id": "  "}, table=table).customer is None


@pytest.mark.parametrize("key", ["C" * 129, "C-1\x00", "C-\n1"])
def test_unusable_customer_keys_are_refused(key):
    with pytest.raises(BadIdentity):
        identify(TABLE, {"X-Customer-Id": key}, "/api/contacts", "")
