"""The version of grokscope (written into run.json, checkpoints and stores); its own module so that
those writers need not import the package's ``__init__``."""

__version__ = "0.1.0"
