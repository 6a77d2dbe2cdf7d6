"""A small pool of worker processes that runs calls under a wall-clock limit each.

Why: math-verify guards its sympy calls with ``signal.alarm``, which only works in the main thread and
cannot stop a C-level computation such as a huge integer power. A call that overruns its limit is
given up (its result is ``default``) and the pool is killed and restarted, so one pathological answer
can never hang training. The workers are spawned (forking a process that holds CUDA is unsafe), so a
script that grades at import time must guard its entry point with ``if __name__ == "__main__":``.

Every call's clock starts when a worker actually starts it (workers announce starts on a queue), so a
whole batch can be submitted at once while each call still gets its full limit.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..formatting import number

logger = logging.getLogger(__name__)

MAX_WORKERS = min(2, os.cpu_count() or 1)
"""Worker processes. Small on purpose: grading is cheap next to generation."""

WORKER_STARTUP_LIMIT = 120.0
"""Seconds without any call starting or finishing after which the workers are declared broken."""

_POLL_INTERVAL = 0.05  # how often the loop looks for newly started calls (seconds)

MAIN_GUARD_HINT = (
    "They are spawned processes, which re-import the main script: a script that grades math must guard "
    "its entry point with `if __name__ == '__main__':`."
)

_started_queue: Any = None  # in a worker: the pool's "call started" channel, set by the initializer


def _init_worker(started_queue: Any, initializer: Callable[[], None] | None) -> None:
    global _started_queue
    _started_queue = started_queue
    if initializer is not None:
        initializer()  # e.g. import math-verify, so no call pays for it inside its time limit


def _run_task(task_id: int, function: Callable[..., Any], args: tuple) -> Any:
    _started_queue.put(task_id)  # synchronous pipe write: visible even if the call then hogs the GIL
    return function(*args)


class _Pool:
    """The executor and the channel on which its workers announce each start."""

    def __init__(self, max_workers: int, initializer: Callable[[], None] | None) -> None:
        context = multiprocessing.get_context("spawn")
        self.initializer = initializer
        self.started_queue = context.SimpleQueue()
        self.executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=max_workers, mp_context=context, initializer=_init_worker,
            initargs=(self.started_queue, initializer))

    def drain_started(self) -> list[int]:
        started = []
        while not self.started_queue.empty():
            started.append(self.started_queue.get())
        return started

    def kill(self) -> None:
        """Stop every worker now, hung or not (no public way before Python 3.14), and release the executor."""
        processes = list((getattr(self.executor, "_processes", None) or {}).values())
        for process in processes:
            process.terminate()  # SIGTERM's default action ends even a C-level sympy/bigint loop
        self.executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=2.0)
            if process.is_alive():
                process.kill()
                process.join(timeout=2.0)
        self.started_queue.close()


_pool: _Pool | None = None
_pool_lock = threading.Lock()  # one batch at a time uses the pool; also guards creating/killing it
_task_ids = itertools.count()  # unique across pools and batches, so a stale "started" is never misread


def _current_pool(initializer: Callable[[], None] | None) -> _Pool:
    global _pool
    if _pool is not None and (getattr(_pool.executor, "_broken", False) or _pool.initializer is not initializer):
        _discard_pool()  # a worker died between batches, or the workers were set up for something else
    if _pool is None:
        _pool = _Pool(MAX_WORKERS, initializer)
    return _pool


def _discard_pool() -> None:
    global _pool
    if _pool is not None:
        _pool.kill()
        _pool = None


def shutdown_pool() -> None:
    """Stop the workers (a later call starts fresh ones)."""
    with _pool_lock:
        _discard_pool()


def run_with_time_limit(function: Callable[..., Any], tasks: Sequence[tuple], timeout: float, default: Any,
                        initializer: Callable[[], None] | None = None,
                        describe: Callable[[tuple], str] = repr) -> list[Any]:
    """``[function(*task) for task in tasks]`` in the worker pool, each call under ``timeout`` seconds.

    `function` and `initializer` must be importable module-level functions (they are pickled by name).
    A call that runs past its limit, or whose worker dies, gives ``default``; the pool is then killed
    (its worker may be stuck in C code forever) and the calls that had not finished are resubmitted to
    a fresh pool. A call that raises gives ``default`` too (logged): the function is expected to catch
    its own errors.
    """
    with _pool_lock:
        try:
            return _run(function, list(tasks), timeout, default, initializer, describe)
        except BaseException:
            # Interrupted (Ctrl-C) or failed mid-batch: calls may still be running, possibly hung, with
            # no one watching their limit. The next batch starts on fresh workers.
            _discard_pool()
            raise


def _run(function, tasks, timeout, default, initializer, describe) -> list[Any]:
    results = [default] * len(tasks)
    remaining = list(range(len(tasks)))
    while remaining:
        pool = _current_pool(initializer)
        futures: dict[concurrent.futures.Future, int] = {}  # future -> task index
        task_of_id: dict[int, int] = {}  # task id (as announced by a starting worker) -> task index
        for i in remaining:
            task_id = next(_task_ids)
            task_of_id[task_id] = i
            futures[pool.executor.submit(_run_task, task_id, function, tasks[i])] = i
        started_at: dict[int, float] = {}  # task index -> when its call started
        finished: set[int] = set()
        failed: set[int] = set()  # timed out, or running when the pool broke
        pending = set(futures)
        last_progress = time.monotonic()
        while pending:
            now = time.monotonic()
            for task_id in pool.drain_started():
                if task_id in task_of_id:
                    started_at.setdefault(task_of_id[task_id], now)
                    last_progress = now
            running = [futures[f] for f in pending if futures[f] in started_at]
            overdue = [i for i in running if now - started_at[i] > timeout]
            if overdue:
                for i in overdue:
                    logger.warning("call timed out after %.1fs (gives %r): %.200s", timeout, default, describe(tasks[i]))
                failed.update(overdue)
                break
            if now - last_progress > max(WORKER_STARTUP_LIMIT, timeout):
                _discard_pool()
                raise RuntimeError(f"worker processes did not start a call in {number(WORKER_STARTUP_LIMIT, '.0f')}s. "
                                   + MAIN_GUARD_HINT)
            next_deadline = min((started_at[i] + timeout for i in running), default=now + _POLL_INTERVAL)
            wait_for = min(max(next_deadline - now, 0.0), _POLL_INTERVAL)
            done, pending = concurrent.futures.wait(pending, timeout=wait_for,
                                                    return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                i = futures[future]
                last_progress = time.monotonic()
                try:
                    results[i] = future.result()
                    finished.add(i)
                except BrokenProcessPool:
                    # A worker died (killed from outside, out of memory). What it was running is lost;
                    # what had not started yet is retried on a fresh pool.
                    if i in started_at:
                        logger.warning("worker died (gives %r): %.200s", default, describe(tasks[i]))
                        failed.add(i)
                except Exception:
                    logger.warning("call failed (gives %r): %.200s", default, describe(tasks[i]), exc_info=True)
                    finished.add(i)
        unfinished = [i for i in remaining if i not in finished and i not in failed]
        if failed or unfinished:
            _discard_pool()
        if unfinished and not failed and not finished:
            raise RuntimeError("worker processes died before finishing any call. " + MAIN_GUARD_HINT)
        remaining = unfinished
    return results
