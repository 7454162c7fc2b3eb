"""Executors: where the unfinished runs of a study train.

:func:`~flexmtl.runner.run_experiment` reuses a study's finished runs itself and hands the
unfinished ones to an executor, each as a :class:`Call` -- a top-level function and its
picklable arguments (:func:`~flexmtl.runner.train_run` with the experiment's name, method,
seed, config and run folder), named by a label for messages:

* ``local`` with ``jobs=1``: the runner's own loop, in this process, one run after the
  other (also under ``torchrun``, where every rank runs that loop and trains each run
  data-parallel). It never comes here.
* ``local`` with ``jobs=N``: N worker processes of the ``spawn`` start method (not
  ``fork``: torch holds threads), each training whole runs single-threaded
  (``torch.set_num_threads(1)`` unless the run's config sets ``threads``). Each worker
  imports the calling script, as ``spawn`` does: a script needs its
  ``if __name__ == "__main__":`` guard (a worker that fails to start says so).
* ``ray``: Ray tasks of one CPU each (and one GPU for a run on ``cuda``), on a running
  cluster (``address``, e.g. ``HOST:6379`` of a ``ray start --head``) or as ``ray.init()``
  finds one (``RAY_ADDRESS``, a cluster started on this machine, else a new local
  instance, shut down at the end). Workers on other machines write the run folders where
  this process reads them, so the run folder must be on a file system every node shares,
  at the same path, and every node needs flexmtl and the data.

``jobs`` left out: ``$FLEXMTL_JOBS`` where set (e.g. 1 on a shared machine, or in a test
suite), else the usable CPU cores (``local``) or the cluster's CPUs (``ray``).
Each executor keeps at most ``jobs`` runs in flight and hands out the next as one ends.
A run that raises surfaces here as :class:`~flexmtl.errors.RunFailedError`, naming the run
and carrying the worker's traceback text; runs not started yet are dropped and the running
ones finish (their results are kept: rerunning the command resumes the rest). Ctrl-C or
SIGTERM in this process stops the workers (a SIGTERM, or Ray's cancel, lets each trainer
release its run folder's lock) before it is raised on.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

import torch

from flexmtl.errors import ConfigError, FlexMTLError, RunFailedError, UnknownNameError
from flexmtl.training.threads import affinity_cores

__all__ = ["Executor", "EXECUTORS", "Call", "check_executor", "default_jobs", "usable_cores",
           "worker_count", "run_calls", "JOBS_VARIABLE"]

Executor = Literal["local", "ray"]
EXECUTORS: tuple[Executor, ...] = get_args(Executor)
#: the environment variable that sets the default ``jobs``
JOBS_VARIABLE = "FLEXMTL_JOBS"
#: how long stopped workers get to release their run folders before they are killed
STOP_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class Call:
    """One unit of work for a worker: ``fn(**kwargs)``, where ``fn`` is a top-level function
    (pickled by reference, so a worker imports it) and ``kwargs`` pickle. ``label`` names it
    in messages (``"soft seed 1 (n=50)"``); ``gpu``: Ray gives the task one GPU."""

    label: str
    fn: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    gpu: bool = False


@dataclass(frozen=True)
class Failure:
    """What a worker sends back for a call that raised: enough to name and explain it in
    this process even when the exception itself cannot be unpickled here."""

    error_type: str
    message: str
    traceback: str
    expected: bool  # a FlexMTLError or OSError (a one-line message); else a bug
    error: BaseException | None = None  # the exception, where it survives pickling
    #: the run that failed, where the call trained several (a batch): the exception's
    #: ``run_label``; None names the call
    run: str | None = None

    @classmethod
    def of(cls, exc: BaseException, text: str | None = None) -> Failure:
        text = text if text is not None else "".join(traceback.format_exception(exc))
        return cls(type(exc).__name__, str(exc), text,
                   isinstance(exc, (FlexMTLError, OSError)), _round_trip(exc),
                   getattr(exc, "run_label", None))


Outcome = tuple[bool, Any]  # (True, fn's return value) or (False, Failure)


def _round_trip(exc: BaseException) -> BaseException | None:
    """``exc`` when it pickles and unpickles (e.g. not an exception with a custom
    constructor), else None."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return None
    return exc


