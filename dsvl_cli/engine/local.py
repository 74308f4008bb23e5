"""The local engine: a model loaded here, conversations turned into its inputs, answers streamed.

ask, chat, batch and serve share this one way to build inputs; generation itself goes through
engine/core.py (one question: engine/streaming.py; several at once: engine/batched.py). torch and
transformers are imported when a model is loaded, not before.

Limits: one generation at a time per engine (the server serialises access).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from dsvl_cli.conversation import IMAGE_TOKEN, Conversation
from dsvl_cli.engine import decisions, loading, runtime, scoring, streaming
from dsvl_cli.engine.backend import Backend
from dsvl_cli.engine.preprocess import pixels as preprocess_pixels
from dsvl_cli.images.cache import SourceCache
from dsvl_cli.results import Chunk
from dsvl_cli.settings import GenerationSettings, ModelSettings

PIXEL_MEMO_SIZE = 16  # pictures whose preprocessed tensors are kept (a 1024 px one: ~14 MB)


class LocalEngine(Backend):
    supports_batching = True
    counts_tokens = True

    def __init__(self, model, processor, device: str, resolved: loading.ResolvedModel, settings: ModelSettings):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.device = device
        self.resolved = resolved
        self.settings = settings
        self._default_preamble: str | None = None
        self.fast = None  # a fastpath.FastPath once enable_fast_path() ran
        # id(picture) -> (picture, tensors): the value holds the picture, so its id stays its own
        self._pixels = SourceCache(keep=PIXEL_MEMO_SIZE)
        self._counter = None  # count_tokens' own tokenizer (made on first use)
        self._count_lock = threading.Lock()
        self._grammars = None  # structured.grammar.Grammars, made for the first --schema / --regex
        self._grammars_lock = threading.Lock()

    @classmethod
    def load(cls, settings: ModelSettings, *, verbose: bool = False, prefer_fast: bool = False) -> LocalEngine:
        """Load the model. `prefer_fast`: the caller runs many generations (chat, batch, serve), so
        the fast path pays off; `--compile/--no-compile` (settings.compile) overrides it."""
        from dsvl_cli.engine import fastpath
        from dsvl_cli.engine import quantize

        if settings.quantize:  # fail before a 14 GB download, not after it
            device = runtime.pick_device(settings.device)
            quantize.check(settings.quantize, device, runtime.pick_dtype(settings.dtype, device))
        resolved = loading.resolve(settings)
        model, processor, device = loading.load(resolved, settings, verbose=verbose)
        engine = cls(model, processor, device, resolved, settings)
        if fastpath.wanted(settings.compile, prefer_fast=prefer_fast, device=device):
            engine.enable_fast_path()
        return engine

    def enable_fast_path(self, *, compile: bool = True) -> None:
        """Static KV cache + compiled decode step for every later generation (see fastpath.py)."""
        from dsvl_cli.engine.fastpath import FastPath

        self.fast = FastPath.for_engine(self.model, self.device, runtime.dsvl_home(), compile=compile)

    # -- facts ----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.resolved.name

    @property
    def random_weights(self) -> bool:
        return self.resolved.random_weights

    @property
    def context_length(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def default_batch_size(self) -> int:
        """8 on CPU and MPS; on CUDA 16, or 32 with 40 GiB free after loading the model."""
        if not self.device.startswith("cuda"):
            return 8
        import torch

        free, _ = torch.cuda.mem_get_info(self.device)
        return 32 if free >= 40 * 2**30 else 16

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    # -- inputs ---------------------------------------------------------------------------------
    def render(self, conversation: Conversation) -> str:
        """The prompt text through the model's own chat template.

        The DeepSeek-VL template bakes in a default system prompt; a custom system prompt replaces
        that preamble (as DeepSeek's own `sft_format` does), an empty one removes it.
        """
        text = self.processor.apply_chat_template(
            conversation.template_messages(), add_generation_prompt=True, tokenize=False
        )
        if conversation.system is None:
            return text
        preamble = self.default_preamble()
        if preamble and text.startswith(preamble):
            text = text[len(preamble):]
        return (conversation.system.strip() + "\n\n" if conversation.system.strip() else "") + text

    def default_preamble(self) -> str:
        """The template's built-in system prompt: whatever it writes before the first "User:"."""
        if self._default_preamble is None:
            probe = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
            text = self.processor.apply_chat_template(probe, add_generation_prompt=False, tokenize=False)
            self._default_preamble = text[: text.find("User:")] if "User:" in text else ""
        return self._default_preamble

    def expand_placeholders(self, prompt: str) -> str:
        """The prompt with each image placeholder expanded to its run of image tokens, exactly as the
        processor does before tokenizing."""
        return prompt.replace(IMAGE_TOKEN, IMAGE_TOKEN * int(self.processor.num_image_tokens))

    def pixels(self, image, *, remember: bool = True) -> dict[str, Any]:
        """The image processor's tensors for one picture (1, 3, H, W).

        `remember`: keep them for the last few pictures: a chat re-encodes its whole history every
        turn, and preprocessing a 1024 px image costs tens of milliseconds that KV reuse would
        otherwise not save. Batch and serve pass False: they use each picture once, and a memo
        would keep full-resolution pictures alive after their request."""
        def preprocess(_key) -> tuple[Any, dict[str, Any]]:
            return image, preprocess_pixels(self.processor.image_processor, image)

        if not remember:
            return preprocess(None)[1]
        return self._pixels.get(id(image), preprocess)[1]

    def encode(self, conversation: Conversation, *, remember: bool = True):
        """input_ids (1, L), attention_mask (1, L) and pixel tensors (n_images, 3, H, W) on the device:
        what `processor(text=..., images=...)` returns (tested equal), with per-picture memoized
        pixels when `remember` (a caller that keeps a KV cache for a next turn: chat)."""
        import torch
        from transformers import BatchFeature

        data = dict(self.tokenizer(self.expand_placeholders(self.render(conversation)), return_tensors="pt"))
        per_image = [self.pixels(loaded.image, remember=remember) for loaded in conversation.images]
        if per_image:
            data.update({key: torch.cat([p[key] for p in per_image]) for key in per_image[0]})
        return BatchFeature(data).to(self.model.device, dtype=self.model.dtype)

    def image_spans(self, ids: list[int]) -> list[tuple[int, int]]:
        """(start, end) of each image's placeholder run in `ids`, in order."""
        per_image = int(self.processor.num_image_tokens)
        positions = [i for i, tok in enumerate(ids) if tok == self.image_token_id]
        return [(positions[k], positions[k] + per_image) for k in range(0, len(positions), per_image)]

    @property
    def image_tokens(self) -> int:
        """Tokens one picture takes in the prompt."""
        return int(self.processor.num_image_tokens)

    def text_tokens(self, texts: list[str]) -> list[int]:
        """How many tokens each text is, without special tokens (for planning, not for generating)."""
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []

    @property
    def image_side(self) -> int:
        """The longest side the processor resizes to (SAM's 1024 on the 7B, SigLIP's 384 on 1.3B)."""
        processor = self.processor.image_processor

        def side(size) -> int:  # a dict or transformers' SizeDict; 1.3B's processor has no high_res_size
            value = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
            return max(value(k) or 0 for k in ("height", "width", "longest_edge"))

        return max(side(processor.size), side(getattr(processor, "high_res_size", None)))

    def count_tokens(self, conversation: Conversation) -> int:
        """The rendered prompt's tokens, each image placeholder counted as its run of image tokens.

        A tokenizer of its own: the one `generate` uses changes its padding settings per call
        (batched encoding), and a fast tokenizer must not be used from two threads while that
        happens (the server counts on its parse threads while the worker generates)."""
        with self._count_lock:
            if self._counter is None:
                from tokenizers import Tokenizer

                self._counter = Tokenizer.from_str(self.tokenizer.backend_tokenizer.to_str())
                self._counter.no_padding()
                self._counter.no_truncation()
        ids = self._counter.encode(self.render(conversation), add_special_tokens=True).ids
        return len(ids) + len(conversation.images) * (int(self.processor.num_image_tokens) - 1)

    @property
    def grammars(self):
        """llguidance's view of this tokenizer and the compiled grammars (structured/grammar.py)."""
        with self._grammars_lock:
            if self._grammars is None:
                from dsvl_cli.structured.grammar import Grammars

                eos = self.model.generation_config.eos_token_id
                self._grammars = Grammars(self.tokenizer, vocab_size=int(self.model.config.text_config.vocab_size),
                                          eos_ids=eos if isinstance(eos, list) else [eos])
        return self._grammars

    # -- generation (engine/core.py is where `generate` runs) -----------------------------------
    def new_cache(self) -> streaming.PromptCache:
        return streaming.PromptCache()

    def stream(self, conversation: Conversation, gen: GenerationSettings, *,
               cache: streaming.PromptCache | None = None, stop_event: threading.Event | None = None) -> Iterator[Chunk]:
        """TextChunks as the answer is generated, then one Result (engine/streaming.py).

        Ctrl-C (KeyboardInterrupt) or `stop_event` stops generation; the Result then has
        finish_reason "interrupted" and the partial answer."""
        if decisions.wanted(gen):  # typed questions: options scored from one shared prefill
            yield from decisions.stream(self, conversation, gen)
            return
        if scoring.wanted(gen):  # --choices: the labels are scored, nothing is generated
            yield from scoring.stream(self, conversation, gen, remember=cache is not None)
            return
        prompt = streaming.prepare(self, conversation, gen, cache)
        yield from streaming.run(self, prompt, stop_event)

    def warm_loop(self, *, max_rows: int, max_waiting: int, cache_bytes: int | None = None):
        """The continuous-batching loop over this engine (engine/loop.py), not started; `cache_bytes`:
        the prefix cache's bound (default: from free memory, loop.default_budgets)."""
        from dsvl_cli.engine.loop import EngineLoop, default_budgets

        budgets = default_budgets(self.device)
        if cache_bytes is not None:
            budgets["cache_bytes"] = cache_bytes
        return EngineLoop(self, max_rows=max_rows, max_waiting=max_waiting, **budgets)

    def generate_batch(self, items: list, gen: GenerationSettings, **kwargs) -> list:
        """Several single-turn questions in one call (engine/batched.py)."""
        from dsvl_cli.engine.batched import generate_batch

        return generate_batch(self, items, gen, **kwargs)
