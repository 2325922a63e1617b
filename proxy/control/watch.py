"""Reloading routes.yaml when it changes on disk.

Polling the file's stat once a second is enough for a human edit and works on every filesystem
(bind mounts and network volumes included, where inotify is unreliable). A change is read only
once the file has stopped changing for one poll, so an editor's half-written save is not taken
for a broken configuration.
"""

from __future__ import annotations

import asyncio

from proxy.control.live import Control

POLL_INTERVAL = 0.5  # with --workers N, how soon the others see a change worker 0 wrote
SETTLE = 0.2


async def watch(control: Control, interval: float = POLL_INTERVAL) -> None:
    while True:
        await asyncio.sleep(interval)
        if control.file_changed():
            await asyncio.sleep(SETTLE)
            while control.file_changed():  # noqa: ASYNC110 - polling a file: there is no event
                await asyncio.sleep(SETTLE)
            control.reload("file changed")
