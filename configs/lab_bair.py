"""The NYCU lab's conditional VAE on BAIR robot pushing (SVG-LP + action/position condition).

Learned prior, condition c_t = [action (4), end-effector position (3)], BatchNorm head on the
frame predictor, cyclical KL annealing (3 cycles, ratio 0.5, beta up to 1), lr 0.002, batch 12,
300 epochs x 600 iterations, 2 context frames + 10 predicted (docs/model.md).

    python train.py --config configs/lab_bair.py --workdir runs/lab_bair \
        --config.data.root=/path/to/processed_data
    # or the original release's TFRecords (no TensorFlow; packed into a cache on first use):
    python train.py --config configs/lab_bair.py --workdir runs/lab_bair \
        --config.data.source=bair --config.data.root=/path/to/softmotion30_44k
    # or TFDS (ArrayRecord copy prepared once, see README):
    python train.py --config configs/lab_bair.py --workdir runs/lab_bair \
        --config.data.source=tfds --config.data.root=~/tensorflow_datasets

Model: 22,833,795 parameters (`python -m vp_jax.tools.summary --config configs/lab_bair.py`).
Hardware and time: a full run is 180,000 iterations; the per-iteration cost is measured by
`benchmarks/train_step.py` (see docs/performance.md). Expected result (lab grading): test PSNR
>= 25 dB on 10 frames predicted from 2; students report 25.6-26.5 dB. Not yet measured with vp_jax.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 1
    c.n_past = 2
    c.n_future = 10
    c.n_eval = 12

    c.model = ml_collections.ConfigDict()
    c.model.image_size = 64
    c.model.channels = 3
    c.model.enc_widths = (64, 128, 256, 512)
    c.model.g_dim = 128
    c.model.z_dim = 64
    c.model.rnn_size = 256
    c.model.predictor_layers = 2
    c.model.posterior_layers = 1
    c.model.prior_layers = 1
    c.model.cond_dim = 7
    c.model.learned_prior = True
    c.model.predictor_bn_head = True
    c.model.skip_frame = "original"
    c.model.torch_lstm_biases = True
    c.model.bn_momentum = 0.9
    c.model.bn_eps = 1e-5
    c.model.dtype = "float32"
    # Decoder pathways the lab model does not have (docs/model.md): a condition field in the
    # decoder (channels; 0 = off) and compositing output ('frame' = the lab's sigmoid image).
    c.model.decoder_cond = 0
    c.model.decoder_cond_hidden = 32
    c.model.field_g = False  # the field reads the predictor's output g_t beside c_t
    c.model.output = "frame"
    # With 'composite': kernels from the predictor's output move the previous frame (CDNA); 0 = off.
    c.model.transforms = 0
    c.model.transform_size = 7
    # The learned prior sees the condition c_t beside h_{t-1} (SVG's sees h_{t-1} only).
    c.model.prior_cond = False
    # The posterior sees a code of the frame pair (x_{t-1}, x_t) beside h_t (SVG's sees h_t).
    c.model.posterior_frames = False
    # Initial log-variance of the posterior (0 = the original; negative: its samples start nearly exact).
    c.model.posterior_logvar_init = 0.0

    c.data = ml_collections.ConfigDict()
    c.data.source = "lab"
    c.data.root = "data/processed_data"
    c.data.camera = "image_aux1"
    c.data.cache_dir = ""
    c.data.seq_len = 30
    c.data.random_offset = False
    c.data.normalize_condition = False
    c.data.skip_bad = False
    c.data.tfds_validate = 256  # tfds: validate = the last 256 of TFDS train (no validation split there)
    c.data.pushbot = ml_collections.ConfigDict(dict(train=1000, validate=256, test=256, seed=0, version=2))

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 12
    c.train.epoch_size = 600
    c.train.epochs = 300
    c.train.lr = 0.002
    c.train.lr_schedule = "constant"
    c.train.warmup_steps = 0
    c.train.beta1 = 0.9
    c.train.beta2 = 0.999
    # free_bits: nats per latent dimension and frame that cost nothing (0 = the lab's plain KL).
    c.train.kl = ml_collections.ConfigDict(
        dict(schedule="cyclical", cycles=3, ratio=0.5, beta_max=1.0, per="epoch", free_bits=0.0)
    )
    c.train.tfr = ml_collections.ConfigDict(
        dict(start=1.0, start_decay_epoch=0, decay_step=0.0, lower_bound=0.0, mode="iteration")
    )
    c.train.max_nonfinite = 5
    # Memory options (docs/performance.md): recompute the encoder's and decoder's activations in
    # the backward pass; split each batch into grad_accum micro-batches (BatchNorm then sees
    # batch_size / grad_accum sequences at a time: see vp_jax/training/step.py).
    c.train.remat = False
    c.train.grad_accum = 1

    c.eval = ml_collections.ConfigDict()
    c.eval.every_epochs = 1
    c.eval.num_val_batches = 0
    c.eval.batch_size = 32
    c.eval.num_samples = 1
    c.eval.val_samples = 1  # samples per validation sequence: > 1 adds best-of-N and the latent's measures
    c.eval.bn_mode = "inference"
    c.eval.num_gifs = 4
    # psnr_moving scores the pixels whose target differs from the last context frame by more
    # than this (values in [0, 1]) in any channel.
    c.eval.moving_threshold = 0.05

    # Data parallelism (vp_jax/runtime/parallel.py): batch split over all devices. distributed = True:
    # several processes (README "Several devices"), jax.distributed.initialize() runs first in
    # each; a process whose heartbeats stop for heartbeat_timeout_s counts as dead and the others
    # stop; they wait initialization_timeout_s for each other at the start.
    c.parallel = ml_collections.ConfigDict(dict(distributed=False, heartbeat_timeout_s=100, initialization_timeout_s=300))

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.keep = 3
    return c
