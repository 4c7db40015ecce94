"""grokscope: progress measures for grokking, computed over saved checkpoints.

The package is laid out by job (see CONTRIBUTING.md):

* ``grokscope.datasets`` (folder ``datasets/``): one module per task, all returning :class:`Data`.
* ``grokscope.models``: model builders by name (``mlp``, ``cnn``, ``transformer`` ...).
* ``grokscope.runs``: the run format (``run.json``, checkpoints, ``log.jsonl``).
* ``grokscope.training``: the minimal trainer and its presets.
* ``grokscope.probes`` (folder ``probes/``): one module per probe family.
* ``grokscope.engine``: checkpoint discovery, the Dask driver and the Zarr store.
"""

__version__ = "0.1.0"
