"""The ways a benchmark scenario is run, side by side on the same model in the same process.

- `SeedWay`: the seed's way, as on the model card: `pipeline("image-text-to-text")` for one
  question, plain `model.generate` on processor outputs for decode, batches (left-padded) and chats
  (the whole conversation re-encoded every turn; the seed has no KV reuse).
- `DsvlWay`: dsvl's engine, either its default path (dynamic cache, eager) or its fast path
  (static cache + compiled decode), optionally quantized. Single questions and chats go through
  `LocalEngine.run`, batches through `dsvl_cli.batching.generate_batch` (which adds the fast path's
  static cache and compile config when the engine has them).

Every method returns wall seconds for a call that generates exactly the tokens asked for (EOS is
suppressed in the model's generation config, see build.suppress_eos); CUDA work is synchronised.
"""

from __future__ import annotations

import time
from pathlib import Path

PROMPT = "Describe this image in detail."


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def chat_turns(n_turns: int) -> list[str]:
    return [PROMPT] + [f"Question {k}: what else is in the picture, and where?" for k in range(2, n_turns + 1)]


def _answer(tokens: int) -> str:
    """A fixed assistant answer of roughly `tokens` tokens (the history of a chat)."""
    return " ".join(["the red square is above the blue circle"] * max(1, tokens // 8))


class SeedWay:
    name = "seed"
    label = "seed (pipeline/generate)"

    def __init__(self, model, processor, device: str):
        from transformers import pipeline

        self.model, self.processor, self.device = model, processor, device
        self.pipe = pipeline("image-text-to-text", model=model, processor=processor, device=model.device)

    @staticmethod
    def load_first_token(folder: Path, device: str, dtype, jpeg: Path) -> float:
        """From a saved folder to the first answer token, the model card's way (returns seconds)."""
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

        from build import suppress_eos

        started = time.perf_counter()
        processor = AutoProcessor.from_pretrained(folder)
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype, device_map=device).eval()
        suppress_eos(model)
        pipe = pipeline("image-text-to-text", model=model, processor=processor, device=model.device)
        with torch.inference_mode():
            pipe(text=_messages(jpeg), max_new_tokens=1, return_full_text=False)
        sync(device)
        return time.perf_counter() - started

    def ask(self, jpeg: Path, new_tokens: int) -> float:
        """One JPEG and a short prompt through the pipeline, from the file on disk."""
        started = time.perf_counter()
        self.pipe(text=_messages(jpeg), max_new_tokens=new_tokens, return_full_text=False)
        sync(self.device)
        return time.perf_counter() - started

    def generate(self, messages_batch: list[list[dict]], new_tokens: int) -> float:
        """Plain `generate` on processor outputs (left-padded batch), as on the model card."""
        import torch

        started = time.perf_counter()
        inputs = self.processor.apply_chat_template(
            messages_batch, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
            padding=True, processor_kwargs={"padding_side": "left"},
        ).to(self.model.device, dtype=self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
        assert out.shape[1] - inputs["input_ids"].shape[1] == new_tokens
        sync(self.device)
        return time.perf_counter() - started

    def decode(self, jpeg: Path, new_tokens: int) -> float:
        return self.generate([_messages(jpeg)], new_tokens)

    def batch(self, jpegs: list[Path], new_tokens: int) -> float:
        return self.generate([_messages(j) for j in jpegs], new_tokens)

    def chat_turn(self, jpeg: Path, n_turns: int, answer_tokens: int, reuse: bool) -> float:
        """Turn `n_turns` of a chat: the seed re-encodes the whole conversation every turn."""
        if reuse:
            raise NotImplementedError("the seed's way has no KV reuse: it re-encodes the whole chat")
        messages: list[dict] = []
        for k, text in enumerate(chat_turns(n_turns)):
            content = ([{"type": "image", "path": str(jpeg)}] if k == 0 else []) + [{"type": "text", "text": text}]
            messages.append({"role": "user", "content": content})
            if k < n_turns - 1:
                messages.append({"role": "assistant", "content": [{"type": "text", "text": _answer(answer_tokens)}]})
        return self.generate([messages], 1)


def _messages(jpeg: Path, text: str = PROMPT) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "path": str(jpeg)}, {"type": "text", "text": text}]}]


