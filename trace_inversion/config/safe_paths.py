"""Nothing outside the folders a user names is ever written, committed or deleted.

Every folder the project writes as a whole (a stage's output folder, a trained or
tiny model, a reviewed release, a release checkout) goes through ``claim_dir``:

- a missing folder is created and marked as the project's (a ``.trace-inversion``
  file inside; for a git checkout, inside its ``.git``);
- an existing empty folder is claimed the same way;
- an existing non-empty folder the project did not create is refused, unless the
  user passes ``--force`` (the error names the path and the flag);
- a folder is only ever emptied or replaced when it is the project's (or ``--force``),
  and never when it is, contains, or is inside one of the command's inputs, not even
  with ``--force``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable

from trace_inversion.errors import UserError

MARKER = ".trace-inversion"


class PathSafetyError(UserError):
    pass


def absolute(path: str | os.PathLike) -> Path:
    """``path`` resolved against the current folder (``~`` expanded, links followed)."""
    return Path(path).expanduser().resolve()


def is_owned(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / MARKER).is_file() or (p / ".git" / MARKER).is_file()


def mark_owned(path: str | os.PathLike) -> None:
    p = Path(path)
    target = p / ".git" / MARKER if (p / ".git").is_dir() and not (p / MARKER).exists() else p / MARKER
    target.write_text("This folder was written by trace-inversion; its commands may replace it.\n")


def _is_empty(p: Path) -> bool:
    return not any(p.iterdir())


def overlaps(a: Path, b: Path) -> bool:
    """True when ``a`` is ``b``, contains it, or is inside it."""
    return a == b or a in b.parents or b in a.parents


def check_disjoint(target: str | os.PathLike, inputs: Iterable[str | os.PathLike], what: str = "write") -> None:
    t = absolute(target)
    for i in inputs:
        if i is None:
            continue
        src = absolute(i)
        if overlaps(t, src):
            rel = "is" if t == src else ("contains" if t in src.parents else "is inside")
            raise PathSafetyError(f"refusing to {what} {t}: it {rel} the input {src}; fix: choose an output "
                                  "folder outside the input (not even --force allows this)")


def claim_dir(path: str | os.PathLike, *, force: bool = False, inputs: Iterable = (), flag: str = "--force",
              empty: bool = False) -> Path:
    """Make ``path`` (absolute) the project's folder to write, and return it.

    ``empty=True`` also removes what is in it (for a command that replaces its output
    as a whole, e.g. a reviewed release or a release checkout)."""
    p = absolute(path)
    if empty:  # writing beside an input is fine (a run folder holds its stages); replacing it never is
        check_disjoint(p, inputs, "replace")
    if p.exists() and not p.is_dir():
        raise PathSafetyError(f"{p} is a file, not a folder; fix: choose a folder path")
    if p.exists() and not _is_empty(p) and not is_owned(p):
        if not force:
            raise PathSafetyError(f"{p} exists, is not empty and was not created by trace-inversion; fix: choose "
                                  f"a new or empty folder, or pass {flag} to write into it anyway")
    if empty and p.exists():
        for child in list(p.iterdir()):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    p.mkdir(parents=True, exist_ok=True)
    if not is_owned(p):
        mark_owned(p)
    return p
