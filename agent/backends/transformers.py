"""Qwen3-VL through Hugging Face transformers: chat messages with screenshots in, one reply out.

Loads a local folder, or a hub id (downloaded once into the Hugging Face cache), with
`from_pretrained`; the tiny random checkpoint goes the same way. On a GPU: bf16, flash_attention_2 when flash-attn imports, else sdpa; on the CPU: float32.
Decoding is greedy and, by default, constrained to a native reply the policy can accept
(agent/backends/grammar.py); the loop still parses and checks every reply.
"""
from __future__ import annotations

import threading
from pathlib import Path
from agent.backends.base import BackendBase, JsonSchema, Message
from agent.backends.families import NATIVE, detect, family
from agent.backends.grammar import ReplyLogitsProcessor
from agent.backends.options import EngineOptions
from agent.backends.image_cache import PerImage
from agent.errors import BackendError, VlagentError

# Without a grammar nothing bounds the reply; a native one is ~30-60 tokens.
UNCONSTRAINED_MAX_NEW_TOKENS = 512
HUB_TIMEOUT_S = 10
PIECE_CACHE = 64  # template pieces remembered (system prompt, turns between screenshots)
IDLE_HORIZON = 2048  # tokens: between steps, decode graphs of the spans the next step may reach only
MODEL_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]  # no README images


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _pick_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _pick_dtype(dtype, device: str):
    import torch

    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise VlagentError("unknown dtype (try bfloat16, float16 or float32)")
    return dtype


def _attention(device: str) -> str:
    if device.startswith("cuda"):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def resolve_model(model: str) -> str:
    """A local folder holding the model. A hub id is taken from the local cache when there, else
    downloaded after one quick reachability check: without a network this fails in a second with a
    clear line, instead of minutes of retries per file inside from_pretrained."""
    import huggingface_hub as hub

    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise VlagentError(f"cannot load model {model}: the folder has no config.json")
        return str(path)
    if model.startswith(("/", ".", "~")) or model.count("/") != 1:
        raise VlagentError(f"cannot load model {model}: no such folder, and not a hub id like Qwen/Qwen3-VL-2B-Instruct")
    try:
        return hub.snapshot_download(model, allow_patterns=MODEL_FILES, local_files_only=True)
    except (OSError, ValueError):
        pass  # not cached
    if hub.constants.HF_HUB_OFFLINE:
        raise VlagentError(f"cannot load model {model}: not in the local cache and HF_HUB_OFFLINE is set (pass a local folder)")
    try:
        hub.HfApi().model_info(model, timeout=HUB_TIMEOUT_S)
        return hub.snapshot_download(model, allow_patterns=MODEL_FILES)
    except hub.errors.RepositoryNotFoundError:
        raise VlagentError(f"cannot load model {model}: no such model on the hub (or it is gated)") from None
    except Exception as e:  # network errors come from several libraries (httpx, requests, OSError)
        raise VlagentError(f"cannot load model {model}: {_one_line(e)} (no internet? pass a local folder)") from None


def _native_fits(folder: str) -> bool:
    """Whether the native load (agent/backends/qwen3vl_model.py) reads this checkpoint: a Qwen3-VL
    with the rope it implements, in safetensors files. Others (another family, a scaled rope, .bin
    weights) go through transformers."""
    from agent.backends.qwen3vl_model import read_config
    try:
        read_config(folder)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return any(Path(folder).glob("*.safetensors"))


def _vocab_size(folder: str, native: bool) -> int:
    if native:
        from agent.backends.qwen3vl_model import read_config
        return read_config(folder).text_config.vocab_size
    from transformers import AutoConfig
    return AutoConfig.from_pretrained(folder).text_config.vocab_size


def _in_thread(fn, *args):
    """fn(*args) started in a thread; .result() waits for it and raises what it raised."""
    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(1, thread_name_prefix="vlagent-load")
    try:
        return pool.submit(fn, *args)
    finally:
        pool.shutdown(wait=False)


