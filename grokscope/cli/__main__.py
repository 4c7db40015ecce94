"""``python -m grokscope.cli``: the ``grokscope`` command."""

from . import main

main()
