"""The one base of every error grokscope raises on purpose.

Library code raises a subclass of :class:`GrokscopeError` (``ModelError``, ``StoreError``,
``ProbeError`` ...) whose message names the file, key or value at fault. The command line turns any
of them into one line (``Error: ...``) and exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GrokscopeError(Exception):
    """Base class of grokscope's domain errors: the message is complete in one line."""


def user_code_failure(what: str, e: BaseException) -> str:
    """One line for an exception raised by the user's own code (a model factory, a dataset callable,
    a module imported for them): ``what`` raised ``Type: first line``, with the fix where the cause
    is a common one (a relative path opened from the working directory, not the module's folder)."""
    import os

    text = str(e).strip().splitlines()
    line = f"{what} raised {type(e).__name__}" + (f": {text[0]}" if text else "")
    name = getattr(e, "filename", None)
    if isinstance(e, OSError) and isinstance(name, str) and not os.path.isabs(name):
        line += (f" (the relative path {name!r} is opened from the working directory {os.getcwd()}, not "
                 "from the folder of the code: build it from the module's own folder, "
                 "Path(__file__).parent / ..., or pass an absolute path)")
    return line
