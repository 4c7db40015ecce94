"""Imported by the fork server that starts the local cluster's worker processes (see
``driver.PRELOAD``): those workers ignore SIGINT. A Ctrl-C in the terminal reaches every process of
the foreground group; the driver alone handles it (it commits what finished and closes the cluster,
which stops the workers), so the workers do not print a traceback each."""

from __future__ import annotations

import signal
import threading

if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
