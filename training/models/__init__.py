"""The model families, each a config dataclass beside its ``nn.Module`` (nanoGPT style).

Every network takes RAW inputs (its scaling lives in buffers) and returns logits or scaled
values; ``Predictor`` adds the task's output head (softmax, sigmoid, un-scaling) so the module
that is exported maps raw inputs to contract outputs. Training uses the bare network.
"""

from training.models.cnn import CNN, CNNConfig
from training.models.fnn import FNN, FNNConfig
from training.models.head import Predictor
from training.models.rnn import RNNConfig, SeriesRNN
from training.models.text import TextRNN, TextRNNConfig

__all__ = [
    "CNN",
    "FNN",
    "CNNConfig",
    "FNNConfig",
    "Predictor",
    "RNNConfig",
    "SeriesRNN",
    "TextRNN",
    "TextRNNConfig",
]
