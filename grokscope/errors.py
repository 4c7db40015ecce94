"""The one base of every error grokscope raises on purpose.

Library code raises a subclass of :class:`GrokscopeError` (``ModelError``, ``StoreError``,
``ProbeError`` ...) whose message names the file, key or value at fault. The command line turns any
of them into one line (``Error: ...``) and exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class GrokscopeError(Exception):
    """Base class of grokscope's domain errors: the message is complete in one line."""
