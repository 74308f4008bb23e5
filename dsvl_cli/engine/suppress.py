"""The model's suppressed tokens (generation_config.suppress_tokens: DeepSeek-VL's image tokens) as a
logits processor whose mask is built once, not at every step.

transformers' SuppressTokensLogitsProcessor builds an arange and an isin over the whole vocabulary
at every step (3% of a tiny model's decode step). Where it goes:
- greedy generations (engine/core.py's plan): transformers is told not to build its own and this
  one runs after transformers' processors instead of among them. For greedy decoding the order does
  not matter: every processor a greedy run can have (repetition penalty, minimum length, the
  grammar mask, no-repeat n-grams, biases) maps -inf to -inf and leaves the other tokens as they
  are, and the argmax of the same scores is the same token. Not under --logprobs (the recorder puts
  the suppression right behind itself, engine/core.py), never for sampling (top-k / top-p read the
  scores in transformers' order);
- the engine loop's rows (engine/rows.py) swap transformers' instance for this one in place, so a
  sampled row keeps transformers' order too.
"""

from __future__ import annotations


class SuppressedTokens:
    """-inf for each suppressed token: the scores of transformers' SuppressTokensLogitsProcessor."""

    def __init__(self, tokens) -> None:
        self.suppress_tokens = tokens  # a 1-D LongTensor
        self._mask = None

    def __call__(self, input_ids, scores):
        import torch

        mask = self._mask
        if mask is None or mask.shape[-1] != scores.shape[-1] or mask.device != scores.device:
            vocab = torch.arange(scores.shape[-1], device=scores.device)
            mask = self._mask = torch.isin(vocab, self.suppress_tokens.to(scores.device))
        return scores.masked_fill(mask, -float("inf"))
