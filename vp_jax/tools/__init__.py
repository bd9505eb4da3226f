"""Command-line tools beside train.py and eval.py.

``python -m vp_jax.tools.compare DIR ...``   runs side by side: tables and curves
``python -m vp_jax.tools.whatif ...``        predictions under edited actions
``python -m vp_jax.tools.summary --config``  the parameter table
``cli``                                      what every command does before JAX starts
"""
