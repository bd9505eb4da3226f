"""The conditional VAE of SVG-LP: its Flax Linen networks (channels-last), its objective and sampling.

``layers``  BatchNorm over a time axis, vgg_layer, initialisers
``vgg64``   Encoder / Decoder (VGG-64 with skips)
``lstm``    TorchLSTMCell, LSTMStack (frame predictor), GaussianLSTM (posterior / prior)
``cvae``    ConditionalVAE composing them; initial_state, init_variables, abstract_variables
``rollout``   the frames unrolled with lax.scan under teacher-forcing masks
``losses``    KL terms and the objective MSE + beta KL
``schedules`` optax schedules of the learning rate, beta (monotonic / cyclical) and teacher forcing
``generation`` jitted sampling from the prior and reconstruction through the posterior
"""

from vp_jax.models.cvae import (
    ConditionalVAE,
    abstract_variables,
    check_cond,
    check_n_past,
    init_variables,
    initial_state,
)
from vp_jax.models.layers import BatchNorm, VGGLayer
from vp_jax.models.lstm import (
    GaussianLSTM,
    LSTMStack,
    TorchLSTMCell,
    reparameterize,
    zero_lstm_state,
)
from vp_jax.models.vgg64 import Decoder, Encoder

__all__ = [
    "BatchNorm",
    "ConditionalVAE",
    "Decoder",
    "Encoder",
    "GaussianLSTM",
    "LSTMStack",
    "TorchLSTMCell",
    "VGGLayer",
    "abstract_variables",
    "check_cond",
    "check_n_past",
    "init_variables",
    "initial_state",
    "reparameterize",
    "zero_lstm_state",
]
