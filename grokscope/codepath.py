"""Where a vouched-for factory's code lives, so any process can rebuild the model from run.json.

``grokscope init --model mymodule:make`` (or ``grokscope train --model mymodule:make``) in a folder that holds ``mymodule.py`` imports it from the
working directory. A later ``grokscope probe RUN`` may run elsewhere, and its workers are other
processes: so the model spec (and a dataset spec naming a callable) keeps the folder the module was
imported from, ``"path": "/abs/folder"``, resolved once by :func:`code_folder`. A module found in an
installed location (site-packages, the standard library) or of an installed distribution (also an
editable ``pip install -e``) needs no folder and gets none.

The folder is data of the run folder like the rest of run.json: it is put on the import path
(appended, so it never shadows an installed module) only when the user vouched for that folder
(:class:`grokscope.trust.Trust` ``folders``: ``init`` adds the folder it resolved to the user's
allow-list, and a ``--model``/``--dataset`` given on this command line vouches for its own). A run
folder naming a folder nobody vouched for is refused before anything is imported, unless the module
is importable without it (then the folder is ignored and the module is found as usual).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import site
import sys
import sysconfig
from pathlib import Path
from typing import Any

from grokscope.errors import GrokscopeError
from grokscope.trust import ENV_VAR, Trust, UntrustedCode, config_file, module_of

SPEC_KEY = "path"


def _installed_roots() -> list[Path]:
    names = ("purelib", "platlib", "stdlib", "platstdlib")
    roots = [sysconfig.get_paths().get(n) for n in names]
    try:
        roots += site.getsitepackages()
    except AttributeError:  # virtualenvs of old Pythons
        pass
    roots.append(site.getusersitepackages())
    return [Path(r).resolve() for r in roots if r]


def _installed(folder: Path) -> bool:
    return any(folder == r or r in folder.parents for r in _installed_roots())


@functools.lru_cache(maxsize=1)
def _distribution_packages() -> frozenset[str]:
    import importlib.metadata

    return frozenset(importlib.metadata.packages_distributions())


def _distributed(top: str) -> bool:
    """Whether ``top`` is a top-level package of an installed distribution (``pip install``, also
    editable): importable from any folder, so it needs no folder in run.json."""
    return top in _distribution_packages()


def code_folder(target: str) -> str | None:
    """The absolute folder from which the top-level package of ``target``'s module (``pkg.mod:attr``)
    is imported, or None when it is not found or lives in an installed location. Imports nothing
    (``find_spec`` of a top-level name runs no module code)."""
    top = module_of(target).split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        where = Path(next(iter(spec.submodule_search_locations))).resolve().parent
    elif spec.origin and spec.origin not in ("built-in", "frozen"):
        where = Path(spec.origin).resolve().parent
    else:
        return None
    return None if _installed(where) or _distributed(top) else str(where)


def with_code_folder(spec: dict[str, Any], target: str | None) -> dict[str, Any]:
    """``spec`` with ``"path"`` set to :func:`code_folder` of ``target`` (a ``pkg.mod:attr`` the user
    named); ``spec`` unchanged for a built-in name or an installed module."""
    if not target or ":" not in target or target.startswith("file:"):
        return spec
    folder = code_folder(target)
    return {**spec, SPEC_KEY: folder} if folder else spec


def _importable(target: str) -> bool:
    try:
        return importlib.util.find_spec(module_of(target).split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def check(spec: dict[str, Any], target: str, trust: Trust | None, kind: str, where: str) -> str | None:
    """The folder ``spec`` asks to import ``target`` from when it may be used, None when there is
    none or it is not needed (the module is importable without it and the folder is not vouched for).
    Raises :class:`UntrustedCode` for an unvouched folder the module cannot be found without, and
    ``ValueError`` for a folder that is not an absolute path. Imports nothing."""
    folder = spec.get(SPEC_KEY)
    if folder is None:
        return None
    if not isinstance(folder, str) or not os.path.isabs(folder):
        raise ValueError(f"{where}: the {kind} 'path' {folder!r} is not an absolute folder")
    t = trust if trust is not None else Trust.from_user()
    if t.folder_allowed(folder):
        return folder
    if str(Path(folder).resolve()) in sys.path or _importable(target):
        return None
    raise UntrustedCode(
        f"{where} says the code of the {kind} {target!r} lives in {folder}, a folder you have not vouched "
        f"for; grokscope never imports code from a folder a run names on its own. To allow it: pass "
        f"--{kind} {target} on the command line from that folder, or --trust-code {folder} (also "
        f"${ENV_VAR} or {config_file()})")


def use(spec: dict[str, Any], target: str, trust: Trust | None, kind: str, where: str) -> None:
    """Put the folder of ``spec`` on the import path (last) when :func:`check` allows it."""
    folder = check(spec, target, trust, kind, where)
    if folder is not None and folder not in sys.path:
        sys.path.append(folder)


# -- user code that acts when imported -------------------------------------------------------------

WATCH_LIMIT = 50_000  # entries of a watched folder compared before and after an import


class ImportSideEffects(GrokscopeError, ValueError):
    """Importing the user's module changed a watched folder (it trains, or writes files, at import)."""


def folder_state(folder: Path, limit: int = WATCH_LIMIT) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of the files and folders below ``folder`` (the first
    ``limit`` entries of a walk in name order); ``{}`` when it is not a local folder."""
    out: dict[str, tuple[int, int]] = {}
    if not Path(folder).is_dir():
        return out
    for top, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            p = os.path.join(top, name)
            try:
                st = os.stat(p, follow_symlinks=False)
            except OSError:
                continue
            out[os.path.relpath(p, folder)] = (st.st_size if name in files else -1, st.st_mtime_ns)
            if len(out) >= limit:
                return out
    return out


def import_modules(*targets: str | None) -> list[str]:
    """The modules that the ``pkg.module:name`` targets import (built-in names and ``file:`` paths
    import none)."""
    out = []
    for t in targets:
        if isinstance(t, str) and ":" in t and not t.startswith("file:"):
            out.append(t.partition(":")[0])
    return out


class watch_imports:
    """``with watch_imports(folders, targets, where): ...`` — the folders listed before the block and
    again after it; when one of ``targets``' modules was first imported inside the block and a folder
    changed meanwhile, :class:`ImportSideEffects` names the module, the folder, what changed and the
    fix (a module without side effects). A folder that changes without a new import (another
    process writing) is not blamed on the import."""

    def __init__(self, folders: list[Path], targets: list[str | None], where: str):
        self.folders = list(dict.fromkeys(Path(f).absolute() for f in folders if f is not None))
        self.modules = import_modules(*targets)
        self.where = where

    def __enter__(self) -> "watch_imports":
        self.loaded = {m for m in self.modules if m in sys.modules}
        self.before = {f: folder_state(f) for f in self.folders} if len(self.loaded) < len(self.modules) else {}
        return self

    def __exit__(self, kind, value, tb) -> None:
        new = [m for m in self.modules if m not in self.loaded and m in sys.modules]
        if not new:
            return
        for folder, before in self.before.items():
            after = folder_state(folder)
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            if changed:
                shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
                raise ImportSideEffects(
                    f"{self.where}: importing module {new[0]!r} changed {folder} ({len(changed)} file(s) or "
                    f"folder(s) new or changed: {shown}): the module runs code such as training when it is "
                    "imported, so grokscope refuses to use it (it took nothing from the changed folder). "
                    f"Put the class or function in a module without side effects (move the training of "
                    f"{new[0]}.py under `if __name__ == \"__main__\":`, or the class into a file of its own)")
