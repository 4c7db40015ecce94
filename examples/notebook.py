# %% [markdown]
# # Reading a probe store in a notebook
#
# A notebook-style script (`# %%` cells: VS Code, Jupyter's jupytext, Spyder run them cell by cell).
# It opens the store `grokscope demo` writes (or any store from `grokscope probe`), slices it the way a
# researcher does (one run, one layer, the steps past memorisation), asks `grok` accessors for onsets,
# LC phases and lead/lag, and plots with xarray + matplotlib.
#
#     grokscope demo                      # writes runs/demo/probes.zarr
#     python examples/notebook.py         # or GROKSCOPE_STORE=path/to/probes.zarr python ...

# %%
import os
import sys
from pathlib import Path

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # run as a script: write files; in a notebook figures show inline
import matplotlib.pyplot as plt
import xarray as xr

import grokscope  # noqa: F401  (registers the ds.grok and dt.grok accessors)

STORE = Path(os.environ.get("GROKSCOPE_STORE", "runs/demo/probes.zarr"))
OUT = Path(os.environ.get("GROKSCOPE_NOTEBOOK_OUT", STORE.parent / "notebook"))

dt = xr.open_datatree(STORE, engine="grokscope")  # finished steps, in step order
runs = [node.path for node in dt.subtree if "acc" in node.children]
print(f"{STORE}: runs with accuracy: {runs}")

# %% [markdown]
# ## One run, its onsets
# `dt[run]` is a run group; its children are probe groups (`acc`, `lc`, `align`, ...). Only finished
# steps count (the `done` flag): the accessors drop the rest.

# %%
run = dt[runs[0]]
onsets = run.grok.onsets()  # memorisation, generalisation (dataset's threshold), robustness@eps
for name, o in onsets.items():
    print(f"{name:18s} {o.var}{o.sel} >= {o.threshold}: step {o.step:g}")
t_mem = onsets["memorisation"].step

# %% [markdown]
# ## Slicing: the steps past memorisation, one split

# %%
acc = run["acc"].to_dataset()
after = acc.sel(step=slice(t_mem, None))
test_after = after["accuracy"].sel(split="test")
print(f"past memorisation (step >= {t_mem:g}): {after.sizes['step']} checkpoints, "
      f"test accuracy {float(test_after[0]):.3f} -> {float(test_after[-1]):.3f}")

# %% [markdown]
# ## Local complexity: one layer, LC phases, lead/lag with generalisation

# %%
has_lc = "lc" in run.children
if has_lc:
    lc = run["lc"].to_dataset()
    last_layer = lc["layer"].values[-1]
    lc_layer = lc["lc_mean"].sel(split="train", layer=last_layer).isel(radius=0)
    lc_after = lc_layer.sel(step=slice(t_mem, None))
    phases = lc.grok.lc_phases(split="train", radius=lc["radius"].values[0])
    print(f"LC(train) of layer {last_layer} past memorisation: {float(lc_after.min()):.3g}"
          f"..{float(lc_after.max()):.3g}; peak of the total at step {phases['t_peak']:g}")
    events = run.grok.events()
    if "lc_fall" in events and "generalisation" in events:
        print(run.grok.lead_lag("lc_fall", "generalisation"))

# %% [markdown]
# ## Plots with xarray: accuracy and per-layer LC over log step, onsets as lines

# %%
fig, axes = plt.subplots(1, 2 if has_lc else 1, figsize=(10 if has_lc else 5, 3.5), squeeze=False)
acc["accuracy"].sel(step=slice(1, None)).plot.line(x="step", hue="split", xscale="log", ax=axes[0, 0])
if has_lc:
    lc["lc_mean"].sel(split="train", step=slice(1, None)).isel(radius=0).plot.line(
        x="step", hue="layer", xscale="log", ax=axes[0, 1])
for ax in axes.flat:
    for o in onsets.values():
        if o.found and o.step > 0:
            ax.axvline(o.step, ls="--", lw=0.8, color="grey")
fig.tight_layout()
OUT.mkdir(parents=True, exist_ok=True)
figure = OUT / "notebook.png"
fig.savefig(figure, dpi=100)
print(f"figure: {figure}")
