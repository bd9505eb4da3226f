"""The lab model with a fixed N(0, I) prior (SVG-FP style) and monotonic KL annealing.

    python train.py --config configs/lab_bair_fixed_prior.py --workdir runs/lab_fp \
        --config.data.root=/path/to/processed_data

Model: 22,241,539 parameters. Expected (student reports): about 25.6 dB test PSNR.
Not yet measured with vp_jax.
"""

from configs import lab_bair


def get_config():
    c = lab_bair.get_config()
    c.model.learned_prior = False
    c.train.kl.schedule = "monotonic"
    c.train.kl.cycles = 1
    return c
