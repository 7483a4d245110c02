"""txt2img on tiny models in the real layout: determinism, seeds, samplers, prompt editing, AND,
interrupt/skip, hires fix, infotext, saving and request validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from modules.common.atomic_files import TEMP_MARK
from modules.outputs.infotext import parse_generation_parameters
from modules.library.model_loader import load_checkpoint
from modules.generation.engine import GenerationRequest, GenerationResources, SaveTarget, generate
from modules.generation.sampling.registry import SAMPLERS
from modules.library.synthetic_checkpoints import write_checkpoint

SMALL = dict(width=64, height=64, steps=4)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return load_checkpoint(write_checkpoint(tmp_path_factory.mktemp("p") / "tiny.safetensors", "sd1",
                                            dtype=torch.float32))


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def run(model, **fields):
    return generate(model, GenerationRequest(**{**SMALL, "prompt": "a cat", "seed": 7, **fields}))


def test_same_request_gives_the_same_image(sd1):
    a, b = run(sd1, sampler_name="Euler a"), run(sd1, sampler_name="Euler a")
    assert np.array_equal(pixels(a.images[0]), pixels(b.images[0]))
    assert a.seeds == [7]


def test_batch_reproduces_single_images(sd1):
    """Each image has its own generator, ancestral noise included (A1111's per-image seeds)."""
    batch = run(sd1, sampler_name="Euler a", batch_size=2, seed=10)
    assert batch.seeds == [10, 11]
    single = run(sd1, sampler_name="Euler a", seed=11)
    assert np.abs(pixels(batch.images[1]) - pixels(single.images[0])).max() <= 1


def test_variation_seed(sd1):
    base = run(sd1, subseed=99, subseed_strength=0.0)
    varied = run(sd1, subseed=99, subseed_strength=0.5, batch_size=2)
    assert varied.seeds == [7, 7] and varied.subseeds == [99, 100]
    assert not np.array_equal(pixels(base.images[0]), pixels(varied.images[0]))
    assert not np.array_equal(pixels(varied.images[0]), pixels(varied.images[1]))
    assert "Variation seed: 99" in varied.infotexts[0]


@pytest.mark.parametrize("sampler", [s.name for s in SAMPLERS if s.implemented])
def test_every_sampler_runs(sd1, sampler):
    result = run(sd1, sampler_name=sampler, steps=3)
    assert result.images[0].size == (64, 64)
    assert f"Sampler: {sampler}" in result.infotexts[0]


def test_samplers_and_schedules_differ(sd1):
    outputs = {name: pixels(run(sd1, sampler_name=name).images[0]) for name in ("Euler", "Euler a", "DPM++ 2M", "DDIM")}
    names = list(outputs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.array_equal(outputs[a], outputs[b]), (a, b)
    karras = pixels(run(sd1, sampler_name="Euler", scheduler="Karras").images[0])
    assert not np.array_equal(karras, outputs["Euler"])


def test_prompt_editing_switches_mid_way(sd1):
    cat = pixels(run(sd1, prompt="a cat").images[0])
    dog = pixels(run(sd1, prompt="a dog").images[0])
    edited = pixels(run(sd1, prompt="a [cat:dog:2]").images[0])
    never = pixels(run(sd1, prompt="a [cat:dog:10]").images[0])  # switch after the last step: all cat
    assert np.array_equal(never, cat)
    assert not np.array_equal(edited, cat) and not np.array_equal(edited, dog)


def test_and_weights(sd1):
    cat = pixels(run(sd1, prompt="a cat").images[0])
    zero = pixels(run(sd1, prompt="a cat AND a dog:0").images[0])
    half = pixels(run(sd1, prompt="a cat AND a dog:0.5").images[0])
    assert np.abs(zero - cat).max() <= 1  # a part with weight 0 adds nothing
    assert np.abs(half - cat).max() > 1


class Control:
    """A JobControl stand-in that interrupts or skips at a given reported step."""

    def __init__(self, interrupt_at=None, skip_at=None):
        self.interrupt_at, self.skip_at = interrupt_at, skip_at
        self.interrupted = False
        self._skip = False
        self.reports = []

    def report(self, step, total, preview_factory=None):
        self.reports.append((step, total))
        if step == self.interrupt_at:
            self.interrupted = True
        if step == self.skip_at:
            self._skip = True

    def consume_skip(self):
        skip, self._skip = self._skip, False
        return skip

    def add_info(self, line):
        pass


def test_interrupt_keeps_finished_images_and_stops(sd1):
    control = Control(interrupt_at=2)
    result = generate(sd1, GenerationRequest(**SMALL, prompt="a cat", seed=1, n_iter=3), control=control)
    assert result.interrupted and len(result.images) == 1
    assert control.reports[-1][0] == 2  # stopped within one step


def test_skip_moves_to_the_next_image(sd1):
    control = Control(skip_at=1)
    result = generate(sd1, GenerationRequest(**SMALL, prompt="a cat", seed=1, n_iter=2), control=control)
    assert not result.interrupted and len(result.images) == 2
    assert [step for step, _ in control.reports] == [1, 5, 6, 7, 8]


def test_hires_fix(sd1):
    result = run(sd1, enable_hr=True, hr_scale=2.0, denoising_strength=0.5)
    assert result.images[0].size == (128, 128)
    params = parse_generation_parameters(result.infotexts[0])
    assert params["Hires upscale"] == "2.0" and params["Denoising strength"] == "0.5"
    assert params["Size-1"] == "64"


def test_infotext_round_trip(sd1):
    result = run(sd1, prompt="a (cat:1.2), detailed", negative_prompt="blurry", sampler_name="DPM++ 2M",
                 cfg_scale=5.5, clip_skip=2)
    params = parse_generation_parameters(result.infotexts[0])
    assert params["Prompt"] == "a (cat:1.2), detailed" and params["Negative prompt"] == "blurry"
    assert params["Steps"] == "4" and params["Sampler"] == "DPM++ 2M" and params["Schedule type"] == "Karras"
    assert params["CFG scale"] == "5.5" and params["Seed"] == "7" and params["Clip skip"] == "2"
    assert (params["Size-1"], params["Size-2"]) == ("64", "64")


def test_saving_writes_a1111_layout(sd1, tmp_path):
    result = generate(sd1, GenerationRequest(**SMALL, prompt="a cat", seed=123, batch_size=2),
                      save=SaveTarget(str(tmp_path)))
    images = sorted((tmp_path / "outputs" / "txt2img-images").rglob("*.png"))
    assert [p.name for p in images] == ["00000-123.png", "00001-124.png"]
    assert list((tmp_path / "outputs" / "txt2img-grids").rglob("grid-0000.png"))
    from PIL import Image

    with Image.open(images[0]) as saved:
        assert saved.info["parameters"] == result.infotexts[0]
    assert not list(tmp_path.rglob(f"*{TEMP_MARK}"))


def test_tiling_is_restored(sd1):
    plain = pixels(run(sd1).images[0])
    tiled = pixels(run(sd1, tiling=True).images[0])
    assert not np.array_equal(plain, tiled)
    assert all(m.padding_mode == "zeros" for m in sd1.unet.modules() if isinstance(m, torch.nn.Conv2d))
    assert np.array_equal(pixels(run(sd1).images[0]), plain)


@pytest.mark.parametrize("fields, message", [
    ({"width": 100}, "multiple of 8"),
    ({"sampler_name": "Euler b"}, "Euler a"),
    ({"steps": 0}, "steps"),
    ({"steps": 151}, "steps"),
    ({"batch_size": 9}, "batch_size"),
    ({"cfg_scale": 31}, "cfg_scale"),
    ({"hr_upscaler": " "}, "hr_upscaler must name an upscaler"),  # names are checked at submit
    ({"scheduler": "Fancy"}, "Fancy"),
    ({"unknown_field": 1}, "unknown_field"),
])
def test_bad_requests_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        GenerationRequest(**fields)


def test_sdxl_and_v_prediction_models_generate(tmp_path):
    for arch in ("sdxl", "sd2"):
        model = load_checkpoint(write_checkpoint(tmp_path / f"{arch}.safetensors", arch, dtype=torch.float32))
        result = generate(model, GenerationRequest(**SMALL, prompt="a cat", seed=3))
        assert result.images[0].size == (64, 64)


def test_jobs_run_generations_in_order_and_interrupt(sd1):
    """Generation through the job queue: FIFO, each job its own seeds, interrupt via the queue."""
    import threading

    from modules.serving.jobs import JobQueue

    queue = JobQueue()
    queue.start()
    try:
        jobs = [queue.submit(lambda control, s=s: generate(sd1, GenerationRequest(**SMALL, prompt="a cat", seed=s),
                                                           control=control), kind="txt2img") for s in (1, 2, 3)]
        results = [job.wait(timeout=120).result for job in jobs]
        assert [r.seeds for r in results] == [[1], [2], [3]]
        assert [job.id for job in jobs] == sorted(job.id for job in jobs)

        started = threading.Event()

        class Watched:
            """The job's control, passed through, with a signal once sampling has begun."""

            def __init__(self, control):
                self.control = control

            def __getattr__(self, name):
                return getattr(self.control, name)

            def report(self, step, total, preview_factory=None):
                self.control.report(step, total, preview_factory)
                started.set()

        def work(control):
            return generate(sd1, GenerationRequest(**{**SMALL, "steps": 40}, prompt="a cat", seed=5, n_iter=3),
                            control=Watched(control))

        job = queue.submit(work, kind="txt2img")
        assert started.wait(60)
        queue.interrupt(job.id)
        job.wait(timeout=120)
        assert job.state == "interrupted"
        assert job.result.interrupted and len(job.result.images) == 1
        assert job.progress < 1.0
    finally:
        queue.shutdown()


def test_every_schedule_type_runs_and_differs(sd1):
    """Every schedule type generates, and the sigma schedules differ except where they are the same by
    definition: Euler's Automatic is the model's own schedule, which Uniform and Normal also give,
    and Polyexponential with rho 1 is Exponential. (On a tiny random model two close schedules can
    give images one level apart, so distinctness is checked on the schedules.)"""
    from modules.generation.sampling.registry import SCHEDULERS, build_sigmas, find_sampler
    from modules.generation.sampling.schedules import DiscreteSchedule, alphas_cumprod_scaled_linear

    for scheduler in SCHEDULERS:
        assert run(sd1, sampler_name="Euler", scheduler=scheduler.label, steps=4).images[0].size == (64, 64)
    table = DiscreteSchedule.from_alphas_cumprod(alphas_cumprod_scaled_linear())
    sigmas = {s.label: build_sigmas(find_sampler("Euler"), s.name, 4, table) for s in SCHEDULERS}
    same = [("Automatic", "Uniform", "Normal"), ("Exponential", "Polyexponential")]
    for group in same:
        assert all(torch.allclose(sigmas[label], sigmas[group[0]]) for label in group[1:]), group
    representatives = [label for label in sigmas if not any(label in g[1:] for g in same)]
    for i, a in enumerate(representatives):
        for b in representatives[i + 1:]:
            assert sigmas[a].shape != sigmas[b].shape or not torch.allclose(sigmas[a], sigmas[b]), (a, b)


LONG_PROMPT = " ".join(["cat"] * 80)  # two chunks: 154 tokens


def unet_context_lengths(model, request, settings=None, control=None):
    """Run `request`; per UNet call, (rows, token length of encoder_hidden_states)."""
    from modules.generation.engine import EngineSettings

    calls = []
    handle = model.unet.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append(tuple(kwargs["encoder_hidden_states"].shape[:2])), with_kwargs=True)
    try:
        result = generate(model, request, settings or EngineSettings(), control)
    finally:
        handle.remove()
    return result, calls


def test_long_prompt_and_short_negative_are_denoised_apart(sd1):
    """A1111's default: a 2-chunk prompt and a 1-chunk negative are two UNet calls per step at 154
    and 77 tokens; nothing is padded and the infotext says nothing about padding."""
    result, calls = unet_context_lengths(sd1, GenerationRequest(**SMALL, prompt=LONG_PROMPT, seed=7,
                                                                sampler_name="Euler"))
    assert calls == [(1, 154), (1, 77)] * 4
    assert "Pad conds" not in result.infotexts[0]
    _, calls = unet_context_lengths(sd1, GenerationRequest(**SMALL, prompt="cat BREAK dog", negative_prompt="a BREAK b",
                                                           seed=7, sampler_name="Euler"))
    assert calls == [(2, 154)] * 4  # equal lengths: one batched call


@pytest.mark.parametrize("setting, key", [("pad_cond_uncond", "Pad conds"), ("pad_cond_uncond_v0", "Pad conds v0")])
def test_pad_conds_settings_make_one_call_and_say_so(sd1, setting, key):
    from modules.generation.engine import EngineSettings

    result, calls = unet_context_lengths(sd1, GenerationRequest(**SMALL, prompt=LONG_PROMPT, seed=7,
                                                                sampler_name="Euler"),
                                         EngineSettings(**{setting: True}))
    assert calls == [(2, 154)] * 4
    assert parse_generation_parameters(result.infotexts[0])[key] == "True"


def test_an_interrupt_during_prompt_encoding_stops_before_sampling(sd1):
    """The job's interrupt flag reaches the text encoder: interrupted after the first chunk of a
    long prompt, the job encodes no more chunks and never calls the UNet."""
    encoder_calls = []

    class InterruptAfterFirstChunk(Control):
        @property
        def interrupted(self):
            return len(encoder_calls) >= 1

        @interrupted.setter
        def interrupted(self, value):
            pass

    handle = sd1.text_encoders[0].register_forward_hook(lambda *_: encoder_calls.append(1))
    try:
        result, unet_calls = unet_context_lengths(
            sd1, GenerationRequest(**SMALL, prompt=" ".join(["cat"] * 600), seed=7, n_iter=2),
            control=InterruptAfterFirstChunk())
    finally:
        handle.remove()
    assert result.interrupted and result.images == []
    assert len(encoder_calls) == 1 and unet_calls == []


def test_overlong_prompts_are_refused(sd1):
    from modules.generation.engine import EngineSettings, PromptTooLongError, check_prompt_length

    check_prompt_length("a" * 10, "b" * 10, 10)
    check_prompt_length("a" * 10**6, "", 0)  # 0: no limit
    with pytest.raises(PromptTooLongError, match=r"negative_prompt is 11 characters long; the limit is 10 "
                                                 r"\(setting prompt_max_length"):
        check_prompt_length("a", "b" * 11, 10)
    encoder_calls = []
    handle = sd1.text_encoders[0].register_forward_hook(lambda *_: encoder_calls.append(1))
    try:
        with pytest.raises(PromptTooLongError, match="prompt is 1,001 characters long; the limit is 1,000"):
            generate(sd1, GenerationRequest(**SMALL, prompt="c" * 1001), EngineSettings(prompt_max_length=1000))
    finally:
        handle.remove()
    assert encoder_calls == []


def test_ti_hashes_list_each_use_once_per_prompt(sd1, tmp_path):
    """`TI hashes` as A1111 writes it: plain `name: 12 hex` inside the infotext's one pair of quotes,
    the embedding listed once for the prompt and once for the negative prompt, and read back
    unchanged."""
    import hashlib

    from modules.networks.activation import embedding_widths
    from modules.networks.textual_inversion import EmbeddingDatabase, save_embedding

    width = embedding_widths(sd1)["default"]
    path = save_embedding(tmp_path / "tinyemb.pt", torch.randn(2, width))
    short = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    database = EmbeddingDatabase([tmp_path])

    def infotext(prompt, negative=""):
        return generate(sd1, GenerationRequest(**SMALL, prompt=prompt, negative_prompt=negative, seed=1),
                        resources=GenerationResources(embeddings=database)).infotexts[0]

    both = infotext("a tinyemb cat", "tinyemb, blurry")
    assert f'TI hashes: "tinyemb: {short}, tinyemb: {short}"' in both
    assert parse_generation_parameters(both)["TI hashes"] == f"tinyemb: {short}, tinyemb: {short}"
    once = infotext("a tinyemb cat, tinyemb again")
    assert f'TI hashes: "tinyemb: {short}"' in once
    assert "TI hashes" not in infotext("a tinyembx cat")  # the name must be its own tokens


def test_an_interrupt_while_encoding_the_hires_prompts_keeps_the_first_pass(sd1):
    class InterruptAfterFirstPass(Control):
        """Interrupted from the first read after the first pass's last step was checked."""

        def __init__(self):
            super().__init__()
            self.reads_after_last_step = 0

        @property
        def interrupted(self):
            if self.reports and self.reports[-1][0] == SMALL["steps"]:
                self.reads_after_last_step += 1
            return self.reads_after_last_step >= 2

        @interrupted.setter
        def interrupted(self, value):
            pass

    result, calls = unet_context_lengths(sd1, GenerationRequest(**SMALL, prompt="a cat", seed=7, enable_hr=True,
                                                                hr_scale=2.0, sampler_name="Euler"),
                                         control=InterruptAfterFirstPass())
    assert result.interrupted and [image.size for image in result.images] == [(64, 64)]
    assert calls == [(2, 77)] * SMALL["steps"]  # no hires step ran


def test_sdxl_with_an_empty_negative_prompt_denoises_against_zeros(tmp_path):
    model = load_checkpoint(write_checkpoint(tmp_path / "xl.safetensors", "sdxl", dtype=torch.float32))
    seen = []
    handle = model.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((kwargs["encoder_hidden_states"].clone(),
                                             kwargs["added_cond_kwargs"]["text_embeds"].clone())), with_kwargs=True)
    try:
        generate(model, GenerationRequest(**SMALL, prompt="a cat", seed=3, sampler_name="Euler"))
        generate(model, GenerationRequest(**SMALL, prompt="a cat", negative_prompt="blurry", seed=3,
                                          sampler_name="Euler"))
    finally:
        handle.remove()
    steps = SMALL["steps"]
    for context, pooled in seen[:steps]:  # rows: prompt, then negative
        assert context[0].any() and not context[1].any() and pooled[0].any() and not pooled[1].any()
    for context, pooled in seen[steps:]:
        assert context[1].any() and pooled[1].any()
