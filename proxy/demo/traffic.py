"""Demo traffic: customers of the seeded platforms calling through cutover, as the agent desktop,
IVR, chatbot and web would. Used by `cutover demo` to make routing and diffs visible, and by
tests and benchmarks as a realistic mixed load."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from proxy.demo.platforms import Simulators


@dataclass(frozen=True, slots=True)
class Customer:
    key: str
    old_id: int
    channel: str
    segment: str


@dataclass
class TrafficStats:
    sent: int = 0
    by_platform: Counter[str] = field(default_factory=Counter)
    by_status: Counter[int] = field(default_factory=Counter)
    failures: int = 0

    def line(self) -> str:
        platforms = ", ".join(f"{k} {v}" for k, v in sorted(self.by_platform.items()))
        errors = sum(v for k, v in self.by_status.items() if k >= 500) + self.failures
        return f"{self.sent} requests ({platforms or 'none yet'}); errors {errors}"


def customers_of(sims: Simulators) -> list[Customer]:
    return [
        Customer(
            key=str(c["customer"]),
            old_id=int(c["id"]),
            channel=str(c.get("channel") or "web"),
            segment=str(c.get("segment") or "consumer"),
        )
        for c in sims.old_crm.contacts()
    ]


def headers_for(customer: Customer, channel: str | None = None) -> dict[str, str]:
    return {
        "X-Customer-Id": customer.key,
        "X-Channel": channel or customer.channel,
        "X-Segment": customer.segment,
    }


async def generate(
    base_url: str,
    customers: list[Customer],
    *,
    rate: float,
    stats: TrafficStats,
    stop: asyncio.Event,
    seed: int = 7,
) -> None:
    """Reads of contacts and tickets at `rate` requests/s until `stop` is set."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible load, not a secret
    interval = 1.0 / rate
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(base_url, timeout=timeout) as session:
        while not stop.is_set():
            customer = rng.choice(customers)
            path = rng.choice(
                [
                    f"/api/contacts/{customer.old_id}",
                    f"/api/contacts?customer={customer.key}",
                    f"/api/tickets?contact_id={customer.old_id}",
                ]
            )
            try:
                async with session.get(path, headers=headers_for(customer)) as response:
                    await response.read()
                    stats.by_platform[response.headers.get("X-Cutover-Platform", "-")] += 1
                    stats.by_status[response.status] += 1
            except (aiohttp.ClientError, TimeoutError):
                stats.failures += 1
            stats.sent += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
