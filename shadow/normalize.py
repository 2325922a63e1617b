"""Value normalizers for `compare.normalize`: make two spellings of the same value equal.

Each normalizer is a plain function of one JSON value. One that does not apply to a value (`lower`
on a number, `iso8601` on something that is not a date) returns it unchanged and never raises:
a normalizer must not turn an odd answer into a crash of the comparison. `compile_normalizers`
turns a rule's list of names into one callable, once, at config load.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from typing import Any

import orjson

Normalizer = Callable[[Any], Any]

_NOT_DIGIT = re.compile(r"\D+")
_COUNTRY_CODE = re.compile(r"\+?([1-9][0-9]{0,2})")
_EXTENSION = re.compile(r"(?i)\s*(?:;\s*ext=|ext\.?|extension|x|#)\s*\d{1,6}\s*$")
_TRUNK_IN_BRACKETS = re.compile(r"\(\s*0\s*\)")
_PHONE_CHARS = re.compile(r"^[0-9+()\-./\s]*$")
_INT = re.compile(r"\s*[+-]?[0-9]+\s*")
_FLOAT = re.compile(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")
_DATE_ONLY = re.compile(r"[0-9]{4}-?(?:[0-9]{2}-?[0-9]{2}|W[0-9]{2}-?[0-9]|[0-9]{3})")
_MAX_TEXT = 256  # dates, numbers and phone numbers are short; don't parse a novel


def lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def trim(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


def collapse_space(value: Any) -> Any:
    """Runs of whitespace become one space, and the ends are trimmed."""
    return " ".join(value.split()) if isinstance(value, str) else value


def digits(value: Any) -> Any:
    return _NOT_DIGIT.sub("", value) if isinstance(value, str) else value


def e164(value: Any, country: str | None = None) -> Any:
    """A phone number as E.164 (`+442079460018`), as far as the text allows without a number plan.

    `+CC…` and `00CC…` are international. A national number takes the default country code, if
    the rule gives one, and loses its trunk prefix 0 (except Italy's, which is dialled). Without
    a default, a national number is left as its digits, leading 0 included. Text with letters
    other than an extension is not a phone number and is left alone.
    """
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        return value
    text = value.strip()
    if text.lower().startswith("tel:"):
        text = text[4:]
    text = _EXTENSION.sub("", text)
    if not _PHONE_CHARS.match(text):
        return value
    international = text.lstrip().startswith("+")
    number = _NOT_DIGIT.sub("", _TRUNK_IN_BRACKETS.sub("", text) if international else text)
    if not number:
        return value
    if international:
        return "+" + number
    if number.startswith("00"):
        return "+" + number[2:] if len(number) > 2 else value
    if country is None:
        return number
    if number.strip("0") == "":
        return value  # a bare trunk prefix is not a number in any country
    if country == "1":
        if number.startswith("011"):
            return "+" + number[3:]
        if len(number) == 11 and number.startswith("1"):
            return "+" + number
        return "+1" + number
    if country == "39":
        return "+39" + number
    return "+" + country + (number[1:] if number.startswith("0") else number)


def iso8601(value: Any) -> Any:
    """An ISO-8601 date-time as the same instant in UTC (`2026-11-23T09:00:00Z`).

    A date-time without an offset is taken as UTC; a date alone stays a date (`2026-11-23`).
    Microseconds are kept when there are any.
    """
    if not isinstance(value, str) or len(value) > 64:
        return value
    text = value.strip()
    if not text[:1].isdigit():
        return value
    try:
        if _DATE_ONLY.fullmatch(text):
            return date.fromisoformat(text).isoformat()
        moment = datetime.fromisoformat(text)
        naive = moment.tzinfo is None
        moment = moment.replace(tzinfo=UTC) if naive else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return value
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    return f"{text}.{moment.microsecond:06d}Z" if moment.microsecond else f"{text}Z"


def _sort_key(value: Any) -> bytes:
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return repr(value).encode()


def sort(value: Any) -> Any:
    """A list in a canonical order: numbers by value, strings by text, anything else (and mixed
    lists) by the JSON text of each element, so that both sides sort the same way."""
    if not isinstance(value, list) or len(value) < 2:
        return value
    if all(isinstance(item, int | float) and not isinstance(item, bool) for item in value):
        return sorted(value)
    if all(isinstance(item, str) for item in value):
        return sorted(value)
    return sorted(value, key=_sort_key)


def number(value: Any) -> Any:
    """A numeric string as a JSON number (`"12.50"` -> 12.5, `"7"` -> 7); others unchanged."""
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        return value
    try:
        if _INT.fullmatch(value):
            return int(value)
        if _FLOAT.fullmatch(value):
            result = float(value)
            return result if result not in {float("inf"), float("-inf")} else value
    except ValueError:
        return value
    return value


_SIMPLE: dict[str, Normalizer] = {
    "lower": lower,
    "upper": upper,
    "trim": trim,
    "collapse_space": collapse_space,
    "digits": digits,
    "iso8601": iso8601,
    "sort": sort,
    "number": number,
}


def _one(name: str) -> Normalizer:
    base, _, argument = name.partition(":")
    if base == "e164":
        if not argument:
            return e164
        match = _COUNTRY_CODE.fullmatch(argument.strip())
        if match is None:
            raise ValueError(f"e164 takes a country calling code like e164:44, got {name!r}")
        country = match.group(1)
        return lambda value: e164(value, country)
    if base not in _SIMPLE:
        known = ", ".join(sorted([*_SIMPLE, "e164"]))
        raise ValueError(f"unknown normalizer {name!r} (known: {known})")
    if argument:
        raise ValueError(f"normalizer {base!r} takes no argument, got {name!r}")
    return _SIMPLE[base]


def _safe(chain: tuple[Normalizer, ...]) -> Normalizer:
    def normalize(value: Any) -> Any:
        original = value
        try:
            for step in chain:
                value = step(value)
        except Exception:  # a normalizer never fails a comparison: keep the value as it was
            return original
        return value

    return normalize


def compile_normalizers(names: str | Sequence[str]) -> Normalizer:
    """One callable applying the named normalizers in order; ValueError for an unknown name."""
    listed = [names] if isinstance(names, str) else list(names)
    if not listed:
        raise ValueError("a normalize rule names at least one normalizer")
    chain = tuple(_one(name) for name in listed)
    return _safe(chain)
