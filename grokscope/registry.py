"""One way to find probes, models and datasets by name.

A name is looked up among the built-ins (a table in grokscope), the installed entry points of the
kind's group (``grokscope.probes``, ``grokscope.models``, ``grokscope.datasets``) and, for probes,
the environment variable ``GROKSCOPE_PROBES``. A name defined by two sources with different targets
is an error naming both (never a silent shadow). Anything containing ``:`` is an import path
``pkg.module:attr``: it is imported only when it is a built-in's or an entry point's target, or when
the :class:`grokscope.trust.Trust` given allows it, and that is checked before anything is imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from .errors import GrokscopeError
from .trust import Trust, UntrustedCode, check
from grokscope.errors import user_code_failure


class RegistryError(GrokscopeError, ValueError):
    """A name or import path cannot be resolved (unknown, defined twice, not importable)."""


@dataclass(frozen=True)
class Entry:
    """One definition of a name: its import path and where the definition comes from."""

    name: str
    target: str
    source: str  # "built-in", "entry point 'grokscope.models' of dist 1.0", "$GROKSCOPE_PROBES"


def import_target(target: str, error: type[Exception] = RegistryError) -> Any:
    """Import ``"pkg.module:attr"`` (``attr`` may be dotted, through classes but not through modules)
    and return the object; ``error`` names the path and the cause."""
    if ":" not in target:
        raise error(f"{target!r} must look like 'pkg.module:attr'")
    mod_name, attr = target.split(":", 1)
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as e:
        raise error(f"cannot import module {mod_name!r} for {target!r}: {e}") from e
    except Exception as e:  # noqa: BLE001 - the module's own code failed when imported

        raise error(user_code_failure(f"importing module {mod_name!r} for {target!r}", e)) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise error(f"module {mod_name!r} has no attribute {attr!r}") from None
        if isinstance(obj, types.ModuleType):
            raise error(f"{target!r}: {part!r} is a module, not a definition of {mod_name!r}")
    return obj


class Registry:
    """Names of one kind (``"model"``, ``"dataset"``, ``"probe"``) and how to load what they name.

    ``builtins`` maps names to import paths; built-ins whose module cannot be found are left out.
    ``env_var`` (optional) holds ``name=pkg.module:attr`` items, comma-separated.
    """

    def __init__(self, kind: str, builtins: Mapping[str, str], group: str, env_var: str | None = None,
                 error: type[Exception] = RegistryError):
        self.kind, self.builtins, self.group, self.env_var, self.error = kind, builtins, group, env_var, error

    def definitions(self) -> dict[str, list[Entry]]:
        """Every definition of every name, built-ins first, then entry points, then ``env_var``;
        definitions of a name with the same target are merged."""
        out: dict[str, list[Entry]] = {}

        def add(e: Entry) -> None:
            defs = out.setdefault(e.name, [])
            if all(d.target != e.target for d in defs):
                defs.append(e)

        for name, target in self.builtins.items():
            if importlib.util.find_spec(target.split(":")[0]) is not None:
                add(Entry(name, target, "built-in"))
        for ep in entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            who = f" of {dist.name} {dist.version}" if dist is not None else ""
            add(Entry(ep.name, ep.value, f"entry point {self.group!r}{who}"))
        if self.env_var:
            for item in os.environ.get(self.env_var, "").replace(";", ",").split(","):
                name, eq, target = item.strip().partition("=")
                if eq and name.strip() and ":" in target:
                    add(Entry(name.strip(), target.strip(), f"${self.env_var}"))
        return out

    def available(self) -> dict[str, str]:
        """``{name: target}`` (the first definition of a name defined twice; :meth:`entry` refuses it)."""
        return {n: defs[0].target for n, defs in self.definitions().items()}

    def entry(self, name: str) -> Entry:
        """The one definition of ``name``; the error lists valid names, or names both sources of a
        duplicate."""
        defs = self.definitions()
        if name not in defs:
            raise self.error(f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(defs))}"
                             + (f" (or a {self.kind} callable 'pkg.module:attr')" if self.kind != "probe" else ""))
        found = defs[name]
        if len(found) > 1:
            both = "; ".join(f"{d.target} ({d.source})" for d in found)
            raise self.error(f"{self.kind} name {name!r} is defined twice: {both}; uninstall or rename one")
        return found[0]

    def vetted(self, target: str) -> bool:
        """Whether ``target`` is the import path of a built-in or of an installed entry point."""
        return any(d.target == target for defs in self.definitions().values() for d in defs)

    def check(self, ref: str, trust: Trust | None, where: str) -> str:
        """The import path ``ref`` (a name or ``pkg.module:attr``) resolves to, once it is known to
        be allowed. Raises the registry's error or :class:`UntrustedCode`; imports nothing."""
        if ":" not in ref:
            return self.entry(ref).target
        if not self.vetted(ref):
            check(ref, trust if trust is not None else Trust.from_user(), self.kind, where)
        return ref

    def load(self, ref: str, trust: Trust | None = None, where: str = "the spec") -> Any:
        """The object ``ref`` names, after :meth:`check`. ``trust`` None means the user's own
        allow-list (:meth:`Trust.from_user`). An object allowed only through its module must be
        defined in that module."""
        target = self.check(ref, trust, where)
        obj = import_target(target, self.error)
        if ":" in ref and not self.vetted(ref):
            t = trust if trust is not None else Trust.from_user()
            mod = getattr(obj, "__module__", None) or ""
            if not t.exact(ref) and not t.module_allowed(mod):
                raise UntrustedCode(f"{where}: {ref!r} is defined in module {mod!r}, not in a module you "
                                    f"trust; vouch for {ref} itself (--{self.kind} {ref} or --trust-code {ref})")
        return obj


__all__ = ["Entry", "Registry", "RegistryError", "Trust", "UntrustedCode", "import_target"]