def execute(call: Call) -> Outcome:
    """Run ``call`` in a worker, single-threaded unless the run's config sets ``threads``
    (the :class:`~flexmtl.training.Trainer` applies it); an exception becomes a
    :class:`Failure`. Top-level: what every executor's workers call."""
    torch.set_num_threads(1)
    try:
        return True, call.fn(**call.kwargs)
    except Exception as exc:
        return False, Failure.of(exc)


# ---------------------------------------------------------------------- choosing


def check_executor(executor: object, jobs: object, address: object,
                   torchrun: bool = False) -> None:
    """Refuse bad executor settings before anything is written: an unknown executor (with
    close names), ``jobs`` that is not a whole number >= 1, an ``address`` for ``local``,
    a pool under ``torchrun``, or ``ray`` when it is not installed."""
    if executor not in EXECUTORS:
        raise UnknownNameError("executor", str(executor), EXECUTORS)
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int)):
        raise ConfigError(f"jobs must be a whole number (how many runs train at once), got "
                          f"{jobs!r}")
    if jobs is not None and jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    if jobs is None:
        default_jobs()  # a bad $FLEXMTL_JOBS is refused here, too
    if address is not None and executor != "ray":
        raise ConfigError(f"address {address!r} is the Ray cluster to connect to; it needs "
                          "executor='ray' (--executor ray)")
    if torchrun and (executor != "local" or (jobs or 1) > 1):
        raise ConfigError("under torchrun every process trains each run together "
                          "(data-parallel), one run after the other; leave out jobs and "
                          "executor (--jobs, --executor)")
    if executor == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError('executor="ray" needs Ray: pip install "flexmtl[ray]"')


def default_jobs() -> int | None:
    """``jobs`` when none is given: ``$FLEXMTL_JOBS`` (a whole number >= 1), or None where
    it is unset (the executor's own default)."""
    text = os.environ.get(JOBS_VARIABLE, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{JOBS_VARIABLE}={text!r} must be a whole number >= 1 (how many "
                          f"runs train at once), or unset for every usable core")
    return int(text)


def usable_cores() -> int:
    """The CPU cores this process may run on (:func:`~flexmtl.training.threads.affinity_cores`:
    its affinity where the OS tells it); not capped by ``OMP_NUM_THREADS``, which limits
    threads, not processes."""
    return affinity_cores()


def worker_count(jobs: int | None, runs: int) -> int:
    """How many runs a ``local`` executor trains at once: ``jobs`` (default:
    :func:`default_jobs`, else the usable cores), never more than there are ``runs``; 1
    means the in-process loop."""
    if jobs is None:
        jobs = default_jobs() or usable_cores()
    return max(1, min(jobs, runs))


# ---------------------------------------------------------------------- driving


class _Pool(Protocol):
    """Workers that each run one :class:`Call` at a time."""

    def room(self) -> bool: ...  # a worker is free for another call

    def busy(self) -> int: ...  # calls in flight

    def submit(self, call: Call) -> bool: ...  # False: no worker could take it after all

    def wait(self) -> list[tuple[Call, Outcome]]: ...  # at least one finished call

    def stop(self) -> None: ...  # interrupt the calls in flight

    def close(self) -> None: ...  # let the workers go


def run_calls(calls: Sequence[Call], on_done: Callable[[Call, Any], None],
              executor: Executor = "local", jobs: int | None = None,
              address: str | None = None, log: Callable[[str], None] = print) -> None:
    """Run ``calls`` on ``executor``, ``jobs`` at a time, calling ``on_done(call, result)``
    here as each ends (in the order they end). A failed call is logged at once; when the
    running ones have finished, :class:`RunFailedError` names it (and any other).
    ``jobs`` None: :func:`default_jobs`, else the usable cores (``local``) or the cluster's
    CPUs (``ray``); never more than there are calls."""
    if not calls:
        return
    pool = (_LocalPool(worker_count(jobs, len(calls))) if executor == "local"
            else _RayPool(jobs, address, len(calls), log))
    queue = deque(calls)
    failures: list[tuple[Call, Failure]] = []
    try:
        while queue or pool.busy():
            while queue and pool.room() and not failures:
                if not pool.submit(queue[0]):
                    continue
                queue.popleft()
            if not pool.busy():
                break
            for call, (ok, value) in pool.wait():
                if ok:
                    on_done(call, value)
                    continue
                failures.append((call, value))
                running = pool.busy()
                log(f"  {value.run or call.label}: failed ({value.error_type}: {value.message})"
                    + (f"; waiting for the {running} running run(s) to finish" if running
                       else ""))
    except BaseException:
        pool.stop()
        raise
    finally:
        pool.close()
    if failures:
        (call, failure), others = failures[0], [f.run or c.label for c, f in failures[1:]]
        raise RunFailedError(failure.run or call.label, failure.error_type, failure.message,
                             failure.traceback, failure.expected, failure.error, others,
                             not_started=len(queue))
    if queue:
        raise FlexMTLError(f"every worker process ended (stopped by a signal?) before "
                           f"{len(queue)} run(s) could start; rerun the same command to "
                           "resume")


# ---------------------------------------------------------------------- local pool


class WorkerStopped(BaseException):
    """Raised in a worker by SIGTERM or SIGINT, so that a trainer's ``finally`` releases its
    run folder's lock (a ``BaseException``: no ``except Exception`` swallows it)."""


def _on_stop_signal(signum: int, frame: object) -> None:
    # a second signal must not interrupt the cleanup: a handler that does nothing (not
    # SIG_IGN, which makes a signal already on its way raise OSError mid-cleanup)
    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) is _on_stop_signal:
            signal.signal(sig, _after_stop_signal)
    raise WorkerStopped


