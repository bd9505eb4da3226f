"""Flax Linen networks of the conditional VAE (channels-last): see ``docs/design.md``.

``layers``  BatchNorm over a time axis, vgg_layer, initialisers
``vgg64``   Encoder / Decoder (VGG-64 with skips)
``lstm``    TorchLSTMCell, LSTMStack (frame predictor), GaussianLSTM (posterior / prior)
``cvae``    ConditionalVAE composing them; initial_state, init_variables, abstract_variables
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
from vp_jax.models.lstm import GaussianLSTM, LSTMStack, TorchLSTMCell, reparameterize, zero_lstm_state
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
