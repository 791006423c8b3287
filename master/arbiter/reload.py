"""--reload: watch the source files and reload through HUP's path (new workers before the old ones stop).

The watching is done by watchfiles (Rust, inotify on Linux; the optional `reload` extra) in a small child
process, `python -m corral.master.arbiter.reload`, which prints one line per batch of changes. The master reads that
pipe in its own select loop and queues a HUP: so a change is handled exactly like `kill -HUP`, a broken
import keeps the running workers (logged once per change) and the next good save recovers. A process rather
than a thread: the master forks workers, and a fork must not copy a watcher thread's state.

The watcher stops when the master closes its end of the stdin pipe (stop, or the master dying).
"""

from __future__ import annotations

import fnmatch
import importlib.util
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterable, Sequence

from corral.shared.settings import SettingError, Settings

__all__ = ["Reloader", "path_filter", "READY"]

logger = logging.getLogger("corral.master")

READY = "(watching)"  # the watcher's first line: its watches are in place


class Reloader:
    """The master's handle on the watcher process."""

    def __init__(self, process: subprocess.Popen, dirs: list[str]) -> None:
        self.process = process
        self.dirs = dirs
        assert process.stdout is not None
        self._out = process.stdout.fileno()
        os.set_blocking(self._out, False)
        self._partial = b""

    @classmethod
    def start(cls, settings: Settings, cwd: str) -> Reloader:
        try:
            missing = importlib.util.find_spec("watchfiles") is None
        except (ImportError, ValueError):
            missing = True
        if missing:
            raise SettingError("--reload needs watchfiles: pip install 'corral[reload]' (or pip install watchfiles)")
        dirs = [os.path.abspath(os.path.join(cwd, d)) for d in (settings.reload_dirs or (cwd,))]
        for folder in dirs:
            if not os.path.isdir(folder):
                raise SettingError(f"invalid value for --reload-dir: {folder!r} is not a folder")
        command = [sys.executable, "-m", "corral.master.arbiter.reload"]
        for flag, values in (
            ("--dir", dirs),
            ("--include", settings.reload_includes),
            ("--exclude", settings.reload_excludes),
        ):
            for value in values:
                command += [flag, value]
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=cwd)
        return cls(process, dirs)

    def fileno(self) -> int:
        return self._out

    def read(self) -> str:
        """What changed since the last call (a description), or '' when nothing complete arrived."""
        try:
            data = os.read(self._out, 65536)
        except (BlockingIOError, InterruptedError):
            return ""
        if not data:
            return ""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        text = [line.decode(errors="replace") for line in lines if line]
        if READY in text:
            text.remove(READY)
            logger.info("Watching %s for changes (--reload)", ", ".join(self.dirs))
        return "; ".join(text)

    def close_in_child(self) -> None:
        """In a forked worker: drop the master's pipe ends (the watcher must see the master's EOF only)."""
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                os.close(stream.fileno())

    def stop(self, timeout: float = 5.0) -> None:
        process = self.process
        try:
            if process.stdin is not None:
                process.stdin.close()  # the watcher's signal to stop
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
        finally:
            if process.stdout is not None:
                process.stdout.close()


def path_filter(includes: Sequence[str], excludes: Sequence[str]):
    """watchfiles' filter: a file whose name matches an include glob, with no path part matching an exclude."""

    def accept(change: object, path: str) -> bool:
        parts = path.split(os.sep)
        if any(fnmatch.fnmatch(part, pattern) for part in parts for pattern in excludes):
            return False
        name = parts[-1]
        return any(fnmatch.fnmatch(name, pattern) for pattern in includes)

    return accept


def _watch(dirs: Iterable[str], includes: Sequence[str], excludes: Sequence[str]) -> None:
    import watchfiles

    stop = threading.Event()

    def wait_for_eof() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    cwd = os.getcwd()
    ready = False
    # yield_on_timeout: the first (empty) yield says the watches are in place, so the master can say so.
    for changes in watchfiles.watch(
        *dirs,
        watch_filter=path_filter(includes, excludes),
        stop_event=stop,
        debounce=400,
        step=50,
        rust_timeout=300,
        yield_on_timeout=True,
        raise_interrupt=False,
    ):
        if not ready:
            ready = True
            sys.stdout.write(READY + "\n")
            sys.stdout.flush()
        if not changes:
            continue
        names = sorted({os.path.relpath(path, cwd) for _, path in changes})
        try:
            sys.stdout.write(", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "") + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            return


def main(argv: Sequence[str]) -> None:
    values: dict[str, list[str]] = {"--dir": [], "--include": [], "--exclude": []}
    for flag, value in zip(argv[::2], argv[1::2]):
        values[flag].append(value)
    _watch(values["--dir"], values["--include"], values["--exclude"])


if __name__ == "__main__":
    main(sys.argv[1:])