def _after_stop_signal(signum: int, frame: object) -> None:
    """SIGTERM and SIGINT once the worker is stopping: nothing more to do."""


def _stop_when_orphaned(parent: int) -> None:
    """Stop this worker (as by SIGTERM) once its parent is gone, e.g. killed by SIGKILL:
    a daemon thread that checks every second."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="flexmtl-orphan-watch", daemon=True).start()


def serve(conn: multiprocessing.connection.Connection, parent: int) -> None:
    """A local worker process: :func:`execute` each call the parent sends, one at a time,
    and send back its outcome, until the parent sends None or closes the pipe. SIGTERM and
    SIGINT (unless ignored, as in a background job) stop it: a call it was running is
    answered with a :class:`Failure` saying so."""
    signal.signal(signal.SIGTERM, _on_stop_signal)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_stop_signal)
    _stop_when_orphaned(parent)
    busy = False
    try:
        conn.send(READY)
        while (call := conn.recv()) is not None:
            busy = True
            outcome = execute(call)
            busy = False
            conn.send(outcome)
    except WorkerStopped:
        if busy:
            message = (f"its worker process {os.getpid()} was stopped by a signal; rerun the "
                       "same command to resume it")
            try:
                conn.send((False, Failure("WorkerStopped", message, message, True)))
            except OSError:  # the parent is gone
                pass
    except (EOFError, BrokenPipeError):  # the parent is gone
        pass


#: what a worker process sends once it has started
READY = "ready"


class _Worker:
    """One worker process and the pipe to it; ``call``: what it trains now."""

    def __init__(self, context: Any):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=serve, args=(child, os.getpid()),
                                       name="flexmtl-worker")
        self.process.start()
        child.close()
        self.call: Call | None = None
        self.alive = True

    def wait_ready(self) -> None:
        """Wait until the process has started; a :class:`ConfigError` when it died first
        (typically a script without a main guard, which the worker imports and runs)."""
        multiprocessing.connection.wait([self.conn, self.process.sentinel])
        try:
            if self.conn.poll() and self.conn.recv() == READY:
                return
        except (EOFError, OSError):
            pass
        self.process.join()
        self.alive = False
        raise ConfigError(
            f"a worker process could not start (exit status {self.process.exitcode}; its "
            "error is printed above). A script that trains with jobs > 1 must keep its "
            "top-level code under `if __name__ == \"__main__\":`, since every worker imports "
            "it (multiprocessing's spawn start method); or pass jobs=1")


class _LocalPool:
    """``workers`` processes of the ``spawn`` start method on this machine."""

    def __init__(self, workers: int):
        context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        try:
            for _ in range(workers):
                self._workers.append(_Worker(context))
            for worker in self._workers:
                worker.wait_ready()
        except BaseException:
            self.stop()
            self.close()
            raise

    def room(self) -> bool:
        return any(self._idle(w) for w in self._workers)

    def _idle(self, worker: _Worker) -> bool:
        if worker.alive and not worker.process.is_alive():  # ended while idle
            worker.alive = False
        return worker.alive and worker.call is None

    def busy(self) -> int:
        return sum(w.call is not None for w in self._workers)

    def submit(self, call: Call) -> bool:
        worker = next(w for w in self._workers if self._idle(w))
        try:
            worker.conn.send(call)
        except (BrokenPipeError, ConnectionResetError):  # it ended just now
            worker.alive = False
            return False
        worker.call = call
        return True

    def wait(self) -> list[tuple[Call, Outcome]]:
        busy = [w for w in self._workers if w.call is not None]
        ready = multiprocessing.connection.wait(
            [w.conn for w in busy] + [w.process.sentinel for w in busy])
        done = []
        for worker in busy:
            call = worker.call
            assert call is not None
            if worker.conn in ready:
                try:
                    outcome = worker.conn.recv()
                except (EOFError, OSError):  # it died while sending
                    outcome = self._died(worker)
            elif worker.process.sentinel in ready:
                outcome = self._died(worker)
            else:
                continue
            worker.call = None
            done.append((call, outcome))
        return done

    def _died(self, worker: _Worker) -> Outcome:
        worker.process.join(timeout=STOP_GRACE_SECONDS)
        worker.alive = False
        code = worker.process.exitcode
        how = f"exit status {code}"
        if code is not None and code < 0:
            how = f"killed by {signal.Signals(-code).name}"
            if -code == signal.SIGKILL:
                how += ", e.g. for want of memory"
        message = (f"its worker process {worker.process.pid} ended ({how}) before the run "
                   "finished; rerun the same command to resume it")
        return False, Failure("WorkerDied", message, message, True)

    def stop(self) -> None:
        """SIGTERM to every live worker (each trainer releases its lock on the way out)."""
        for worker in self._workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                try:
                    os.kill(worker.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            worker.call = None

    def close(self) -> None:
        """Tell idle workers to leave, then wait for all of them (killing stragglers)."""
        for worker in self._workers:
            if worker.alive and worker.call is None and worker.process.is_alive():
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for worker in self._workers:
            worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()


# ---------------------------------------------------------------------- ray


class _RayPool:
    """Ray tasks of one CPU each, ``jobs`` (default: the cluster's CPUs) at a time."""

    def __init__(self, jobs: int | None, address: str | None, calls: int,
                 log: Callable[[str], None]):
        ray = _import_ray()
        self._ray = ray
        self._owns = not ray.is_initialized()  # started here: shut down at the end
        if self._owns:
            ray.init(address=address, include_dashboard=False, log_to_driver=True)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self._jobs = max(1, min(jobs or default_jobs() or cpus, calls))
        self._remote = ray.remote(execute).options(num_cpus=1, max_retries=0)
        self._flight: dict[Any, Call] = {}
        log(f"  Ray cluster of {cpus} CPU(s): {self._jobs} run(s) at a time")

    def room(self) -> bool:
        return len(self._flight) < self._jobs

    def busy(self) -> int:
        return len(self._flight)

    def submit(self, call: Call) -> bool:
        task = self._remote.options(num_gpus=1) if call.gpu else self._remote
        self._flight[task.remote(call)] = call
        return True

    def wait(self) -> list[tuple[Call, Outcome]]:
        ready, _ = self._ray.wait(list(self._flight), num_returns=1)
        done = []
        for ref in ready:
            call = self._flight.pop(ref)
            try:
                outcome = self._ray.get(ref)
            except Exception as exc:  # the task's worker died, or Ray failed
                outcome = (False, Failure.of(exc))
            done.append((call, outcome))
        return done

    def stop(self) -> None:
        """Cancel the tasks in flight (a KeyboardInterrupt in each, so that its trainer
        releases its lock) and give them time to end."""
        refs = list(self._flight)
        for ref in refs:
            self._ray.cancel(ref)
        if refs:
            self._ray.wait(refs, num_returns=len(refs), timeout=STOP_GRACE_SECONDS)
        self._flight.clear()

    def close(self) -> None:
        if self._owns:
            self._ray.shutdown()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError('executor="ray" needs Ray: pip install "flexmtl[ray]"') from exc
    return ray
