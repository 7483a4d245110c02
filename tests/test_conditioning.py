"""Prompt → conditioning on tiny models in the real layout: chunking, emphasis, clip skip,
embeddings, SDXL's two encoders. Expected values come from the text encoder called directly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from modules.generation.conditioning import ConditioningOptions, PromptTokenizer, TextConditioner
from modules.library.model_loader import load_checkpoint
from modules.library.synthetic_checkpoints import write_checkpoint


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cond")
    return {arch: load_checkpoint(write_checkpoint(folder / f"{arch}.safetensors", arch, dtype=torch.float32))
            for arch in ("sd1", "sd2", "sdxl")}


def emb(name: str, **vectors: torch.Tensor):
    """An object shaped like textual_inversion.Embedding, as the conditioner reads it."""
    first = next(iter(vectors.values()))
    return SimpleNamespace(name=name, vectors=vectors, vector_count=first.shape[0])


def token_id(tokenizer, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{word!r} is not one token"
    return ids[0]


def test_chunk_boundaries(models):
    tok = PromptTokenizer(models["sd1"].tokenizers[0])
    chunks, count = tok.chunks(" ".join(["cat"] * 75))
    assert len(chunks) == 1 and count == 75
    chunks, count = tok.chunks(" ".join(["cat"] * 76))
    assert len(chunks) == 2 and count == 76
    assert all(len(c.tokens) == 75 and len(c.multipliers) == 75 for c in chunks)
    assert chunks[1].tokens[1:] == [tok.id_end] * 74  # padded with EOS
    chunks, count = tok.chunks("")
    assert len(chunks) == 1 and count == 0


@pytest.mark.parametrize("backtrack, first_len, second_len", [(20, 71, 10), (0, 75, 6)])
def test_comma_backtrack(models, backtrack, first_len, second_len):
    """70 cats, a comma, 10 dogs: the chunk fills at the 4th dog; the comma is 5 from the end, so
    with backtrack 20 the 4 dogs after it move to the next chunk, keeping the phrase whole."""
    tokenizer = models["sd1"].tokenizers[0]
    tok = PromptTokenizer(tokenizer, options=ConditioningOptions(comma_padding_backtrack=backtrack))
    chunks, _ = tok.chunks(" ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10))
    pad = tok.id_end
    real = [[t for t in c.tokens if t != pad] for c in chunks]
    assert [len(r) for r in real] == [first_len, second_len]
    dog = token_id(tokenizer, "dog")
    assert real[1] == [dog] * second_len


def test_break_and_weights(models):
    tokenizer = models["sd1"].tokenizers[0]
    tok = PromptTokenizer(tokenizer)
    chunks, count = tok.chunks("(cat:1.5) dog BREAK [red]")
    assert len(chunks) == 2 and count == 75 + 1
    assert chunks[0].tokens[:2] == [token_id(tokenizer, "cat"), token_id(tokenizer, "dog")]
    assert chunks[0].multipliers[:3] == [1.5, 1.0, 1.0]
    assert chunks[1].multipliers[0] == pytest.approx(1 / 1.1)
    literal = PromptTokenizer(tokenizer, options=ConditioningOptions(emphasis="None")).chunks("(cat:1.5)")[0]
    assert all(m == 1.0 for m in literal[0].multipliers) and len([t for t in literal[0].tokens if t != tok.id_end]) > 1


def test_embedding_never_straddles_chunks(models):
    tokenizer = models["sd1"].tokenizers[0]
    width = models["sd1"].text_encoders[0].config.hidden_size
    three = emb("tripleemb", default=torch.randn(3, width))
    tok = PromptTokenizer(tokenizer, {"tripleemb": three})
    chunks, _ = tok.chunks(" ".join(["cat"] * 73) + " tripleemb")
    assert len(chunks) == 2
    assert chunks[0].fixes == [] and chunks[1].fixes == [(0, three)]
    assert chunks[1].tokens[:3] == [0, 0, 0]


def test_embedding_vectors_replace_token_embeddings(models):
    """An embedding whose vectors are the token embeddings of 'red dog' must encode exactly like
    the words themselves — and it must leave nothing attached to the model afterwards."""
    model = models["sd1"]
    encoder, tokenizer = model.text_encoders[0], model.tokenizers[0]
    table = encoder.get_input_embeddings().weight
    vectors = table[[token_id(tokenizer, "red"), token_id(tokenizer, "dog")]].clone()
    conditioner = TextConditioner(model, {"mydog": emb("mydog", default=vectors)})
    with_embedding = conditioner.encode(["a (mydog:1.2) runs"]).crossattn
    with_words = conditioner.encode(["a (red dog:1.2) runs"]).crossattn
    assert torch.allclose(with_embedding, with_words, atol=1e-6)
    assert not encoder.get_input_embeddings()._forward_hooks
    assert len(tokenizer) == 49408


def _direct(encoder, tokenizer, text: str, layer=None):
    ids = tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
    out = encoder(ids, output_hidden_states=True)
    return out if layer is None else layer(out)


def test_plain_prompt_matches_direct_encoder_call(models):
    model = models["sd1"]
    expected = _direct(model.text_encoders[0], model.tokenizers[0], "a photo of a cat").last_hidden_state
    got = TextConditioner(model).encode(["a photo of a cat"]).crossattn
    assert got.shape == (1, 77, model.text_encoders[0].config.hidden_size)
    assert torch.allclose(got, expected, atol=1e-6)


def test_emphasis_modes(models):
    model = models["sd1"]
    text = "a (photo:1.6) of [cat]"
    z = TextConditioner(model, options=ConditioningOptions(emphasis="Ignore")).encode([text]).crossattn
    chunk = PromptTokenizer(model.tokenizers[0]).chunks(text)[0][0]
    weights = torch.tensor([1.0] + chunk.multipliers + [1.0]).view(1, 77, 1)
    no_norm = TextConditioner(model, options=ConditioningOptions(emphasis="No norm")).encode([text]).crossattn
    assert torch.allclose(no_norm, z * weights, atol=1e-6)
    original = TextConditioner(model).encode([text]).crossattn
    assert torch.allclose(original, z * weights * (z.mean() / (z * weights).mean()), atol=1e-5)
    assert not torch.allclose(original, z)


def test_clip_skip_sd1(models):
    model = models["sd1"]
    encoder = model.text_encoders[0]
    out = _direct(encoder, model.tokenizers[0], "a cat")
    expected = encoder.final_layer_norm(out.hidden_states[-2])
    got = TextConditioner(model, options=ConditioningOptions(clip_skip=2)).encode(["a cat"]).crossattn
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, TextConditioner(model).encode(["a cat"]).crossattn)


def test_sd2_pads_with_zero_after_eos(models):
    conditioner = TextConditioner(models["sd2"])
    chunk = conditioner.tokenizer.chunks("a cat")[0][0]
    ids = conditioner._ids_for(conditioner.slots[0], chunk)
    assert ids[:4] == [49406, ids[1], ids[2], 49407] and set(ids[4:]) == {0}
    # The text encoder's own layer choice (penultimate, by config) is used; clip skip does not apply.
    plain = conditioner.encode(["a cat"]).crossattn
    skipped = TextConditioner(models["sd2"], options=ConditioningOptions(clip_skip=2)).encode(["a cat"]).crossattn
    assert torch.equal(plain, skipped)


def test_sdxl_two_encoders_and_pooled(models):
    model = models["sdxl"]
    l_width, g_width = (e.config.hidden_size for e in model.text_encoders)
    conditioner = TextConditioner(model)
    result = conditioner.encode(["a cat", " ".join(["dog"] * 80)])
    assert result.crossattn.shape == (2, 154, l_width + g_width)
    assert result.pooled.shape == (2, model.text_encoders[1].config.projection_dim)
    # The first prompt, encoded alone, equals its row (later chunks of a shorter prompt are padding).
    alone = conditioner.encode(["a cat"])
    assert torch.allclose(result.crossattn[:1, :77], alone.crossattn, atol=1e-5)
    assert torch.allclose(result.pooled[:1], alone.pooled, atol=1e-5)
    # CLIP-L part = penultimate hidden state without final layer norm.
    l_out = _direct(model.text_encoders[0], model.tokenizers[0], "a cat")
    assert torch.allclose(alone.crossattn[..., :l_width], l_out.hidden_states[-2], atol=1e-5)


def test_sdxl_embedding_uses_each_encoders_vectors(models):
    model = models["sdxl"]
    tokenizer = model.tokenizers[0]
    ids = [token_id(tokenizer, "red")]
    vectors = {key: encoder.get_input_embeddings().weight[ids].clone()
               for key, encoder in zip(("clip_l", "clip_g"), model.text_encoders)}
    conditioner = TextConditioner(model, {"xlred": emb("xlred", **vectors)})
    a = conditioner.encode(["xlred car"])
    b = conditioner.encode(["red car"])
    assert torch.allclose(a.crossattn, b.crossattn, atol=1e-5) and torch.allclose(a.pooled, b.pooled, atol=1e-5)


def test_prompt_editing_gives_one_conditioning_per_segment(models):
    from modules.generation.conditioning import conditioning_at_step, get_learned_conditioning

    conditioner = TextConditioner(models["sd1"])
    [schedule] = get_learned_conditioning(conditioner, ["a [cat:dog:5] sitting"], steps=10)
    assert [end for end, _ in schedule] == [5, 10]
    cat = conditioner.encode(["a cat sitting"]).crossattn
    dog = conditioner.encode(["a dog sitting"]).crossattn
    assert torch.allclose(conditioning_at_step(schedule, 5).crossattn, cat, atol=1e-6)
    assert torch.allclose(conditioning_at_step(schedule, 6).crossattn, dog, atol=1e-6)


def test_and_parts_weights_and_cache(models):
    from modules.generation.conditioning import ConditioningCache, get_learned_conditioning, get_multicond_learned_conditioning

    conditioner = TextConditioner(models["sd1"])
    cache = ConditioningCache()
    multi = get_multicond_learned_conditioning(conditioner, ["a cat AND a dog:0.5"] * 3, steps=20, cache=cache)
    assert multi.shape == (3,)
    assert [[part.weight for part in parts] for parts in multi.batch] == [[1.0, 0.5]] * 3
    assert cache.misses == 2 and cache.hits == 4  # two distinct parts encoded once each
    first = multi.batch[0][1].schedules[0].cond.crossattn
    assert torch.allclose(first, conditioner.encode(["a dog"]).crossattn, atol=1e-6)
    # Negative prompts: no AND split; the same cache serves the same text.
    [negative] = get_learned_conditioning(conditioner, ["a cat AND a dog:0.5"], steps=20, cache=cache)
    assert negative[0].cond.crossattn.shape == (1, 77, first.shape[-1])


@pytest.mark.parametrize("arch, extra", [("sdxl", None), ("sdxl-refiner", 6.0)])
def test_sdxl_size_conditioning_drives_the_unet(tmp_path, arch, extra):
    from modules.generation.conditioning import sdxl_time_ids

    model = load_checkpoint(write_checkpoint(tmp_path / f"{arch}.safetensors", arch, dtype=torch.float32))
    cond = TextConditioner(model).encode(["a cat"])
    time_ids = sdxl_time_ids((64, 64), (0, 0), aesthetic_score=extra)
    assert time_ids.shape == (1, 5 if extra else 6)
    with torch.no_grad():
        out = model.unet(torch.randn(1, 4, 8, 8), torch.tensor([10]), encoder_hidden_states=cond.crossattn,
                         added_cond_kwargs={"text_embeds": cond.pooled, "time_ids": time_ids}).sample
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()


def test_emphasis_none_reads_everything_literally(models):
    tok = PromptTokenizer(models["sd1"].tokenizers[0], options=ConditioningOptions(emphasis="None"))
    chunks, count = tok.chunks("(cat:1.5) BREAK dog")
    assert len(chunks) == 1 and all(m == 1.0 for m in chunks[0].multipliers)
    assert count == len(tok._ids("(cat:1.5) BREAK dog"))


def test_sdxl_clip_l_skip_setting(models):
    """SDXL ignores clip skip unless `sdxl_clip_l_skip` is on; then CLIP-L follows it (no final LN)."""
    model = models["sdxl"]
    l_width = model.text_encoders[0].config.hidden_size
    plain = TextConditioner(model, options=ConditioningOptions(clip_skip=3)).encode(["a cat"]).crossattn
    assert torch.equal(plain, TextConditioner(model).encode(["a cat"]).crossattn)
    skipped = TextConditioner(model, options=ConditioningOptions(clip_skip=3, sdxl_clip_l_skip=True)).encode(["a cat"])
    l_out = _direct(model.text_encoders[0], model.tokenizers[0], "a cat")
    assert torch.allclose(skipped.crossattn[..., :l_width], l_out.hidden_states[-3], atol=1e-5)
    assert torch.equal(skipped.crossattn[..., l_width:], plain[..., l_width:])


# --- A1111's chunk rules, pinned with token ids read off the CLIP vocabulary ----------------------
# configs/tokenizers/clip/vocab.json: "<|startoftext|>" 49406, "<|endoftext|>" 49407, "cat</w>" 2368,
# "dog</w>" 1929, ",</w>" 267. OpenCLIP's pad id is 0 ("!").
BOS, EOS, CAT, DOG, COMMA = 49406, 49407, 2368, 1929, 267


def encoder_rows(conditioner: TextConditioner, text: str) -> list[list[list[int]]]:
    """Per text encoder, the 77 ids of each chunk it is given for `text`."""
    chunks, _ = conditioner.tokenizer.chunks(text)
    return [[conditioner._ids_for(slot, chunk) for chunk in chunks] for slot in conditioner.slots]


def test_vocabulary_ids_used_below(models):
    tokenizer = models["sd1"].tokenizers[0]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (BOS, EOS)
    assert tokenizer.convert_tokens_to_ids(["cat</w>", "dog</w>", ",</w>"]) == [CAT, DOG, COMMA]


def test_break_closes_the_chunk_and_pads_it(models):
    """BREAK closes the chunk: BOS + its tokens, then EOS up to 77 (CLIP), or EOS once and id 0 after
    it (OpenCLIP: SD2, and SDXL's second encoder). The closed chunk counts 75 tokens."""
    assert encoder_rows(TextConditioner(models["sd1"]), "cat BREAK dog") == [
        [[BOS, CAT] + [EOS] * 75, [BOS, DOG] + [EOS] * 75]]
    assert encoder_rows(TextConditioner(models["sd2"]), "cat BREAK dog") == [
        [[BOS, CAT, EOS] + [0] * 74, [BOS, DOG, EOS] + [0] * 74]]
    assert encoder_rows(TextConditioner(models["sdxl"]), "cat BREAK dog") == [
        [[BOS, CAT] + [EOS] * 75, [BOS, DOG] + [EOS] * 75],
        [[BOS, CAT, EOS] + [0] * 74, [BOS, DOG, EOS] + [0] * 74]]
    assert PromptTokenizer(models["sd1"].tokenizers[0]).chunks("cat BREAK dog")[1] == 75 + 1


@pytest.mark.parametrize("backtrack, rows", [
    # The chunk fills at the 4th dog; its comma is 75 - 70 = 5 tokens from the end: with a backtrack
    # of 20 the 4 dogs after it start the next chunk.
    (20, [[BOS] + [CAT] * 70 + [COMMA] + [EOS] * 5, [BOS] + [DOG] * 10 + [EOS] * 66]),
    # 5 > 3: the chunk is cut where it is full.
    (3, [[BOS] + [CAT] * 70 + [COMMA] + [DOG] * 4 + [EOS], [BOS] + [DOG] * 6 + [EOS] * 70]),
])
def test_comma_backtrack_ids(models, backtrack, rows):
    conditioner = TextConditioner(models["sd1"], options=ConditioningOptions(comma_padding_backtrack=backtrack))
    assert encoder_rows(conditioner, " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)) == [rows]


def test_a_comma_that_meets_a_full_chunk_opens_the_next(models):
    """A1111 records the comma before it checks for a full chunk, so a comma arriving at a full
    chunk starts the next one (kept as A1111 has it)."""
    rows = encoder_rows(TextConditioner(models["sd1"]), " ".join(["cat"] * 75) + ", dog")
    assert rows == [[[BOS] + [CAT] * 75 + [EOS], [BOS, COMMA, DOG] + [EOS] * 74]]


def test_shorter_prompts_of_a_batch_get_empty_chunks(models):
    """A batch is encoded chunk position by chunk position; a prompt with fewer chunks gets A1111's
    empty chunk, BOS and 76 EOS."""
    model = models["sd1"]
    encoder = model.text_encoders[0]
    both = TextConditioner(model).encode([" ".join(["cat"] * 80), "dog"]).crossattn
    assert both.shape[1] == 2 * 77
    with torch.no_grad():
        empty = encoder(torch.tensor([[BOS] + [EOS] * 76])).last_hidden_state
    assert torch.allclose(both[1:, 77:], empty, atol=1e-5)


def test_original_emphasis_restores_the_mean_of_each_chunk(models):
    """Each chunk is encoded on its own and "Original" emphasis restores the mean over that chunk's
    output only: the weight in chunk 1 leaves chunk 2 exactly as the encoder gave it."""
    model = models["sd1"]
    encoder = model.text_encoders[0]
    # 1 cat + 80 dogs: chunk 1 holds cat and 74 dogs, chunk 2 the other 6 dogs.
    got = TextConditioner(model).encode(["(cat:1.5) " + " ".join(["dog"] * 80)]).crossattn
    with torch.no_grad():
        z1 = encoder(torch.tensor([[BOS, CAT] + [DOG] * 74 + [EOS]])).last_hidden_state
        z2 = encoder(torch.tensor([[BOS] + [DOG] * 6 + [EOS] * 70])).last_hidden_state
    weights = torch.tensor([1.0, 1.5] + [1.0] * 75).view(1, 77, 1)
    expected1 = z1 * weights * (z1.mean() / (z1 * weights).mean())
    assert torch.allclose(got[:, :77], expected1, atol=1e-5)
    assert torch.allclose(got[:, 77:], z2, atol=1e-6)


def test_an_interrupt_stops_encoding_between_chunks(models):
    """The job's interrupt flag is read before each chunk: a 4-chunk prompt interrupted after the
    first chunk calls the encoder once, not four times."""
    from modules.generation.conditioning import EncodingInterrupted

    model = models["sd1"]
    calls = []
    handle = model.text_encoders[0].register_forward_hook(lambda *_: calls.append(1))
    try:
        conditioner = TextConditioner(model, should_stop=lambda: len(calls) >= 1)
        with pytest.raises(EncodingInterrupted):
            conditioner.encode([" ".join(["cat"] * 300)])
        assert len(calls) == 1
        calls.clear()
        TextConditioner(model, should_stop=lambda: False).encode([" ".join(["cat"] * 300)])
        assert len(calls) == 4
    finally:
        handle.remove()


def test_sdxl_empty_negative_prompt_is_zeros(models):
    """On SDXL, A1111 zeroes the text conditioning and the pooled vector of an empty negative prompt
    (`force_zero_embeddings`); a non-empty negative, a positive "" and SD1 are encoded as usual."""
    from modules.generation.conditioning import get_learned_conditioning

    sdxl = TextConditioner(models["sdxl"])
    [[(_, empty)]] = get_learned_conditioning(sdxl, [""], steps=20, is_negative_prompt=True)
    assert empty.crossattn.shape == (1, 77, sum(e.config.hidden_size for e in models["sdxl"].text_encoders))
    assert not empty.crossattn.any() and not empty.pooled.any()
    [[(_, blurry)]] = get_learned_conditioning(sdxl, ["blurry"], steps=20, is_negative_prompt=True)
    assert blurry.crossattn.any() and blurry.pooled.any()
    [[(_, positive)]] = get_learned_conditioning(sdxl, [""], steps=20)
    assert positive.crossattn.any() and positive.pooled.any()
    [[(_, sd1)]] = get_learned_conditioning(TextConditioner(models["sd1"]), [""], steps=20, is_negative_prompt=True)
    assert sd1.crossattn.any()
