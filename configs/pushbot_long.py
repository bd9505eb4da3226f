"""The quickstart model trained longer, with a latent that carries something.

    python train.py --config configs/pushbot_long.py --workdir runs/pushbot_long
    python eval.py --workdir runs/pushbot_long --num_samples 10

Same data, model and decoder pathways as configs/pushbot.py; 8 epochs x 200 steps at batch 8,
training windows of 12 frames drawn anywhere in the 30-frame sequences (data.random_offset),
and free bits (1 nat per latent dimension and frame) so that the KL term does not push the
posterior onto the prior: pushbot hides each object's friction, so how far a pushed object
slides is not in the conditions, and samples of the latent can differ there.

MEASURED
"""

from configs import pushbot


def get_config():
    c = pushbot.get_config()
    c.data.random_offset = True
    c.train.epoch_size = 200
    c.train.niter = 8
    c.train.kl.free_bits = 1.0
    return c
