"""Mechanics that several probes and pictures share (one functional layer, no probe logic).

* :mod:`grokscope.functional.kinks` — where a network bends: its kinked nonlinearities, written as
  activation modules or as functional calls (``F.relu``, ``x.clamp(min=0)``, ...), found and named
  during a forward pass (used by the ``lc`` probe and by ``grokscope regions``).
"""
