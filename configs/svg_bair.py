"""The original SVG-LP BAIR run (Denton & Fergus 2018): no condition, no BN head, beta 1e-4.

Batch 100, constant KL weight 1e-4, 300 epochs x 600 iterations, 2 context + 10 future frames
for training (the paper evaluates 28 future frames, best of 100 samples).

    python train.py --config configs/svg_bair.py --workdir runs/svg_bair \
        --config.data.root=/path/to/processed_data

Model: 22,831,747 parameters. Published (action-free BAIR, best of 100): 18.95 dB / SSIM 0.806
on 28 frames -- not comparable with the lab's 10-frame, action-conditioned PSNR.
"""

from configs import lab_bair


def get_config():
    c = lab_bair.get_config()
    c.model.cond_dim = 0
    c.model.predictor_bn_head = False
    c.train.batch_size = 100
    c.train.kl.schedule = "constant"
    c.train.kl.beta_max = 1e-4
    c.eval.num_samples = 100
    return c
