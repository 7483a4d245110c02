"""CFG with prompt and negative prompt of different token lengths, as A1111 evaluates it: by default
two UNet calls at their own lengths; with "Pad conds" the empty prompt's chunk is appended; with
"Pad conds v0" the negative's last vector is repeated or the negative is cut. Tiny tensors: each
token's vector holds one number, so every expected mean is worked out by hand."""

from __future__ import annotations

import pytest
import torch

from modules.generation.conditioning import ComposableScheduledPromptConditioning, Conditioning, MulticondLearnedConditioning
from modules.generation.engine import CFGDenoiser, pad_cond_uncond
from modules.generation.prompt_parser import ScheduledPromptConditioning

CFG = 3.0


def tokens(*values: float) -> torch.Tensor:
    """[1, len(values), 1]: one token per value (a stand-in for [1, 77 * chunks, width])."""
    return torch.tensor(values, dtype=torch.float32).view(1, -1, 1)


def schedule(tensor: torch.Tensor, pooled: torch.Tensor | None = None) -> tuple:
    return (ScheduledPromptConditioning(20, Conditioning(tensor, pooled)),)


def positive(*parts: tuple[torch.Tensor, float]) -> MulticondLearnedConditioning:
    return MulticondLearnedConditioning((1,), ((tuple(ComposableScheduledPromptConditioning(schedule(t), w)
                                                     for t, w in parts)),))


class MeanOfContext:
    """A UNet stand-in: x + the mean of its context (so padding shows in the output); records calls."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []  # (rows, tokens)
        self.contexts: list[torch.Tensor] = []

    def __call__(self, x, sigma, context, added):
        self.calls.append((x.shape[0], context.shape[1]))
        self.contexts.append(context)
        return x + context.mean(dim=(1, 2)).view(-1, 1, 1, 1)


X = torch.zeros(1, 1, 1, 1)
SIGMA = torch.ones(1)


def test_different_lengths_are_two_unet_calls_without_padding():
    """A two-chunk prompt (here 4 tokens: mean 2.5) and a one-chunk negative (2 tokens: mean 1.5):
    the negative keeps its own mean, where padding it with its last vector (3 tokens 1, 2, 2, 2)
    would have made it 1.75."""
    inner = MeanOfContext()
    denoiser = CFGDenoiser(inner, positive((tokens(1, 2, 3, 4), 1.0)), [schedule(tokens(1, 2))], CFG)
    out = denoiser(X, SIGMA)
    assert inner.calls == [(1, 4), (1, 2)]
    assert out.item() == pytest.approx(1.5 + (2.5 - 1.5) * CFG)
    assert not denoiser.padded


def test_equal_lengths_are_one_batched_call():
    inner = MeanOfContext()
    out = CFGDenoiser(inner, positive((tokens(4, 6), 1.0)), [schedule(tokens(1, 2))], CFG)(X, SIGMA)
    assert inner.calls == [(2, 2)]
    assert out.item() == pytest.approx(1.5 + (5 - 1.5) * CFG)


def test_and_parts_are_stacked_by_repeating_their_last_vector():
    """AND parts of different lengths are made equal among themselves (A1111's
    reconstruct_multicond_batch): `(2, 4)` becomes `2, 4, 4, 4`, mean 3.5; the negative is apart."""
    inner = MeanOfContext()
    cond = positive((tokens(1, 1, 1, 1), 1.0), (tokens(2, 4), 0.5))
    out = CFGDenoiser(inner, cond, [schedule(tokens(0, 2))], CFG)(X, SIGMA)
    assert inner.calls == [(2, 4), (1, 2)]
    assert out.item() == pytest.approx(1 + (1 - 1) * CFG + (3.5 - 1) * 0.5 * CFG)


def test_pad_conds_appends_empty_prompt_chunks_to_the_shorter():
    empty = tokens(9, 9)  # the empty prompt's one "chunk" (here 2 tokens)
    inner = MeanOfContext()
    denoiser = CFGDenoiser(inner, positive((tokens(1, 2, 3, 4), 1.0)), [schedule(tokens(1, 2))], CFG,
                           cond_padding="empty", empty_cond=empty)
    out = denoiser(X, SIGMA)
    assert inner.calls == [(2, 4)] and denoiser.padded
    assert inner.contexts[0][1].flatten().tolist() == [1, 2, 9, 9]
    assert out.item() == pytest.approx(5.25 + (2.5 - 5.25) * CFG)
    # A longer negative pads the prompt instead.
    cond, uncond = pad_cond_uncond(tokens(1, 2), tokens(1, 2, 3, 4), "empty", empty)
    assert cond.flatten().tolist() == [1, 2, 9, 9] and uncond.flatten().tolist() == [1, 2, 3, 4]


def test_pad_conds_v0_repeats_or_cuts_the_negative():
    cond, uncond = pad_cond_uncond(tokens(1, 2, 3, 4), tokens(5, 6), "last")
    assert uncond.flatten().tolist() == [5, 6, 6, 6] and cond.flatten().tolist() == [1, 2, 3, 4]
    cond, uncond = pad_cond_uncond(tokens(1, 2), tokens(5, 6, 7, 8), "last")
    assert uncond.flatten().tolist() == [5, 6] and cond.flatten().tolist() == [1, 2]
    with pytest.raises(ValueError, match="cond padding must be one of"):
        pad_cond_uncond(tokens(1), tokens(1, 2), "zeros")


def test_sdxl_pooled_and_time_ids_follow_their_rows():
    """With two calls, each gets the pooled vectors of its own rows."""
    seen = []

    def inner(x, sigma, context, added):
        seen.append((context.shape[1], added["text_embeds"].flatten().tolist(), tuple(added["time_ids"].shape)))
        return x

    cond = MulticondLearnedConditioning((1,), ((ComposableScheduledPromptConditioning(
        schedule(tokens(1, 2, 3, 4), torch.tensor([[7.0]]))),),))
    CFGDenoiser(inner, cond, [schedule(tokens(1, 2), torch.tensor([[8.0]]))], CFG,
                sdxl_vector=torch.zeros(1, 6))(X, SIGMA)
    assert seen == [(4, [7.0], (1, 6)), (2, [8.0], (1, 6))]
