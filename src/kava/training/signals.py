"""Graceful pre-emption: a stop signal ends training at the next step boundary, with a checkpoint.

Clusters pre-empt jobs with a signal and kill them a little later (SLURM: SIGTERM, then
SIGKILL after `KillWait`; `--signal=USR1@120` warns two minutes ahead). Inside
`graceful_stop()` each of `PREEMPTION_SIGNALS` only records that a stop was asked for;
the trainer checks `stop.signum` after every optimizer step, writes `checkpoint-<step>`
and raises `Preempted`, which `kava train` turns into one line (how to resume) and exit
code `EXIT_PREEMPTED` (75, EX_TEMPFAIL: "try again"). A second SIGINT (Ctrl-C twice) stops
at once with KeyboardInterrupt.

A launcher that owns its own signals (a submitit job, a custom SLURM wrapper) passes the
signals it wants to `kava.training.trainer.train(cfg, resume=True, stop_signals=(...))`
and catches `Preempted`: by then the checkpoint is on disk and the handlers that were in
place before `train` are back, so it can requeue, or hand the signal on to them with
`signal.raise_signal(stop.signum)`. The same context manager works around any loop:

    with graceful_stop(("SIGUSR1",)) as stop:
        for step in ...:
            ...
            if stop.signum is not None:
                save(); raise Preempted(stop.signum, step, total, path)

Handlers can only be installed from the main thread; elsewhere `graceful_stop` installs
none and `stop.signum` stays None.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Sequence

PREEMPTION_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")
EXIT_PREEMPTED = 75


class StopRequest:
    """`signum` is the first stop signal received, or None."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None


class Preempted(Exception):
    """Training stopped on a signal after writing `checkpoint`; `kava train` resumes it with
    `--resume`, a command without one (`kava bench quality`) when run again."""

    def __init__(self, signum: int, step: int, total_steps: int, checkpoint):
        self.signum = signum
        self.step = step
        self.total_steps = total_steps
        self.checkpoint = checkpoint
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at step {step}/{total_steps}; checkpoint written to {checkpoint}"
        )

    def __reduce__(self):  # (a worker process's Preempted pickles back with its fields)
        return type(self), (self.signum, self.step, self.total_steps, self.checkpoint)


def _signal(name: str | int) -> signal.Signals:
    return signal.Signals(name) if isinstance(name, int) else signal.Signals[name]


@contextlib.contextmanager
def graceful_stop(signals: Sequence[str | int] = PREEMPTION_SIGNALS) -> Iterator[StopRequest]:
    """While inside, `signals` set `stop.signum` instead of ending the process."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    wanted = [_signal(s) for s in signals if isinstance(s, int) or hasattr(signal, s)]

    def handler(signum, frame):
        if stop.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if stop.signum is None:
            stop.signum = signum
            # os.write, not print: the handler may run while the main thread is inside a
            # buffered write to stderr (the progress bar), and print would re-enter it.
            again = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
            os.write(2, f"\nkava: {signal.Signals(signum).name} received; stopping after this step{again}\n".encode())

    previous = {s: signal.signal(s, handler) for s in wanted}
    try:
        yield stop
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
