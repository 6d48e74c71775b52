"""What went wrong, in one sentence: the file or value an error names and what to do about it.

Every program ends a failure with one of these lines (`hf_mae.cli.arguments.run_cli`); the training loop uses them
for a checkpoint it could not write."""

from __future__ import annotations

import errno
import os
import signal

# what to do, by the errno of an OSError
_OS_ADVICE = {
    errno.ENOSPC: "free some space on that disk (or pass an --output_dir on another one)",
    errno.EDQUOT: "free some of your disk quota (or pass an --output_dir on another disk)",
    errno.EACCES: "check the permissions of that path (or pass another one)",
    errno.EPERM: "check the permissions of that path (or pass another one)",
    errno.EROFS: "the file system is read-only: pass a path on a writable one",
    errno.ENOENT: "check that the path exists",
    errno.EISDIR: "pass a file, not a folder",
    errno.ENOTDIR: "pass a folder, not a file",
    errno.EIO: "the disk reported an I/O error: check it",
}

# phrases of errors that wrap an OSError in their text only (safetensors' SafetensorError, torch's RuntimeError)
_WRAPPED_OS_ERRORS = (("No space left on device", errno.ENOSPC), ("StorageFull", errno.ENOSPC),
                      ("Disk quota exceeded", errno.EDQUOT), ("Permission denied", errno.EACCES),
                      ("Read-only file system", errno.EROFS))


class RunInterrupted(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM, SIGHUP): handled like Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def wrapped_errno(error: BaseException) -> int | None:
    """The errno an error carries, or names in its text when it wraps one (e.g. a full disk inside safetensors)."""
    if isinstance(error, OSError) and error.errno:
        return error.errno
    if type(error).__module__.startswith("hf_mae"):
        return None  # hf_mae's own errors word the problem themselves
    text = str(error)
    return next((number for phrase, number in _WRAPPED_OS_ERRORS if phrase in text), None)


def _first_line(error: BaseException, limit: int = 500) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else ""


def describe_failure(error: BaseException) -> str:
    """One line: what failed (the file, when the error names one), why, and what to do."""
    if type(error).__module__.startswith("hf_mae"):
        return str(error)  # written for the user: the value or file and what to do
    number = wrapped_errno(error)
    if number is not None:
        filename = getattr(error, "filename", None)
        where = f"{filename}: " if filename else ""
        reason = (getattr(error, "strerror", None) if isinstance(error, OSError) else None) or os.strerror(number)
        advice = _OS_ADVICE.get(number, "check the path and the disk")
        return f"{where}{reason}; {advice}"
    if isinstance(error, OSError) and getattr(error, "filename", None):
        return f"{error.filename}: {error.strerror or _first_line(error)}"
    return _first_line(error) or type(error).__name__


__all__ = ["RunInterrupted", "describe_failure", "wrapped_errno"]
