"""Which code a run folder may name: the user's vouching, never the folder's.

A run folder is data. When its ``run.json`` names a callable (``"factory": "pkg.module:fn"``, a
dataset ``"name": "pkg.module:load"``), grokscope imports it only if the user vouched for it, and
decides that *before* importing anything. The user vouches by

* naming it on the command line of this invocation (``--model``/``--dataset``);
* installing a package that registers it under an entry point (``grokscope.models``,
  ``grokscope.datasets``): installed packages are the user's choice;
* an allow-list: ``--trust-code MODULE[,MODULE]``, the environment variable ``GROKSCOPE_TRUST_CODE``
  (same syntax), or the file ``trusted-code.txt`` in the user's grokscope configuration folder
  (``$GROKSCOPE_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/grokscope``, else ``~/.config/grokscope``), one
  entry a line, which ``grokscope init --model pkg.mod:fn`` adds to (and says so).

An allow-list entry is a module (``mylab.models``: that module and its submodules), one callable
(``mylab.models:make``) or an absolute folder (``/home/me/proj``: the folder a run.json may put on
the import path to find a vouched-for callable's module, :mod:`grokscope.codepath`; ``init`` adds
the folder of the factory it was given). A callable allowed through its module must be defined in that module (so
``mylab.models:os.system`` is not allowed by trusting ``mylab.models``). Built-in names need none
of this. The decision is a :class:`Trust` value that the engine sends with every job, so a worker
never imports what the client did not vouch for.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grokscope.errors import GrokscopeError

ENV_VAR = "GROKSCOPE_TRUST_CODE"
CONFIG_DIR_ENV = "GROKSCOPE_CONFIG_DIR"
CONFIG_FILE = "trusted-code.txt"


class UntrustedCode(GrokscopeError, ValueError):
    """A run folder names code the user has not vouched for; the message says which and how to allow it."""


def split_entries(text: str | None) -> list[str]:
    """``"a.b, c:d"`` → ``["a.b", "c:d"]`` (commas, semicolons or whitespace separate entries)."""
    if not text:
        return []
    return [e for e in text.replace(";", ",").replace("\n", ",").replace(" ", ",").split(",") if e]


def config_dir() -> Path:
    """The user's grokscope configuration folder (see the module docstring)."""
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV])
    base = os.environ.get("XDG_CONFIG_HOME")
    return (Path(base) if base else Path.home() / ".config") / "grokscope"


def config_file() -> Path:
    """``config_dir() / "trusted-code.txt"``."""
    return config_dir() / CONFIG_FILE


def is_folder_entry(entry: str) -> bool:
    """Whether an allow-list entry is a folder (an absolute path) rather than a module or callable."""
    return os.path.isabs(entry)


def read_config() -> list[str]:
    """The entries of the user's allow-list file (``#`` starts a comment; a line holding an absolute
    folder is one entry, spaces and all); [] when there is none."""
    path = config_file()
    try:
        text = path.read_text()
    except OSError:
        return []
    out: list[str] = []
    for line in text.splitlines():
        if is_folder_entry(line.strip()):
            out.append(line.strip())
        else:
            out.extend(split_entries(line.split("#", 1)[0]))
    return out


def remember(target: str) -> Path | None:
    """Add ``target`` (``pkg.module:callable`` or an absolute folder) to the user's allow-list file;
    returns the file's path when it was added, None when it was there already."""
    if target in read_config():
        return None
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(target + "\n")
    return path


def module_of(target: str) -> str:
    """``"pkg.module:attr"`` → ``"pkg.module"``."""
    return target.split(":", 1)[0]


@dataclass(frozen=True)
class Trust:
    """The code a user vouched for: ``callables`` (exact ``pkg.module:attr``), ``modules`` (a module
    and its submodules) and ``folders`` (absolute, resolved: where a vouched-for module may be imported
    from). Picklable; the engine sends it with each job."""

    callables: frozenset[str] = frozenset()
    modules: frozenset[str] = frozenset()
    folders: frozenset[str] = frozenset()

    @classmethod
    def of(cls, entries: Iterable[str]) -> "Trust":
        """A Trust from allow-list entries (``MODULE``, ``MODULE:callable`` or an absolute folder)."""
        entries = [e.strip() for e in entries if e and e.strip()]
        folders = [e for e in entries if is_folder_entry(e)]
        rest = [e for e in entries if not is_folder_entry(e)]
        return cls(callables=frozenset(e for e in rest if ":" in e),
                   modules=frozenset(e for e in rest if ":" not in e),
                   folders=frozenset(str(Path(f).resolve()) for f in folders))

    @classmethod
    def from_user(cls, extra: Iterable[str] = ()) -> "Trust":
        """The user's allow-list (config file + ``$GROKSCOPE_TRUST_CODE``) plus ``extra`` entries
        (``--trust-code`` and the callables named on this command line)."""
        return cls.of([*read_config(), *split_entries(os.environ.get(ENV_VAR)), *extra])

    def plus(self, entries: Iterable[str]) -> "Trust":
        """This trust with more entries."""
        more = Trust.of(entries)
        return Trust(self.callables | more.callables, self.modules | more.modules, self.folders | more.folders)

    def exact(self, target: str) -> bool:
        """Whether ``target`` itself was vouched for (not only its module)."""
        return target in self.callables

    def module_allowed(self, module: str) -> bool:
        """Whether ``module`` is an allowed module or a submodule of one."""
        return any(module == m or module.startswith(m + ".") for m in self.modules)

    def folder_allowed(self, folder: str) -> bool:
        """Whether ``folder`` (absolute) was vouched for as a place to import code from."""
        return str(Path(folder).resolve()) in self.folders

    def allows(self, target: str) -> bool:
        """Whether ``target`` (``pkg.module:attr``) may be imported."""
        return self.exact(target) or self.module_allowed(module_of(target))


def refusal(target: str, kind: str, where: str) -> str:
    """The one line that refuses ``target``: which file names which callable, and the ways to allow it."""
    return (f"{where} names the {kind} callable {target!r}, which you have not vouched for; grokscope "
            f"never imports code named by a run folder on its own. To allow it: pass --{kind} {target} "
            f"on the command line, or --trust-code {module_of(target)} (also ${ENV_VAR} or "
            f"{config_file()}), or install a package that registers it under the entry point "
            f"'grokscope.{kind}s'")


def check(target: str, trust: Trust, kind: str, where: str) -> None:
    """Raise :class:`UntrustedCode` unless ``trust`` allows ``target``. Imports nothing."""
    if not trust.allows(target):
        raise UntrustedCode(refusal(target, kind, where))


def check_plain_json(value: Any, where: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` unless ``value`` is plain JSON data (dicts with string keys, lists, strings,
    finite or not numbers, booleans, None): spec kwargs are values, never code or objects."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain_json(v, f"{where}[{i}]", error)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise error(f"{where}: key {k!r} is not a string (kwargs must be plain JSON)")
            check_plain_json(v, f"{where}.{k}", error)
        return
    raise error(f"{where}: {type(value).__name__} value {value!r:.60} is not plain JSON")
