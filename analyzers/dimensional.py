"""Dimensional emotion (arousal, dominance, valence) with a regression head of the audEERING form.

transformers has no class for this head, so it is written out here after the model card of
``audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim`` (its "Usage" section; Wagner et al.,
"Dawn of the transformer era in speech emotion recognition: closing the valence gap", IEEE TPAMI
2023): the wav2vec2 encoder's last hidden states, mean-pooled over time, then ``dense`` -> tanh ->
``out_proj``, one output per label of ``config.id2label`` (arousal, dominance, valence for that
model, each roughly 0..1). The weight names (``wav2vec2.*``, ``classifier.dense.*``,
``classifier.out_proj.*``) are the checkpoint's, so ``from_pretrained`` fills every weight; it is
tested against the model card's code written out in the tests.

The forward pass returns ``{"logits": (batch, labels)}`` like transformers' classifiers, so the
rest of the emotion path (precision, TorchScript preparation, batching) treats both alike.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2Model, Wav2Vec2PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

__all__ = ["RegressionHead", "Wav2Vec2ForSpeechClassification"]


class RegressionHead(nn.Module):
    """dense -> tanh -> out_proj (dropout between, inactive at inference)."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(getattr(config, "final_dropout", 0.0))
        self.out_proj = nn.Linear(config.hidden_size, int(config.num_labels or 0))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.dropout(features)
        x = torch.tanh(self.dense(x))
        return self.out_proj(self.dropout(x))


class Wav2Vec2ForSpeechClassification(Wav2Vec2PreTrainedModel):
    """wav2vec2 + mean pooling + :class:`RegressionHead`, loaded with ``from_pretrained``."""

    def __init__(self, config: Wav2Vec2Config) -> None:
        super().__init__(config)
        self.wav2vec2 = Wav2Vec2Model(config)
        self.classifier = RegressionHead(config)
        self.post_init()

    def forward(self, input_values: torch.Tensor, **_: Any) -> SequenceClassifierOutput:
        hidden = self.wav2vec2(input_values)[0]
        return SequenceClassifierOutput(logits=self.classifier(hidden.mean(dim=1)))
