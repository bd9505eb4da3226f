"""Pictures of runs: training curves, per-frame plots, strips, sample grids and GIFs (``visualize``)."""
