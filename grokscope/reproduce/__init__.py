"""``grokscope reproduce NAME``: the papers' headline results, one command each."""
