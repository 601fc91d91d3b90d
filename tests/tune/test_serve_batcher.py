"""The dynamic batcher on its own: concurrent requests share model calls, each gets its own
results in order, no call exceeds max_batch, and a failing call fails only its own requests."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tune.serve_batcher import Batcher, BatcherClosed


class Recorder:
    """A fake model: doubles numbers, remembers every batch it was called with."""

    def __init__(self, fail_on: int | None = None, delay_s: float = 0.0) -> None:
        self.calls: list[list[int]] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on
        self.delay_s = delay_s

    def __call__(self, items: list[int]) -> list[int]:
        import time

        self.calls.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"cannot take {self.fail_on}")
        return [2 * x for x in items]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_keep_their_order():
    model = Recorder()
    sizes: list[int] = []

    async def main():
        batcher = Batcher(model, max_batch=32, max_wait_ms=50, on_batch=sizes.append)
        batcher.start()
        requests = [list(range(10 * r, 10 * r + 3)) for r in range(6)]
        answers = await asyncio.gather(*(batcher.submit(req) for req in requests))
        await batcher.close()
        return requests, answers

    requests, answers = run(main())
    for req, ans in zip(requests, answers, strict=True):
        assert ans == [2 * x for x in req]
    assert len(model.calls) == 1 and sorted(model.calls[0]) == sorted(sum(requests, []))
    assert sizes == [18]
    assert model.threads and threading.main_thread().name not in model.threads


def test_no_batch_exceeds_max_batch_and_big_requests_are_cut():
    model = Recorder()

    async def main():
        batcher = Batcher(model, max_batch=4, max_wait_ms=20)
        batcher.start()
        answers = await asyncio.gather(
            batcher.submit(list(range(10))), batcher.submit([100, 101, 102])
        )
        await batcher.close()
        return answers

    big, small = run(main())
    assert big == [2 * x for x in range(10)] and small == [200, 202, 204]
    assert max(len(c) for c in model.calls) <= 4
    assert sorted(x for c in model.calls for x in c) == sorted([*range(10), 100, 101, 102])


def test_max_wait_zero_runs_what_is_there_without_waiting():
    model = Recorder()

    async def main():
        batcher = Batcher(model, max_batch=8, max_wait_ms=0)
        batcher.start()
        first = await batcher.submit([1])
        second = await batcher.submit([2, 3])
        await batcher.close()
        return first, second

    assert run(main()) == ([2], [4, 6])
    assert model.calls == [[1], [2, 3]]


def test_a_failing_batch_fails_only_its_own_requests():
    model = Recorder(fail_on=13, delay_s=0.05)

    async def main():
        batcher = Batcher(model, max_batch=2, max_wait_ms=30)
        batcher.start()
        results = await asyncio.gather(
            batcher.submit([1, 2]),
            batcher.submit([13]),
            batcher.submit([4, 5]),
            return_exceptions=True,
        )
        after = await batcher.submit([6])  # the worker survives
        await batcher.close()
        return results, after

    (ok1, bad, ok2), after = run(main())
    assert ok1 == [2, 4] and ok2 == [8, 10] and after == [12]
    assert isinstance(bad, ValueError) and "13" in str(bad)


def test_close_drains_waiting_requests_then_refuses_new_ones():
    model = Recorder(delay_s=0.05)

    async def main():
        batcher = Batcher(model, max_batch=2, max_wait_ms=1)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit([i])) for i in range(5)]
        await asyncio.sleep(0)  # let them queue
        await batcher.close()
        assert sorted(x for c in model.calls for x in c) == [0, 1, 2, 3, 4]  # all ran first
        with pytest.raises(BatcherClosed):
            await batcher.submit([9])
        return await asyncio.wait_for(asyncio.gather(*pending), 1)

    assert run(main()) == [[0], [2], [4], [6], [8]]


def test_max_batch_must_be_positive():
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(Recorder(), max_batch=0)
