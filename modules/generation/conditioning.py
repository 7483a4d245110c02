"""Prompt text → text-encoder conditioning, as A1111 computes it (A1111.md §3.6).

A prompt is split into weighted pieces (emphasis), tokenized without special tokens and packed into
chunks of 75 tokens (BREAK closes a chunk; a chunk that fills up moves the words after its last
comma to the next chunk when that comma is near the end; a textual-inversion embedding never
straddles two chunks). Each chunk becomes BOS + 75 + EOS = 77 ids, is encoded on its own, gets its
emphasis weights applied, and the chunks are concatenated: `[batch, 77 * chunks, width]`.

Embedding vectors are placed into the encoder's input through a forward hook on its token-embedding
layer, registered for one encoder call and removed in `finally`: the tokenizer and the model are
never changed, so nothing has to be undone when the model is switched.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Sequence

from modules.library.model_detection import ModelFamily

if TYPE_CHECKING:
    import torch

# torch is imported by the functions that use it: the web UI's token counter and the request types
# import this module while the server starts, before torch is imported (tests/test_startup_imports.py).

CHUNK_LENGTH = 75
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")


@dataclass(frozen=True)
class ConditioningOptions:
    """The settings that change how prompts are encoded (A1111's setting names)."""

    comma_padding_backtrack: int = 20  # 0..74; 0 disables moving words after a comma
    emphasis: str = "Original"
    clip_skip: int = 1  # CLIP_stop_at_last_layers
    sdxl_clip_l_skip: bool = False

    def __post_init__(self) -> None:
        if self.emphasis not in EMPHASIS_MODES:
            raise ValueError(f"emphasis must be one of {list(EMPHASIS_MODES)}, got {self.emphasis!r}")
        if not 0 <= self.comma_padding_backtrack <= CHUNK_LENGTH - 1:
            raise ValueError(f"comma_padding_backtrack must be 0..74, got {self.comma_padding_backtrack}")
        if not 1 <= self.clip_skip <= 12:
            raise ValueError(f"clip skip must be 1..12, got {self.clip_skip}")


@dataclass
class PromptChunk:
    """75 token ids (without BOS/EOS), one weight per token, and where embeddings go."""

    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, object]] = field(default_factory=list)  # (offset in chunk, Embedding)


@dataclass(frozen=True)
class EncoderSlot:
    """One text encoder of a model and how its output is taken."""

    encoder: torch.nn.Module
    embedding_key: str  # key into Embedding.vectors: "default", "clip_l" or "clip_g"
    open_clip_padding: bool  # pad with id 0 after the first EOS (OpenCLIP), else with EOS
    layer: str  # "last" (final layer norm included), "clip-skip" (SD1 rule), "penultimate-raw"


@dataclass
class Conditioning:
    """Encoded prompts: `crossattn` [batch, 77 * chunks, width]; `pooled` [batch, width] for SDXL."""

    crossattn: torch.Tensor
    pooled: torch.Tensor | None = None


class EncodingInterrupted(Exception):
    """The job was interrupted while its prompts were being encoded (checked between chunks)."""


