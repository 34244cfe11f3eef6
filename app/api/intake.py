"""Group commit for submissions.

Every submission costs the same fixed work (a write transaction, a history query, a quota query, a look at
the live nodes) whatever else is being submitted. Requests that arrive while one batch is being written
wait for the next batch, which takes them all: one transaction for the lot. Nothing waits on a timer: a
lone submission is written at once, and the batch size follows the load by itself."""

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from starlette.concurrency import run_in_threadpool

Item = TypeVar("Item")
Result = TypeVar("Result")

# Large enough to absorb any burst from a lab's worth of clients, small enough to bound a transaction.
MAX_BATCH = 256


class GroupCommit(Generic[Item, Result]):
    """`await group(item)` returns what `write(batch)` gave for that item, or raises the exception it gave
    for it (`write` returns one result or exception per item, in order). Runs `write` in the thread pool,
    one batch at a time; used from one event loop only."""

    def __init__(self, write: Callable[[list[Item]], Sequence[Result | Exception]]) -> None:
        self._write = write
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def __call__(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                try:
                    results = await run_in_threadpool(self._write, [item for item, _ in batch])
                except Exception as exc:  # noqa: BLE001 - the whole batch failed (database down): each caller hears why
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # its client went away
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._writer = None
