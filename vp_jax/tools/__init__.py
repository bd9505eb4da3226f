"""Command-line tools beside train.py and eval.py.

``python -m vp_jax.tools.compare DIR ...``   runs side by side: tables and curves
``python -m vp_jax.tools.whatif ...``        predictions under edited actions
``python -m vp_jax.tools.summary --config``  the parameter table
``python -m vp_jax.tools.study --config``    runs over settings, resumed, written up as a report
``cli``                                      what every command does before JAX starts
"""