class PromptTokenizer:
    """Splits prompt text into `PromptChunk`s; knows the loaded embeddings by their token ids."""

    def __init__(self, tokenizer, embeddings: Mapping[str, object] | None = None,
                 options: ConditioningOptions = ConditioningOptions()):
        self.tokenizer = tokenizer
        self.options = options
        self.id_start = tokenizer.bos_token_id
        self.id_end = tokenizer.eos_token_id
        self.comma_token = tokenizer.convert_tokens_to_ids(",</w>")
        self.embeddings = dict(embeddings or {})
        # First token id → [(token ids of the name, embedding)], longest names first, so that the
        # longest embedding name matching at a position wins.
        self._embeddings_by_first_id: dict[int, list[tuple[list[int], object]]] = {}
        for name, embedding in (embeddings or {}).items():
            ids = self._ids(name)
            if ids:
                self._embeddings_by_first_id.setdefault(ids[0], []).append((ids, embedding))
        for candidates in self._embeddings_by_first_id.values():
            candidates.sort(key=lambda item: -len(item[0]))

    def _ids(self, text: str) -> list[int]:
        from modules.library.clip_tokenizer import clean_prompt_text

        return self.tokenizer(clean_prompt_text(text), add_special_tokens=False, truncation=False,
                              verbose=False)["input_ids"]

    def _embedding_at(self, tokens: Sequence[int], position: int):
        for ids, embedding in self._embeddings_by_first_id.get(tokens[position], ()):
            if list(tokens[position:position + len(ids)]) == ids:
                return embedding, len(ids)
        return None, 0

    def weighted_pieces(self, text: str) -> list[tuple[str, float]]:
        from modules.generation.prompt_parser import parse_prompt_attention

        if self.options.emphasis == "None":
            # A1111: no parsing at all, brackets and BREAK are plain words.
            return [(text, 1.0)]
        return [(piece, weight) for piece, weight in parse_prompt_attention(text)]

    def chunks(self, text: str) -> tuple[list[PromptChunk], int]:
        """The chunks of one prompt and its token count (what the UI's token counter shows)."""
        pieces = self.weighted_pieces(text)
        backtrack = self.options.comma_padding_backtrack
        chunks: list[PromptChunk] = []
        chunk = PromptChunk()
        token_count = 0
        last_comma = -1

        def close_chunk(is_last: bool = False) -> None:
            nonlocal chunk, token_count, last_comma
            token_count += len(chunk.tokens) if is_last else CHUNK_LENGTH
            padding = CHUNK_LENGTH - len(chunk.tokens)
            chunk.tokens += [self.id_end] * padding
            chunk.multipliers += [1.0] * padding
            chunks.append(chunk)
            chunk = PromptChunk()
            last_comma = -1

        for piece, weight in pieces:
            if piece == "BREAK" and weight == -1:
                close_chunk()
                continue
            tokens = self._ids(piece)
            position = 0
            while position < len(tokens):
                token = tokens[position]
                if token == self.comma_token:
                    last_comma = len(chunk.tokens)
                elif (backtrack and len(chunk.tokens) == CHUNK_LENGTH and last_comma != -1
                      and CHUNK_LENGTH - last_comma <= backtrack):
                    # The chunk is full and its last comma is near the end: the words after the comma
                    # start the next chunk instead of being cut mid-phrase.
                    split = last_comma + 1
                    moved_tokens, moved_weights = chunk.tokens[split:], chunk.multipliers[split:]
                    chunk.tokens, chunk.multipliers = chunk.tokens[:split], chunk.multipliers[:split]
                    close_chunk()
                    chunk.tokens, chunk.multipliers = moved_tokens, moved_weights
                if len(chunk.tokens) == CHUNK_LENGTH:
                    close_chunk()

                embedding, name_length = self._embedding_at(tokens, position)
                if embedding is None:
                    chunk.tokens.append(token)
                    chunk.multipliers.append(weight)
                    position += 1
                    continue
                vectors = int(embedding.vector_count)
                if len(chunk.tokens) + vectors > CHUNK_LENGTH:
                    close_chunk()
                chunk.fixes.append((len(chunk.tokens), embedding))
                chunk.tokens += [0] * vectors  # placeholders; the hook writes the vectors here
                chunk.multipliers += [weight] * vectors
                position += name_length

        if chunk.tokens or not chunks:
            close_chunk(is_last=True)
        return chunks, token_count

    def empty_chunk(self) -> PromptChunk:
        return PromptChunk([self.id_end] * CHUNK_LENGTH, [1.0] * CHUNK_LENGTH)


def encoder_slots(model) -> list[EncoderSlot]:
    """How each text encoder of a loaded model is read (A1111.md §3.6, clip skip rules)."""
    family = model.architecture.family
    encoders = model.text_encoders
    if family == ModelFamily.SD1:
        return [EncoderSlot(encoders[0], "default", False, "clip-skip")]
    if family == ModelFamily.SD2:
        # The config already stops at the penultimate layer; A1111 applies no clip skip to SD2.
        return [EncoderSlot(encoders[0], "default", True, "last")]
    if family == ModelFamily.SDXL:
        return [EncoderSlot(encoders[0], "clip_l", False, "penultimate-raw"),
                EncoderSlot(encoders[1], "clip_g", True, "penultimate-raw")]
    return [EncoderSlot(encoders[0], "clip_g", True, "penultimate-raw")]  # SDXL refiner


