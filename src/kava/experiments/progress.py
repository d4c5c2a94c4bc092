"""What a local `kava sweep` shows while it runs: one bar over the sweep's stages (training
and evaluation of each seed) and, under it, the progress bar of each training or evaluation
running now, mirrored from the child process's own bar.

The child's output still goes to its log (``train.out``, ``eval.out``) line by line; only
the intermediate states of its progress bar, which tqdm writes as ``\\r``-terminated
updates, are shown instead of logged (the bar's final state ends with a newline and is
logged).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

from tqdm.auto import tqdm

# A tqdm bar's text: "train:  40%|████      | 8/20 [00:05<00:07,  1.81it/s, loss=8.93]"
_BAR = re.compile(r"^(?P<desc>.*?):\s*\d+%\|.*?\|\s*(?P<n>\d+)/(?P<total>\d+)"
                  r"(?:\s*\[[^,\]]*(?:,\s*(?P<rate>[^,\]]*))?(?:,\s*(?P<post>[^\]]*))?\])?")
_UNIT = re.compile(r"(?:[\d.?]+(?P<a>[^\d\s/]+)/s|s/(?P<b>[^\d\s/]+))$")
_SEPARATOR = re.compile(rb"\r\n|\r|\n")


def parse_bar(text: str) -> tuple[str, int, int, str, str] | None:
    """(description, n, total, postfix, unit) of one state of a tqdm bar, None for any other text."""
    m = _BAR.match(text.strip())
    if m is None:
        return None
    unit = _UNIT.search((m["rate"] or "").strip())
    return (m["desc"].strip(), int(m["n"]), int(m["total"]), (m["post"] or "").strip(),
            (unit["a"] or unit["b"]) if unit else "it")


class SweepDisplay:
    """Progress of a local sweep on stderr (tqdm): `message` prints a line above the bars,
    `advance` counts finished stages, `runner` runs a child (the sweep's `Runner`), mirroring
    its progress bar under the sweep's."""

    def __init__(self, run_name: str, stages: int, file=None):
        self.file = file or sys.stderr
        self.bar = tqdm(total=stages, desc=f"sweep {run_name}", unit="stage", file=self.file, dynamic_ncols=True)
        self._children: dict[int, tqdm] = {}
        self._lock = threading.Lock()

    def message(self, text: str) -> None:
        self.bar.write(text, file=self.file)

    def advance(self, stages: int) -> None:
        if stages:
            self.bar.update(stages)

    def close(self) -> None:
        for child in list(self._children.values()):
            child.close()
        self.bar.close()

    def runner(self, argv: list[str], env: dict[str, str], log_path: Path) -> int:
        """Run `argv` with `env`: its output goes to `log_path`, its bar to the screen; the exit code."""
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            pending = b""
            try:
                while chunk := proc.stdout.read1(1 << 16):
                    pending = self._consume(pending + chunk, log)
                if pending:
                    log.write(pending)
            finally:
                proc.stdout.close()
                rc = proc.wait()
                self._end_child()
        return rc

    def _consume(self, data: bytes, log) -> bytes:
        """Log the complete lines of `data`, show its bar states; the unterminated rest."""
        start = 0
        for sep in _SEPARATOR.finditer(data):
            text = data[start:sep.start()]
            start = sep.end()
            state = parse_bar(text.decode("utf-8", errors="replace"))
            if state is not None:
                self._show(*state)
            if sep.group() != b"\r" or (state is None and text.strip()):
                log.write(text + b"\n")  # a line, or a bar's final state (it ends with a newline)
        log.flush()
        rest = data[start:]
        state = parse_bar(rest.decode("utf-8", errors="replace"))  # the state being shown now (tqdm writes
        if state is not None:                                         # "\r" + state: its end comes with the next one)
            self._show(*state)
        return rest

    def _show(self, desc: str, n: int, total: int, post: str, unit: str) -> None:
        key = threading.get_ident()
        with self._lock:
            child = self._children.get(key)
            if child is None or child.desc != f"  {desc}":
                position = child.pos if child is not None else len(self._children) + 1  # (a line per running child)
                if child is not None:
                    child.close()
                child = self._children[key] = tqdm(total=total, desc=f"  {desc}", unit=unit, file=self.file,
                                                   leave=False, position=abs(position), dynamic_ncols=True)
        child.total, child.n = total, n
        if post:
            child.set_postfix_str(post, refresh=False)
        child.refresh()

    def _end_child(self) -> None:
        with self._lock:
            child = self._children.pop(threading.get_ident(), None)
        if child is not None:
            child.close()
