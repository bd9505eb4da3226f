"""The quickstart: a small action-conditioned model on the synthetic robot-pushing set (pushbot).

    python train.py --config configs/pushbot.py --workdir runs/pushbot
    python eval.py --workdir runs/pushbot

train.py generates the data (pushbot version 1: 1,000 train / 256 validate / 256 test
sequences, ~25 s) into data/pushbot on first use, then trains 8 epochs x 50 steps at batch 8.
configs/pushbot_chance.py trains the same model on version 2, where chance decides part of the
scored frames.

Model: the lab's architecture at reduced width (enc_widths 16-32-64-64, g_dim 64, z_dim 8,
rnn_size 128; about 1.2 M parameters, `python -m vp_jax.tools.summary --config configs/pushbot.py`),
learned prior, skips from the last context frame, and three changes that make it predict the
robot within minutes (docs/model.md, "Decoder pathways"):

* the conditions are standardised with the training split's statistics;
* a condition field in the decoder (8 channels at 8, 16 and 32 pixels) shows the decoder where
  the condition puts the end effector, and the decoder composites its painting over the last
  context frame instead of redrawing the whole frame;
* no BatchNorm on the predictor's output (SVG has none; the lab's BatchNorm1d there, used with
  running statistics on predicted inputs, cost 0.68 dB of test PSNR at this length).

Measured (the README's quickstart command on a fresh copy, 2-core Intel Xeon CPU: 9 min 34 s
including the install; 1.0 s per step), test split, 256 sequences, `eval.py` defaults:

                              PSNR (dB)  SSIM   PSNR moving (dB)
    model                        26.17   0.872   17.93
    copy last context frame      20.22   0.788   11.45
    shuffled conditions          21.00   0.770   13.82
    posterior (teacher forced)   26.26   0.874   18.00

action sensitivity +5.17 dB (+4.11 dB on the moving pixels); the KL is ~1e-5 nats per frame: this
short run leaves the latent unused. The gripper follows the conditions but is drawn blurred.
"""

from configs import lab_bair


def get_config():
    c = lab_bair.get_config()
    c.model.enc_widths = (16, 32, 64, 64)
    c.model.g_dim = 64
    c.model.z_dim = 8
    c.model.rnn_size = 128
    c.model.skip_frame = "last_context"
    c.model.predictor_bn_head = False
    c.model.decoder_cond = 8
    c.model.output = "composite"
    c.data.source = "pushbot"
    c.data.root = "data/pushbot"
    c.data.pushbot = dict(train=1000, validate=256, test=256, seed=0, version=1)  # the figures above
    c.data.normalize_condition = True
    c.train.batch_size = 8
    c.train.epoch_size = 50
    c.train.epochs = 8
    c.train.lr_schedule = "cosine"
    c.train.kl.schedule = "monotonic"
    c.train.kl.cycles = 1
    c.train.kl.beta_max = 1e-3
    c.eval.num_val_batches = 2
    c.eval.num_gifs = 2
    return c