@contextmanager
def _embedding_vectors(encoder: torch.nn.Module, fixes: list[list[tuple[int, torch.Tensor]]]) -> Iterator[None]:
    """Write embedding vectors into the token-embedding output for one call; remove the hook after.

    `fixes[row]` lists (position in the 77-token sequence, vectors [n, width]) for batch row `row`.
    """
    if not any(fixes):
        yield
        return

    def place(module, inputs, output):
        output = output.clone()
        for row, row_fixes in enumerate(fixes):
            for start, vectors in row_fixes:
                count = min(vectors.shape[0], output.shape[1] - 1 - start)
                output[row, start:start + count] = vectors[:count].to(output.dtype)
        return output

    handle = encoder.get_input_embeddings().register_forward_hook(place)
    try:
        yield
    finally:
        handle.remove()


class TextConditioner:
    """Encodes prompts with a loaded model's text encoder(s). Create one per job (it is cheap).

    `should_stop` is polled before each chunk is encoded (the job's interrupt flag): a long prompt
    is many encoder calls, and an interrupt must not wait for all of them. When it answers True,
    `encode` raises `EncodingInterrupted`.
    """

    def __init__(self, model, embeddings: Mapping[str, object] | None = None,
                 options: ConditioningOptions = ConditioningOptions(),
                 should_stop: Callable[[], bool] | None = None):
        self.model = model
        self.options = options
        self.should_stop = should_stop
        self.slots = encoder_slots(model)
        # All CLIP tokenizers share one vocabulary, so one chunking serves every encoder; each
        # encoder gets its own padding (`_ids_for`).
        self.tokenizer = PromptTokenizer(model.tokenizers[0], embeddings, options)
        self.is_sdxl = model.architecture.family in (ModelFamily.SDXL, ModelFamily.SDXL_REFINER)

    def _ids_for(self, slot: EncoderSlot, chunk: PromptChunk) -> list[int]:
        ids = [self.tokenizer.id_start] + chunk.tokens + [self.tokenizer.id_end]
        if slot.open_clip_padding:
            first_end = ids.index(self.tokenizer.id_end, 1)
            ids = ids[:first_end + 1] + [0] * (len(ids) - first_end - 1)
        return ids

    def _select_layer(self, slot: EncoderSlot, output) -> torch.Tensor:
        if slot.layer == "last":
            return output.last_hidden_state
        if slot.layer == "clip-skip":
            if self.options.clip_skip <= 1:
                return output.last_hidden_state
            # transformers >= 5.6 flattened CLIPTextModel; CLIPTextModelWithProjection keeps `text_model`.
            text_model = getattr(slot.encoder, "text_model", slot.encoder)
            return text_model.final_layer_norm(output.hidden_states[-self.options.clip_skip])
        # SDXL: the penultimate layer without the final layer norm; with `sdxl_clip_l_skip`, CLIP-L
        # follows the clip skip setting instead.
        if slot.embedding_key == "clip_l" and self.options.sdxl_clip_l_skip and self.options.clip_skip > 1:
            return output.hidden_states[-self.options.clip_skip]
        return output.hidden_states[-2]

    def _encode_chunks(self, chunks: list[PromptChunk]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One chunk position for every prompt of the batch → ([batch, 77, width], pooled or None)."""
        import torch

        outputs, pooled = [], None
        device = self.model.device
        weights = torch.tensor([[1.0] + chunk.multipliers + [1.0] for chunk in chunks], device=device)
        for slot in self.slots:
            ids = torch.tensor([self._ids_for(slot, chunk) for chunk in chunks], device=device)
            fixes = [[(offset + 1, embedding.vectors[slot.embedding_key]) for offset, embedding in chunk.fixes
                      if slot.embedding_key in embedding.vectors] for chunk in chunks]
            with _embedding_vectors(slot.encoder, fixes), torch.no_grad():
                output = slot.encoder(ids, output_hidden_states=True)
            # Emphasis per encoder, as A1111 (SDXL's two encoders each restore their own mean).
            outputs.append(self._apply_emphasis(self._select_layer(slot, output), weights))
            if slot.embedding_key == "clip_g" and hasattr(output, "text_embeds"):
                pooled = output.text_embeds
        return (torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]), pooled

    def _apply_emphasis(self, z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        mode = self.options.emphasis
        if mode in ("Ignore", "None"):
            return z
        weighted = z * weights.to(z.dtype).unsqueeze(-1)
        if mode == "No norm":
            return weighted
        # "Original": restore the mean of the whole chunk tensor (across the batch, A1111's way).
        original_mean = z.float().mean()
        new_mean = weighted.float().mean()
        return (weighted.float() * (original_mean / new_mean)).to(z.dtype)

    def encode(self, prompts: Sequence[str]) -> Conditioning:
        """Encode a batch of prompts (no AND, no scheduling: those are split before this)."""
        import torch

        per_prompt = [self.tokenizer.chunks(text)[0] for text in prompts]
        count = max(len(chunks) for chunks in per_prompt)
        for chunks in per_prompt:
            chunks += [self.tokenizer.empty_chunk() for _ in range(count - len(chunks))]
        zs, pooled = [], None
        for i in range(count):
            if self.should_stop is not None and self.should_stop():
                raise EncodingInterrupted(f"interrupted after {i} of {count} prompt chunks")
            z, chunk_pooled = self._encode_chunks([chunks[i] for chunks in per_prompt])
            zs.append(z)
            if i == 0:
                pooled = chunk_pooled  # A1111 pools the first chunk
        return Conditioning(torch.cat(zs, dim=1), pooled)

    def used_embeddings(self, texts: Sequence[str]) -> list:
        """The embeddings that encoding `texts` as one batch places, each once, in the order A1111
        meets them: chunk by chunk, and within a chunk text by text."""
        per_text = [self.tokenizer.chunks(text)[0] for text in texts]
        used: dict[str, object] = {}
        for i in range(max(len(chunks) for chunks in per_text)):
            for chunks in per_text:
                for _, embedding in (chunks[i].fixes if i < len(chunks) else ()):
                    used.setdefault(embedding.name, embedding)
        return list(used.values())

    def token_count(self, text: str) -> tuple[int, int]:
        """(tokens used, token capacity of the chunks) for the UI's counter, e.g. (80, 150)."""
        chunks, count = self.tokenizer.chunks(text)
        return count, len(chunks) * CHUNK_LENGTH


# --- scheduled and composable conditioning (prompt editing and AND) ------------------------------


@dataclass(frozen=True)
class ComposableScheduledPromptConditioning:
    """One AND part of a prompt: its conditioning per schedule segment, and its weight (A1111's name)."""

    schedules: tuple  # of prompt_parser.ScheduledPromptConditioning(end_at_step, Conditioning)
    weight: float = 1.0


@dataclass(frozen=True)
class MulticondLearnedConditioning:
    """A batch of positive prompts: per image, its AND parts (A1111's name and shape)."""

    shape: tuple[int, ...]
    batch: tuple[tuple[ComposableScheduledPromptConditioning, ...], ...]


class ConditioningCache:
    """Encoded schedules by prompt, for one job or for a run of jobs that share a model and settings.

    The key holds everything the result depends on, so a cache can never return another model's or
    another setting's conditioning; a small LRU bounds its memory.
    """

    def __init__(self, max_entries: int = 32):
        from collections import OrderedDict

        self._entries: OrderedDict = OrderedDict()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key, compute):
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key]
        self.misses += 1
        value = compute()
        self._entries[key] = value
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value