class DsvlWay:
    """dsvl's engine on a model: `fast` adds the static cache (+ compiled decode step, `compile`)."""

    def __init__(self, engine, name: str, label: str):
        self.engine, self.name, self.label = engine, name, label
        self.device = engine.device

    @staticmethod
    def load_first_token(settings, jpeg: Path) -> tuple[float, object]:
        """From a saved folder to the first answer token through `LocalEngine.load`; (seconds, engine).

        `settings.compile` picks the path; the first token comes from the (eager) prefill, so this
        does not include compiling the decode step (the decode row's `first_call_s` shows that)."""
        from build import suppress_eos
        from dsvl_cli.engine.local import LocalEngine

        started = time.perf_counter()
        engine = LocalEngine.load(settings)
        suppress_eos(engine.model)
        DsvlWay(engine, "", "").ask(jpeg, 1)
        return time.perf_counter() - started, engine

    def _gen(self, new_tokens: int):
        from dsvl_cli.settings import GenerationSettings

        return GenerationSettings(max_new_tokens=new_tokens)

    def ask(self, jpeg: Path, new_tokens: int) -> float:
        from dsvl_cli.conversation import Conversation
        from dsvl_cli.images import load_images

        started = time.perf_counter()
        result = self.engine.run(Conversation.single(PROMPT, load_images([str(jpeg)])), self._gen(new_tokens))
        sync(self.device)
        assert result.stats.generated_tokens == new_tokens, result.stats
        return time.perf_counter() - started

    def decode(self, jpeg: Path, new_tokens: int) -> float:
        return self.ask(jpeg, new_tokens)

    def batch(self, jpegs: list[Path], new_tokens: int) -> float:
        from dsvl_cli.engine import batched as batching
        from dsvl_cli.conversation import Conversation
        from dsvl_cli.images import load_images

        started = time.perf_counter()
        items = [batching.BatchItem.prepare(self.engine, Conversation.single(PROMPT, load_images([str(j)])))
                 for j in jpegs]
        results = batching.generate_batch(self.engine, items, self._gen(new_tokens))
        sync(self.device)
        elapsed = time.perf_counter() - started
        failed = [r for r in results if isinstance(r, Exception)]
        if failed:  # generate_batch returns errors per item (e.g. out of memory even alone)
            raise RuntimeError(f"batch of {len(jpegs)}: {failed[0]}")
        assert all(r.stats.generated_tokens == new_tokens for r in results), [r.stats for r in results]
        return elapsed

    def chat_turn(self, jpeg: Path, n_turns: int, answer_tokens: int, reuse: bool) -> float:
        """Turn `n_turns` of a chat with the same history as the seed's; with `reuse`, the earlier
        turns ran through a PromptCache first (untimed), so turn n prefills only what is new."""
        from dsvl_cli.conversation import Conversation
        from dsvl_cli.engine.streaming import PromptCache
        from dsvl_cli.images import load_images

        turns = chat_turns(n_turns)
        conversation = Conversation()
        cache = PromptCache() if reuse else None
        for k, text in enumerate(turns[:-1]):
            conversation.add_user(text, load_images([str(jpeg)]) if k == 0 else [])
            if reuse:  # as in a real chat: each turn runs, then its answer joins the history
                self.engine.run(conversation, self._gen(1), cache=cache)
            conversation.add_assistant(_answer(answer_tokens))
        conversation.add_user(turns[-1])
        sync(self.device)
        started = time.perf_counter()
        result = self.engine.run(conversation, self._gen(1), cache=cache)
        sync(self.device)
        elapsed = time.perf_counter() - started
        assert not reuse or result.stats.cached_tokens > 0, result.stats
        return elapsed
