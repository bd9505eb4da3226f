"""A tiny model on a tiny synthetic set: for tests and CI (seconds per run on 2 CPU cores).

    python train.py --config configs/tiny.py --workdir /tmp/vp_tiny

Not meant to learn anything; it exercises every code path of the full model at small size.
"""

from configs import lab_bair


def get_config():
    c = lab_bair.get_config()
    c.n_past = 2
    c.n_future = 3
    c.n_eval = 5
    c.model.enc_widths = (4, 4, 8, 8)
    c.model.g_dim = 8
    c.model.z_dim = 4
    c.model.rnn_size = 16
    c.data.source = "pushbot"
    c.data.root = "data/pushbot_tiny"
    c.data.seq_len = 8
    c.data.pushbot = dict(train=16, validate=8, test=8, seed=0, version=2)
    c.train.batch_size = 4
    c.train.epoch_size = 3
    c.train.epochs = 2
    c.train.kl.cycles = 1
    c.eval.batch_size = 4
    c.eval.num_gifs = 1
    c.checkpoint.keep = 2
    return c