def load_processor(model: str):
    """The model's processor. Qwen3-VL's full processor needs torchvision for its video part; CPU
    installs lack it, so fall back to an image-only processor built from the same files."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(model)
    except ImportError:
        return _image_only_processor(model)


def _image_only_processor(model: str):
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen3VLProcessor

    class ImageOnlyProcessor(Qwen3VLProcessor):
        """Qwen3VLProcessor with no video processor (videos are never sent)."""

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    tokenizer = AutoTokenizer.from_pretrained(model)
    image_processor = AutoImageProcessor.from_pretrained(model, backend="pil")
    return ImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                              chat_template=tokenizer.chat_template or _chat_template(model))


def _chat_template(model: str) -> str | None:
    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        path = cached_file(model, name, _raise_exceptions_for_missing_entries=False)
        if path:
            text = Path(path).read_text(encoding="utf-8")
            if name.endswith(".json"):
                import json

                text = json.loads(text)["chat_template"]
            return text
    return None


class TransformersBackend(BackendBase):
    def __init__(self, model: str | Path = "Qwen/Qwen3-VL-2B-Instruct", device: str | None = None, dtype=None,
                 max_new_tokens: int | None = None, constrained: bool = True, engine: bool | None = None,
                 options: EngineOptions | None = None, format: str | None = None):
        """`max_new_tokens` None: with a grammar, the grammar's own bound (a reply always completes);
        without, UNCONSTRAINED_MAX_NEW_TOKENS. `engine`: decode with agent/backends/engine.py (static KV
        cache, prefix reuse across steps, CUDA graphs); None = options.engine (on CUDA by default).
        `options`: the engine switches (agent/backends/options.py; the CLI reads them from the
        environment). `format`: the model family's reply format (agent/backends/families.py); None =
        recognised from the checkpoint."""
        model = str(model)
        self.name = f"transformers:{model}"
        self.options = options or EngineOptions.from_env()  # until every caller passes the CLI's
        self.max_new_tokens = max_new_tokens
        import time
        self.load_timings: dict[str, float] = {}  # seconds per phase of the load (the cold start's parts)
        try:
            import torch  # noqa: F401

            from agent.backends.prefetch import Prefetch
            self.device = _pick_device(device)
            folder = resolve_model(model)
            if engine is None:
                engine = self.options.engine_on(self.device)
            # With the engine, a Qwen3-VL checkpoint loads without transformers' modeling code (its
            # import is ~40 % of a cold start): agent/backends/qwen3vl_model.py, qwen3vl_processor.py.
            self.native = bool(engine and self.options.native and _native_fits(folder))
            prefetch = Prefetch(folder, self.device)  # the CUDA context and the weights' readahead, beside the import
            t0 = time.perf_counter()
            if self.native:
                from agent.backends.qwen3vl_model import read_tensors
                tensors = _in_thread(read_tensors, folder, self.device)  # onto the device beside the tokenizer's import
                from agent.backends.qwen3vl_processor import Processor, tokenizer_class
                tokenizer_class(folder)  # transformers' tokenizer code: the one import left
            else:
                tensors = None
                from agent.backends.hf_import import model_class
                model_class()  # the modeling code, without the packages vlagent never runs (hf_import.py)
            self.load_timings["import_s"] = time.perf_counter() - t0
        except ImportError as e:
            raise VlagentError(f"the transformers backend needs torch and transformers: {_one_line(e)}") from None
        self.dtype = _pick_dtype(dtype, self.device)
        self.reply_format = family(format) if format else detect(model, folder)
        self.format = self.reply_format.name
        self.constrainer = None
        self.folder = folder
        self._reference_processor = None
        t0 = time.perf_counter()
        try:
            self.processor = Processor(folder) if self.native else load_processor(folder)
            self.tokenizer = self.processor.tokenizer
            self.load_timings["processor_s"] = time.perf_counter() - t0
            self.load_timings["prefetch_wait_s"] = prefetch.wait()
            self.load_timings.update(prefetch.timings)
            grammar = None
            if constrained:  # the grammar's tables over the vocabulary (~1-2 s): beside the weights and the engine
                from agent.backends.grammar import make_constrainer
                grammar = _in_thread(make_constrainer, self.tokenizer, _vocab_size(folder, self.native))
            t1 = time.perf_counter()
            self.model = self._load(folder, tensors)
            tensors = None
            self.load_timings["weights_s"] = time.perf_counter() - t1
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise VlagentError(f"cannot load model {model}: {_one_line(e)}") from None
        self._preprocessed = PerImage()  # screenshot -> its pixel patches (encode)
        self._engine_images = PerImage()  # screenshot -> its EngineImage (key, grid, patches on demand)
        self._pieces: dict[str, list[int]] = {}  # template text between images -> token ids
        self._rendered = None  # (message-list key, (piece ids, images)) of the last render
        self._image_cfg = None
        # One call at a time: the loop runs each call in a thread with a deadline, so a call it
        # abandoned may still run when the next step asks; that step waits for it (see cancel()).
        self._lock = threading.Lock()
        self._render_lock = threading.RLock()
        self.engine = None
        if engine:
            from agent.backends.engine import make_engine

            t1 = time.perf_counter()
            self.engine = make_engine(self.model, options=self.options)
            self.load_timings["engine_s"] = time.perf_counter() - t1  # KV cache, warm-up, graph captures
            self.engine.tokenize = lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if grammar is not None:
            t1 = time.perf_counter()
            try:
                self.constrainer = grammar.result()
            except (OSError, ValueError, KeyError, RuntimeError) as e:
                raise VlagentError(f"cannot load model {model}: {_one_line(e)}") from None
            self.load_timings["grammar_wait_s"] = time.perf_counter() - t1

    def _load(self, folder: str, tensors=None):
        """The model: the native tree from `tensors` (a future of the files read onto the device)
        when self.native, else transformers' class; FP8 checkpoints either way; `options.fp8`
        quantises a bf16 one."""
        from agent.backends import fp8
        if self.native:
            from agent.backends import qwen3vl_model
            tensors = tensors.result()
            if fp8.checkpoint_layout(folder):
                return fp8.load_fp8(folder, self.dtype, self.device, native=True, tensors=tensors, gemm=self.options.fp8_gemm)
            model = qwen3vl_model.load(folder, self.dtype, self.device, tensors)
        elif fp8.checkpoint_layout(folder):  # an FP8 checkpoint (Qwen's fine-grained or compressed-tensors)
            return fp8.load_fp8(folder, self.dtype, self.device, _attention(self.device), gemm=self.options.fp8_gemm)
        else:
            from agent.backends.hf_import import model_class
            model = model_class().from_pretrained(
                folder, dtype=self.dtype, attn_implementation=_attention(self.device), device_map=self.device).eval()
        layout = getattr(self.options, "fp8", None)  # block|channel: 8-bit weights from a bf16 checkpoint
        if layout:
            fp8.quantize_model(model, layout, gemm=self.options.fp8_gemm)
        return model

    def _render(self, messages: list[Message]):
        """(token ids of the text between images, the images): the chat template rendered once per
        message list, however many times fits/prompt_tokens/encode ask. Pieces are tokenized apart (the
        image pad is a special token, so the tokenizer splits there anyway) and remembered, so the
        unchanged system prompt and history are not tokenized again every step."""
        with self._render_lock:  # the loop's fits() and a lookahead's prepare() may render at once
            return self._render_unlocked(messages)

    def _render_unlocked(self, messages: list[Message]):
        key = tuple((m["role"], tuple(("i", id(p["image"])) if p.get("type") == "image" else ("t", p.get("text"))
                                      for p in m["content"])) for m in messages)
        if self._rendered is not None and self._rendered[0] == key:
            return self._rendered[1]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        pieces = text.split(self.processor.image_token)
        images = [p["image"] for m in messages for p in m["content"] if p.get("type") == "image"]
        if len(pieces) != len(images) + 1:
            raise BackendError(f"the chat template placed {len(pieces) - 1} images for {len(images)} screenshots")
        ids = [self._piece_ids(piece) for piece in pieces]
        self._rendered = (key, (ids, images))  # holds the images: their ids cannot be reused meanwhile
        return ids, images

    def _piece_ids(self, piece: str) -> list[int]:
        ids = self._pieces.get(piece)
        if ids is None:
            ids = self.tokenizer(piece, add_special_tokens=False)["input_ids"]
            if len(self._pieces) >= PIECE_CACHE:
                self._pieces.pop(next(iter(self._pieces)))
            self._pieces[piece] = ids
        return ids

    def _placeholders(self, image) -> int:
        from agent.backends.qwen_images import image_config, image_tokens

        if self._image_cfg is None:
            with self._render_lock:
                self._image_cfg = image_config(self.processor, "")
        return image_tokens(*image.size, self._image_cfg) - 2  # less the vision start and end the template wrote

    def _ids(self, messages: list[Message]) -> tuple[list[int], list]:
        pieces, images = self._render(messages)
        pad = self.processor.image_token_id
        ids = list(pieces[0])
        for image, rest in zip(images, pieces[1:]):
            ids += [pad] * self._placeholders(image)
            ids += rest
        return ids, images

    def encode(self, messages: list[Message]):
        """Prompt tensors (input_ids, attention_mask, mm_token_type_ids, pixel_values, image_grid_thw)
        on the device: exactly what processor.apply_chat_template(tokenize=True) returns (a test holds
        them equal), but each screenshot is preprocessed once in its life, not once per step it stays
        in the history (~25 ms each on a GPU machine, ~85 ms on a CPU)."""
        import torch
        from transformers import BatchFeature

        ids, images = self._ids(messages)
        input_ids = torch.tensor([ids])
        data = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                "mm_token_type_ids": (input_ids == self.processor.image_token_id).long()}
        if images:
            pixels = [self._pixels(im) for im in images]
            data["pixel_values"] = torch.cat([pv for pv, _ in pixels])
            data["image_grid_thw"] = torch.cat([grid for _, grid in pixels])
        return BatchFeature(data).to(self.device)

    def engine_inputs(self, messages: list[Message]):
        """(token ids, EngineImages) for the engine. An EngineImage carries its content key and grid;
        its patches are made only if the engine has not encoded that screenshot already, on the
        model's device (the processor's torchvision path runs on the GPU), and are not kept after: the
        engine caches the encoded image, so a screenshot's ~48 MB of float32 patches is made and moved
        once in its life, not every step it stays in the history."""
        ids, images = self._ids(messages)
        return ids, [self._engine_images.get(im, self._engine_image) for im in images]

    def _engine_image(self, image):
        from agent.backends.engine import EngineImage, image_key

        merge = self.processor.image_processor.merge_size
        w, h = self._resized(image)
        patch = self.processor.image_processor.patch_size
        grid = (1, h // patch, w // patch)
        if grid[1] * grid[2] // merge ** 2 != self._placeholders(image):
            raise BackendError("image grid and placeholder count disagree")  # a bug in the arithmetic
        return EngineImage(lambda: self._device_pixels(image), grid, key=image_key(image))

    def _resized(self, image):
        from agent.backends.qwen_images import resized_size
        self._placeholders(image)  # loads the image config
        return resized_size(*image.size, self._image_cfg)

    def _device_pixels(self, image):
        """One screenshot's patches on the model's device: preprocessed there when the image processor
        can (torchvision), else on the CPU and moved."""
        proc = self.processor.image_processor
        if self.device.startswith("cuda") and "Pil" not in type(proc).__name__:
            try:
                return proc(images=[image], return_tensors="pt", device=self.device)["pixel_values"]
            except (TypeError, ValueError):  # a processor without the device option
                pass
        return self._pixels(image)[0].to(self.device)

    def _pixels(self, image):
        """(pixel_values, image_grid_thw) of one screenshot on the CPU, computed once per image object."""
        def preprocess(img):
            out = self.processor.image_processor(images=[img], return_tensors="pt")
            return out["pixel_values"], out["image_grid_thw"]
        return self._preprocessed.get(image, preprocess)

    def count_tokens(self, messages: list[Message]) -> int:
        """Exact prompt length in tokens, images included, from the processor itself (the reference
        that the cheap prompt_tokens and the cached encode are tested against)."""
        inputs = self.reference_processor().apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                                return_dict=True, return_tensors="pt")
        return int(inputs["input_ids"].shape[-1])

    def reference_processor(self):
        """transformers' own processor for this checkpoint (the native load's processor renders text
        only; this one tokenizes and preprocesses, as the reference the fast paths are tested against)."""
        if not self.native:
            return self.processor
        if self._reference_processor is None:
            self._reference_processor = load_processor(self.folder)
        return self._reference_processor

    def prompt_tokens(self, messages: list[Message]) -> int:
        """The same count as count_tokens without preprocessing the images: the chat template's text
        through the tokenizer, plus each image's tokens from the processor's own resize arithmetic.
        Cheap enough to call on every step (and the render is reused by the call that follows)."""
        pieces, images = self._render(messages)
        return sum(len(p) for p in pieces) + sum(self._placeholders(im) for im in images)

    def context_budget(self, constraint=None) -> int:
        """Prompt tokens that fit: the engine's static KV cache on the GPU, else the model's context,
        less room for the reply."""
        limit = self.engine.max_context if self.engine is not None else self.model.config.text_config.max_position_embeddings
        return int(limit) - self.token_budget(constraint)

    def fits(self, messages: list[Message], constraint=None) -> bool:
        if not isinstance(constraint, JsonSchema) and self.reply_format is not NATIVE:
            messages = self.reply_format.adapt(messages, constraint)
        return self.prompt_tokens(messages) <= self.context_budget(constraint)

    def token_budget(self, constraint=None) -> int:
        """New tokens a reply may take: a JSON schema's own budget, else max_new_tokens, else the
        grammar's bound (a reply always completes), else UNCONSTRAINED_MAX_NEW_TOKENS."""
        if isinstance(constraint, JsonSchema):
            return constraint.max_tokens
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        if self.constrainer is None:
            return UNCONSTRAINED_MAX_NEW_TOKENS
        return self.reply_format.max_reply_tokens(constraint)

    def cancel(self) -> None:
        """Stop the engine call in progress at its next token (the caller gave up on it), so the
        next call need not wait for it. The plain generate path cannot be stopped: the next call waits."""
        if self.engine is not None:
            self.engine.cancel()

    def idle(self, budget_s: float) -> int:
        """Between steps: the decode graphs the engine left for later (agent/backends/engine.py
        capture_pending), nearest to the current context first; how many were captured. A failed
        capture is not fatal: a call that needs a graph captures it itself, so the rest are left to
        the calls."""
        if self.engine is None:
            return 0
        try:
            return self.engine.capture_pending(budget_s, horizon=IDLE_HORIZON)
        except RuntimeError as e:
            import logging
            logging.getLogger(__name__).warning("decode graph capture between steps stopped: %s", _one_line(e))
            return 0

    def generate(self, messages: list[Message], constraint=None) -> str:
        """The reply under `constraint`. An action reply of another family is asked for in that
        family's prompt and format and returned as a native tool call (self.last_reply keeps what
        the model wrote)."""
        with self._lock:
            if isinstance(constraint, JsonSchema) or self.reply_format is NATIVE:
                self.last_reply = self._generate(messages, constraint)
                return self.last_reply
            self.last_reply = self._generate(self.reply_format.adapt(messages, constraint), constraint)
            return self.reply_format.to_native(self.last_reply)

    def prepare(self, messages: list[Message], constraint=None, image: bool = True) -> None:
        """Work ahead on the prompt the next call will likely get (agent/run/lookahead.py): the KV of
        everything before its last screenshot (after an eviction, the re-prefill of the history that
        stays), and with image=True that screenshot encoded into the engine's vision cache. The next
        call checks tokens and image keys as always, so a wrong guess only costs the work."""
        if self.engine is None:
            return
        with self._lock:
            if not isinstance(constraint, JsonSchema) and self.reply_format is not NATIVE:
                messages = self.reply_format.adapt(messages, constraint)
            ids, images = self.engine_inputs(messages)
            if not images:
                return
            from agent.backends.engine_ops import image_spans
            start = image_spans(ids, self.processor.image_token_id)[-1][0]
            self.engine.prefill(ids[:start], images[:-1])
            if image:
                self.engine.encode_ahead(images[-1])

    def _matcher(self, constraint):
        """A fresh grammar matcher for one reply, or None (no xgrammar: decode free, validate after)."""
        if self.constrainer is None:
            return None
        if isinstance(constraint, JsonSchema):
            return self.constrainer.json_matcher(constraint.schema, constraint.max_tokens)
        return self.reply_format.matcher(self.constrainer, constraint)

    def _generate(self, messages: list[Message], constraint=None) -> str:
        import time

        t0 = time.perf_counter()
        budget = self.token_budget(constraint)
        try:
            if self.engine is not None:
                ids, images = self.engine_inputs(messages)
                self.last_timings = {"encode_ms": (time.perf_counter() - t0) * 1e3}  # template, tokens
                matcher = self._matcher(constraint)
                eos = self.model.generation_config.eos_token_id
                stops = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
                room = self.engine.max_context - len(ids)
                if room < 1:
                    raise VlagentError(f"prompt of {len(ids)} tokens exceeds the engine's context of "
                                       f"{self.engine.max_context} tokens")
                new_ids = self.engine.generate(ids, images, min(budget, room), stop_ids=stops, matcher=matcher).tokens
            else:
                inputs = self.encode(messages)
                self.last_timings = {"encode_ms": (time.perf_counter() - t0) * 1e3}  # template, tokens, pixels, copies
                matcher = self._matcher(constraint)
                vocab = self.model.config.text_config.vocab_size
                processors = [ReplyLogitsProcessor(matcher, vocab)] if matcher is not None else []
                new_ids = self._decode(inputs, processors, budget)
        except (RuntimeError, MemoryError) as e:  # out of device memory, kernel failures
            raise BackendError(f"generation failed: {_one_line(e)}") from None
        # skip_special_tokens drops <|im_end|> but keeps <tool_call> (not special in Qwen's tokenizer)
        return self.tokenizer.decode(new_ids, skip_special_tokens=True)

    def _decode(self, inputs, logits_processors: list, max_new_tokens: int) -> list[int]:
        """The decoding engine: prompt tensors in, new token ids out (greedy, stops at the model's
        end-of-turn token). Everything speed-related lives here, so a faster engine (static KV cache,
        CUDA graphs, prefix reuse across steps: issue 3) replaces just this method."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        shipped = self.model.generation_config  # its sampling settings are not ours: greedy only
        greedy = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=shipped.eos_token_id,
                                  pad_token_id=shipped.pad_token_id, bos_token_id=shipped.bos_token_id)
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=greedy,
                                      logits_processor=LogitsProcessorList(logits_processors))
        return out[0, inputs["input_ids"].shape[-1]:].tolist()
