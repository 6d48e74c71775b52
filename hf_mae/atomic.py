"""Atomic writes: every file and folder hf_mae writes appears whole or not at all.

Each write goes to a hidden temporary sibling on the same file system (`.NAME.tmp` for files, a unique
`.NAME.<random>.tmp` for folders, which several processes may build at once) that is flushed to disk and then
renamed over the target in one `os.replace`; on any failure the temporary is removed and the target keeps its
old contents. A process killed mid-write leaves at most a hidden `.tmp` sibling, which the
output-folder rules of `hf_mae.training.output_dir` treat as hf_mae's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


def _fsync(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk; file systems that cannot sync folders are let be."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask_mode(mode: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _sync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            _fsync(path)
    _fsync(folder)


def move_into_place(staged, target) -> None:
    """Flush the complete `staged` file or folder to disk and rename it to `target`. A target that one rename
    cannot replace (a non-empty folder, or a file where a folder goes) is set aside first, put back if the
    rename fails, and removed once the new one is in place."""
    staged, target = Path(staged), Path(target)
    _sync_tree(staged) if staged.is_dir() else _fsync(staged)
    aside = None
    if os.path.lexists(target) and (target.is_dir() != staged.is_dir() or (target.is_dir()
                                                                           and any(target.iterdir()))):
        aside = target.with_name(f".{target.name}.{os.getpid()}.old.tmp")
        _remove(aside)
        os.replace(target, aside)
    try:
        os.replace(staged, target)
    except BaseException:
        if aside is not None:
            os.replace(aside, target)
        raise
    _fsync(target.parent)
    if aside is not None:
        _remove(aside)


def temporary_sibling(path) -> Path:
    """`.NAME.tmp` beside `path`: where a write to `path` is staged (one writer per target at a time)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary file name beside `path` for a writer that takes a file name (torch.save, ONNX,
    parquet); when the block succeeds the file is flushed and renamed to `path`, when it fails it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        move_into_place(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, data, *, sort_keys: bool = False) -> Path:
    """Write `data` as indented JSON (values JSON cannot hold written as their `str`) to `path` atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=str) + "\n")


@contextlib.contextmanager
def replace_folder(folder, *, keep_if: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield an empty staging folder beside `folder` to fill; when the block succeeds it replaces `folder`
    whole (see `move_into_place`), when it fails it is removed and `folder` is untouched.

    `keep_if`: when it holds for `folder` by then (e.g. another process built it meanwhile), that folder is
    kept and the staged copy discarded."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        os.chmod(staging, _umask_mode(0o777))  # mkdtemp's 0700 would stay on the folder
        yield staging
        if keep_if is not None and keep_if(folder):
            return
        move_into_place(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_pretrained(folder, *objects) -> Path:
    """`save_pretrained` each of `objects` (model, processor; None skipped) into `folder`, which is replaced
    only once all of them are written."""
    with replace_folder(folder) as staging:
        for obj in objects:
            if obj is not None:
                obj.save_pretrained(staging)
    return Path(folder)


def save_pretrained_into(folder, *objects) -> Path:
    """`save_pretrained` each of `objects` into an existing `folder` without touching its other files: written
    to a staging folder beside, then moved in one rename per file (each file is whole, new or old)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".model.", suffix=".tmp", dir=folder))
    try:
        for obj in objects:
            if obj is not None:
                obj.save_pretrained(staging)
        for item in sorted(staging.iterdir()):
            move_into_place(item, folder / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


__all__ = ["atomic_path", "move_into_place", "replace_folder", "save_pretrained", "save_pretrained_into",
           "temporary_sibling", "write_bytes", "write_json", "write_text"]