def _schedule_key(conditioner: TextConditioner, kind: str, prompt: str, steps: int, hires_steps, old: bool):
    embeddings = tuple(sorted((name, id(e)) for name, e in conditioner.tokenizer.embeddings.items()))
    return (id(conditioner.model), conditioner.options, embeddings, kind, prompt, steps, hires_steps, old)


def _encode_schedule(conditioner: TextConditioner, schedule, zero_if_empty: bool = False) -> tuple:
    """The texts of one prompt's schedule are encoded as one batch, as A1111 does (so the
    "Original" emphasis mean spans them, exactly as there). With `zero_if_empty`, a schedule whose
    texts are all empty gives zeros (text conditioning and pooled vector alike)."""
    from modules.generation.prompt_parser import ScheduledPromptConditioning

    encoded = conditioner.encode([text for _, text in schedule])
    if zero_if_empty and all(text == "" for _, text in schedule):
        encoded = Conditioning(encoded.crossattn.new_zeros(encoded.crossattn.shape),
                               None if encoded.pooled is None else encoded.pooled.new_zeros(encoded.pooled.shape))
    return tuple(
        ScheduledPromptConditioning(end, Conditioning(
            encoded.crossattn[i:i + 1], encoded.pooled[i:i + 1] if encoded.pooled is not None else None))
        for i, (end, _) in enumerate(schedule)
    )


