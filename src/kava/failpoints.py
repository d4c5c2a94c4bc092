"""Named points where the fault harness breaks a kava process on purpose.

`kava bench faults` and `tests/test_faults.py` start `kava train`, `kava evaluate` and
`kava sweep` with, say, ``KAVA_FAILPOINT=checkpoint.tokenizer:2``: the second time that
process reaches ``failpoint("checkpoint.tokenizer")`` it SIGKILLs itself, so the harness can
kill it *inside* a checkpoint write or a JSONL append, not only at a random moment.
``name:N:enospc`` raises ``OSError(ENOSPC)`` there instead, as a full disk would, and
``name:N:SIGTERM`` (any signal name) sends the process that signal and goes on, as a
scheduler pre-empting the job at that moment would. Several specs are separated by commas.
Unset (always, outside the harness), a failpoint is one dictionary lookup.

The points (where they sit):

    train.step            after a step's backward pass, before the optimizer update
    checkpoint.weights    adapter / full weights and projection written to checkpoint-N.tmp/
    checkpoint.tokenizer  tokenizer and config written
    checkpoint.state      optimizer, scheduler and RNG state written (the folder is complete)
    dir.swap              between the two renames that replace an existing folder
    atomic.write          a file's new content is on disk under its temporary name
    jsonl.append          half of a JSONL line is on disk (a kill here leaves a torn line)
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable

ENV = "KAVA_FAILPOINT"
_hits: dict[str, int] = {}


def _actions(spec: str) -> dict[str, tuple[int, str]]:
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, rest = item.partition(":")
        count, _, action = rest.partition(":")
        out[name] = (int(count or 1), action or "kill")
    return out


def failpoint(name: str, before_kill: Callable[[], None] | None = None) -> None:
    """Kill this process (or raise ENOSPC) here when ``KAVA_FAILPOINT`` names this point.

    `before_kill` runs just before the kill (a JSONL append writes half its line there).
    """
    spec = os.environ.get(ENV)
    if not spec:
        return
    wanted = _actions(spec).get(name)
    if wanted is None:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != wanted[0]:
        return
    if wanted[1] == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"<{name}>")
    if wanted[1].startswith("SIG"):
        os.kill(os.getpid(), signal.Signals[wanted[1]])
        return
    if before_kill is not None:
        before_kill()
    os.kill(os.getpid(), signal.SIGKILL)
