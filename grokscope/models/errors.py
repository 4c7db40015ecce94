"""The error of the model room (its own module so that every model module can raise it without
importing the registry in ``grokscope/models/__init__.py``)."""

from __future__ import annotations

from grokscope.errors import GrokscopeError


class ModelError(GrokscopeError, ValueError):
    """A model spec could not be turned into a model."""