def get_learned_conditioning(conditioner: TextConditioner, prompts: Sequence[str], steps: int,
                             hires_steps: int | None = None, use_old_scheduling: bool = False,
                             cache: ConditioningCache | None = None, is_negative_prompt: bool = False) -> list[tuple]:
    """Per prompt, `(ScheduledPromptConditioning(end_at_step, Conditioning), ...)` — negative prompts
    (no AND). Identical prompts are encoded once.

    `is_negative_prompt`: on SDXL models an empty negative prompt is all zeros, text conditioning and
    pooled vector (A1111's `force_zero_embeddings` for SDXL), not the encoding of "".
    """
    from modules.generation.prompt_parser import schedule_prompt

    cache = cache or ConditioningCache()
    zero_if_empty = is_negative_prompt and conditioner.is_sdxl
    results = []
    for prompt in prompts:
        key = _schedule_key(conditioner, "negative" if zero_if_empty else "plain", prompt, steps, hires_steps,
                            use_old_scheduling)
        results.append(cache.get_or_compute(key, lambda prompt=prompt: _encode_schedule(
            conditioner, schedule_prompt(prompt, steps, hires_steps, use_old_scheduling), zero_if_empty)))
    return results


def get_multicond_learned_conditioning(conditioner: TextConditioner, prompts: Sequence[str], steps: int,
                                       hires_steps: int | None = None, use_old_scheduling: bool = False,
                                       cache: ConditioningCache | None = None) -> MulticondLearnedConditioning:
    """Positive prompts: AND parts with weights, each part scheduled (prompt editing, alternation)."""
    from modules.generation.prompt_parser import schedule_composable_prompt

    cache = cache or ConditioningCache()
    batch = []
    for prompt in prompts:
        parts = []
        for part in schedule_composable_prompt(prompt, steps, hires_steps, use_old_scheduling):
            key = _schedule_key(conditioner, "plain", part.text, steps, hires_steps, use_old_scheduling)
            schedules = cache.get_or_compute(key, lambda part=part: _encode_schedule(conditioner, part.schedule))
            parts.append(ComposableScheduledPromptConditioning(schedules, part.weight))
        batch.append(tuple(parts))
    return MulticondLearnedConditioning((len(prompts),), tuple(batch))


def embedding_uses(conditioner: TextConditioner, prompts: Sequence[str], negatives: Sequence[str], steps: int,
                   hires_steps: int | None = None, use_old_scheduling: bool = False) -> list[list]:
    """The embeddings each of A1111's text-encoder calls for one batch places, in A1111's call order:
    one call per distinct negative prompt, then one per distinct AND part of the prompts, each call
    encoding the texts of that prompt's schedule. `TI hashes` is built from this (A1111 lists an
    embedding once per call that uses it, so one in both prompt and negative prompt appears twice)."""
    from modules.generation.prompt_parser import schedule_composable_prompt, schedule_prompt

    calls = [conditioner.used_embeddings([text for _, text in schedule_prompt(negative, steps, hires_steps,
                                                                                use_old_scheduling)])
             for negative in dict.fromkeys(negatives)]
    parts = {part.text: part.schedule for prompt in dict.fromkeys(prompts)
             for part in schedule_composable_prompt(prompt, steps, hires_steps, use_old_scheduling)}
    calls += [conditioner.used_embeddings([text for _, text in schedule]) for schedule in parts.values()]
    return calls


def conditioning_at_step(schedules: Sequence, step: int) -> Conditioning:
    """The conditioning a schedule uses at sampling step `step` (first segment ending at or after it)."""
    for end_at_step, cond in schedules:
        if step <= end_at_step:
            return cond
    return schedules[-1].cond


def sdxl_time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int] = (0, 0),
                  target_size: tuple[int, int] | None = None, aesthetic_score: float | None = None) -> torch.Tensor:
    """SDXL's size/crop conditioning, (height, width) pairs: base models take original size, crop
    and target size (6 numbers); the refiner takes original size, crop and an aesthetic score (5).
    Each number becomes a 256-wide embedding inside the UNet."""
    import torch

    values = [*original_size, *crop_top_left]
    if aesthetic_score is not None:
        values.append(aesthetic_score)
    else:
        values += list(target_size or original_size)
    return torch.tensor([values], dtype=torch.float32)
