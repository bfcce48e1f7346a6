"""Where batch jobs run: local worker processes (default) or Ray tasks (optional extra).

Both take a list of job dicts and a job function `fn(job_dict, progress) -> result dict` (picklable:
a module-level function), call `on_event(kind, index, slot, data)` as jobs start ("start"), make
progress ("progress", data=(done, total)) and finish ("done", data=result), and return the results
by job index. A job that crashes its worker (segfault, kill -9, out-of-memory kill) or runs past its
`timeout_s` becomes a failed result; the other jobs go on.

LocalExecutor runs each job in its own spawned process (at most `workers` at a time), so a crash is
isolated to one job and a hung job can be killed. Children die with the batch process (Linux
PR_SET_PDEATHSIG), so a killed batch leaves no orphan writing into an output.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import threading
import time
from contextlib import contextmanager
from multiprocessing import resource_tracker
from multiprocessing.connection import wait

from lowbit.errors import LowbitError

_POLL_S = 0.2


def failed(error: str, seconds: float = 0.0) -> dict:
    return {"status": "failed", "error": error, "seconds": round(seconds, 3)}


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the ppid check in _Progress covers it
        pass


class _Progress:
    """Child-side progress callback: sends (done, total) to the parent at most ~10 times a second."""

    def __init__(self, conn, parent: int):
        self.conn, self.parent, self.last = conn, parent, 0.0

    def __call__(self, done=0, total=None, *_a, **_k):
        if os.getppid() != self.parent:  # the batch died: stop writing
            os._exit(3)
        now = time.monotonic()
        if now - self.last >= 0.1 or (total and done >= total):
            self.last = now
            try:
                self.conn.send(("progress", (done, total)))
            except OSError:
                os._exit(3)


def _child_main(conn, fn, job: dict, parent: int) -> None:
    _die_with_parent()
    # Ctrl-C reaches the whole process group: the batch process alone handles it (it stops the
    # workers and writes the report); a stopped conversion resumes on the next run
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if os.getppid() != parent:
        os._exit(3)
    t0 = time.monotonic()
    try:
        result = fn(job, _Progress(conn, parent))
    except Exception as e:  # noqa: BLE001 - the job's own bug: report it, keep the batch going
        import traceback

        traceback.print_exc()
        result = failed(f"internal error {type(e).__name__}: {e} (a lowbit bug: please report it)",
                        time.monotonic() - t0)
    conn.send(("result", result))
    conn.close()


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the worker process was killed by {name}"
    return f"the worker process exited with code {code} before reporting a result"


@contextmanager
def _sigint_flag():
    """While jobs run, Ctrl-C only sets a flag that the scheduling loop checks: a KeyboardInterrupt
    raised at a random point (say, inside a finalizer, where Python swallows it) could be lost."""
    flag: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    prev = signal.signal(signal.SIGINT, lambda signum, _frame: flag.append(signum))
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, prev)


class LocalExecutor:
    """N spawned worker processes on this machine, one process per job."""

    name = "local"

    def __init__(self, workers: int = 1):
        if workers < 1:
            raise LowbitError(f"--workers must be >= 1, found {workers}")
        self.workers = workers
        self.ctx = mp.get_context("spawn")

    def _start(self, fn, job: dict, index: int, slot: int) -> dict:
        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_child_main, args=(send, fn, job, os.getpid()),
                                name=f"lowbit-batch-{slot}", daemon=True)
        # the child starts with SIGINT blocked (the mask survives exec) until it ignores it, so a
        # Ctrl-C during its start-up cannot print a traceback from inside an import
        # (start the resource tracker first: its launch unblocks SIGINT on its way out)
        resource_tracker.ensure_running()
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        send.close()
        limit = job.get("timeout_s")
        return {"proc": proc, "conn": recv, "index": index, "slot": slot, "t0": time.monotonic(),
                "deadline": time.monotonic() + limit if limit else None, "result": None}

    @staticmethod
    def _drain(r: dict, on_event) -> None:
        try:
            while r["conn"].poll():
                kind, data = r["conn"].recv()
                if kind == "progress":
                    on_event("progress", r["index"], r["slot"], data)
                elif kind == "result":
                    r["result"] = data
        except (EOFError, OSError, ValueError, TypeError, AttributeError, ImportError):
            pass  # a child that died mid-message: its exit code decides

    def _finish(self, r: dict, on_event, results: dict, timed_out: bool = False) -> None:
        r["proc"].join(5)
        if r["proc"].is_alive():  # a child that sent its result but does not exit
            r["proc"].kill()
            r["proc"].join()
        elapsed = time.monotonic() - r["t0"]
        res = r["result"]
        if timed_out:
            res = failed(f"timed out after {elapsed:.0f}s (timeout_s); raise it or check the source", elapsed)
        elif res is None:
            res = failed(_exit_reason(r["proc"].exitcode) + "; see the log, then re-run the batch "
                         "(the conversion resumes)", elapsed)
        r["conn"].close()
        results[r["index"]] = res
        on_event("done", r["index"], r["slot"], res)

    def _poll(self, running: dict, on_event, results: dict) -> None:
        conns = [r["conn"] for r in running.values()] + [r["proc"].sentinel for r in running.values()]
        wait(conns, timeout=_POLL_S)
        now = time.monotonic()
        for slot, r in list(running.items()):
            self._drain(r, on_event)
            timed_out = r["deadline"] is not None and now > r["deadline"] and r["result"] is None
            if timed_out:
                r["proc"].kill()
            if timed_out or not r["proc"].is_alive() or r["result"] is not None:
                if not timed_out:
                    self._drain(r, on_event)
                self._finish(r, on_event, results, timed_out)
                del running[slot]

    def run(self, jobs: list[dict], fn, on_event) -> dict[int, dict]:
        pending = list(range(len(jobs)))[::-1]
        running: dict[int, dict] = {}
        results: dict[int, dict] = {}
        with _sigint_flag() as interrupted:
            try:
                while pending or running:
                    if interrupted:
                        raise KeyboardInterrupt
                    for slot in range(self.workers):
                        if pending and slot not in running:
                            i = pending.pop()
                            running[slot] = self._start(fn, jobs[i], i, slot)
                            on_event("start", i, slot, jobs[i])
                    self._poll(running, on_event, results)
            finally:
                for r in running.values():
                    r["proc"].kill()
                    r["proc"].join()
        return results


def _ray_call(fn, job: dict) -> dict:
    try:
        return fn(job, None)
    except BaseException as e:  # noqa: BLE001 - the job's own failure, reported, never re-raised
        return failed(f"internal error {type(e).__name__}: {e}")


class RayExecutor:
    """The same jobs as Ray tasks on a cluster (`ray.init(address=...)`); sources and output_root
    must be on storage every node sees. No per-byte progress: start and done events only."""

    name = "ray"

    def __init__(self, workers: int = 1, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise LowbitError("--executor ray needs Ray: pip install 'lowbit[ray]'") from None
        self.ray, self.workers, self.address = ray, max(1, workers), address

    def _init(self) -> None:
        if not self.ray.is_initialized():
            try:
                self.ray.init(address=self.address, ignore_reinit_error=True, log_to_driver=False,
                              include_dashboard=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise LowbitError(f"cannot reach the Ray cluster at {self.address or 'local'} ({e}); "
                                  "check --ray-address (e.g. ray://host:10001 or auto)") from None

    def run(self, jobs: list[dict], fn, on_event) -> dict[int, dict]:
        self._init()
        task = self.ray.remote(num_cpus=1, max_retries=0)(_ray_call)
        pending = list(range(len(jobs)))[::-1]
        inflight: dict = {}
        results: dict[int, dict] = {}
        with _sigint_flag() as interrupted:
            while pending or inflight:
                if interrupted:
                    for ref in inflight:
                        self.ray.cancel(ref, force=True)
                    raise KeyboardInterrupt
                self._step(task, fn, jobs, pending, inflight, results, on_event)
        return results

    def _step(self, task, fn, jobs, pending, inflight, results, on_event) -> None:
        """Submit up to `workers` tasks, collect what finished within one poll, expire timeouts."""
        while pending and len(inflight) < self.workers:
            i = pending.pop()
            slot = min(set(range(self.workers)) - {s for _, s, _ in inflight.values()})
            inflight[task.remote(fn, jobs[i])] = (i, slot, time.monotonic())
            on_event("start", i, slot, jobs[i])
        done, _ = self.ray.wait(list(inflight), num_returns=1, timeout=_POLL_S)
        for ref in done:
            i, slot, t0 = inflight.pop(ref)
            try:
                res = self.ray.get(ref)
            except Exception as e:  # worker crashed / node lost
                res = failed(f"the Ray task failed: {type(e).__name__}: {str(e).splitlines()[0]}",
                             time.monotonic() - t0)
            results[i] = res
            on_event("done", i, slot, res)
        self._expire(inflight, jobs, results, on_event)

    def _expire(self, inflight: dict, jobs, results, on_event) -> None:
        now = time.monotonic()
        for ref, (i, slot, t0) in list(inflight.items()):
            limit = jobs[i].get("timeout_s")
            if limit and now - t0 > limit:
                self.ray.cancel(ref, force=True)
                del inflight[ref]
                results[i] = failed(f"timed out after {now - t0:.0f}s (timeout_s); raise it", now - t0)
                on_event("done", i, slot, results[i])


def make_executor(kind: str, workers: int, ray_address: str | None = None):
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(workers, ray_address)
    raise LowbitError(f"unknown executor {kind!r}; choose local or ray")
