"""img2img in the txt2img core, on a tiny SD1 checkpoint in the real layout: each rule of A1111.md
§13.4 checked against values computed here from the formula (the init latent from the VAE's own
encoder, the noise from the seed's generator, the sigmas from the schedule), not read back from the
engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from modules.generation.cfg_step import CFGHooks
from modules.generation.engine import EngineSettings, GenerationHooks, SaveTarget, generate
from modules.generation.img2img import img2img_steps
from modules.generation.requests import Img2ImgRequest
from modules.generation.rng import ImageRNG
from modules.generation.sampling.registry import build_sigmas, find_sampler
from modules.generation.sampling.schedules import DiscreteSchedule, alphas_cumprod_scaled_linear
from modules.generation.sampling.timesteps import a1111_timesteps
from modules.generation.vae_decode import decode_latents
from modules.library.model_loader import load_checkpoint
from modules.library.synthetic_checkpoints import write_checkpoint

SIZE = 64


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    return load_checkpoint(write_checkpoint(tmp_path_factory.mktemp("i2i") / "tiny.safetensors", "sd1",
                                            dtype=torch.float32))


def picture(width: int = SIZE, height: int = SIZE, seed: int = 0) -> Image.Image:
    """A smooth colour picture (gradients plus a little noise), so the VAE sees structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


def request(**fields) -> Img2ImgRequest:
    return Img2ImgRequest(**{"init_images": [picture()], "width": SIZE, "height": SIZE, "steps": 20,
                             "prompt": "a cat", "seed": 7, "sampler_name": "Euler", **fields})


def vae_mean_latent(model, image: Image.Image) -> torch.Tensor:
    """The scaled posterior mean of `image`, straight from the diffusers VAE."""
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        return model.vae.encode(pixels).latent_dist.mean * model.vae.config.scaling_factor


def seed_noise(seeds, size: int = SIZE) -> torch.Tensor:
    return ImageRNG((4, size // 8, size // 8), seeds).first()


def sigmas_for(model, sampler: str, steps: int) -> torch.Tensor:
    config = model.config.scheduler
    alphas = alphas_cumprod_scaled_linear(config["beta_start"], config["beta_end"], config["num_train_timesteps"])
    return build_sigmas(find_sampler(sampler), None, steps, DiscreteSchedule.from_alphas_cumprod(alphas))


def alphas_for(model) -> torch.Tensor:
    config = model.config.scheduler
    return alphas_cumprod_scaled_linear(config["beta_start"], config["beta_end"], config["num_train_timesteps"])


class Recorder(CFGHooks):
    """Each model evaluation's latent (the unconditional rows: one per image) and sigma/timestep."""

    def __init__(self):
        self.x, self.sigma = [], []

    def before_unet(self, step):
        self.x.append(step.x[step.cond_rows:].clone())
        self.sigma.append(step.sigma[step.cond_rows:].clone())


class Hooks(GenerationHooks):
    def __init__(self):
        self.recorder = Recorder()
        self.sampling = []  # (x, noise) at before_every_sampling
        self.samples = None

    def cfg_hooks(self, plan, total_steps):
        return self.recorder

    def before_every_sampling(self, plan, x, noise, cond, uncond):
        self.sampling.append((x.clone(), noise.clone()))

    def post_sample(self, plan, samples):
        self.samples = samples.clone()
        return samples


def run(model, settings=EngineSettings(), **fields):
    hooks = Hooks()
    return generate(model, request(**fields), settings, hooks=hooks), hooks


# --- the request -----------------------------------------------------------------------------------


@pytest.mark.parametrize("strength", [-0.1, 1.01])
def test_denoising_strength_outside_0_1_is_refused_naming_the_field(strength):
    with pytest.raises(ValidationError) as error:
        request(denoising_strength=strength)
    assert error.value.errors()[0]["loc"] == ("denoising_strength",)


def test_init_images_must_be_images():
    with pytest.raises(ValidationError, match=r"init_images\[1\] is a str, not an image"):
        request(init_images=[picture(), "x.png"], batch_size=2)
    with pytest.raises(ValidationError, match="at least one image"):
        request(init_images=[])


def test_image_count_sets_or_limits_the_batch():
    assert request(init_images=[picture(), picture(seed=1)], batch_size=4).batch_size == 2  # A1111's rule
    with pytest.raises(ValidationError, match="3 images for a batch of 2"):
        Img2ImgRequest(init_images=[picture()] * 3, batch_size=2)


def test_latent_upscale_refuses_an_image_too_large_to_encode_at_its_size():
    huge = Image.new("RGB", (4096, 1025))
    with pytest.raises(ValidationError, match=r"init_images\[0\] is 4096x1025.*at most 4,194,304 pixels"):
        request(init_images=[huge], resize_mode=3)
    assert request(init_images=[huge], resize_mode=0).resize_mode == 0  # resized before encoding


def test_hires_is_refused():
    with pytest.raises(ValidationError, match="enable_hr"):
        request(enable_hr=True)


# --- strength → steps (A1111's setup_img2img_steps) -----------------------------------------------


def test_steps_from_strength():
    assert img2img_steps(20, 0.75, False) == img2img_steps(20, 0.75, False)
    plan = img2img_steps(20, 0.75, False)
    assert (plan.schedule_steps, plan.t_enc + 1) == (20, 16)  # int(0.75·20) = 15 → 16 steps
    assert img2img_steps(20, 0.0, False).t_enc + 1 == 1
    assert img2img_steps(20, 1.0, False).t_enc + 1 == 20  # int(0.999·20) = 19
    fixed = img2img_steps(20, 0.75, True)
    assert (fixed.schedule_steps, fixed.t_enc + 1) == (26, 20)  # int(20 / 0.75) = 26, exactly 20 run
    with pytest.raises(ValueError, match="img2img_fix_steps"):
        img2img_steps(20, 0.0, True)


def test_k_diffusion_start_is_init_plus_noise_times_sigma(sd1):
    """Strength 0.75 of 20 Euler steps: 16 evaluations, the first on init + noise·sigmas[4]."""
    result, hooks = run(sd1, denoising_strength=0.75)
    sigmas = sigmas_for(sd1, "Euler", 20)
    expected = vae_mean_latent(sd1, picture()) + seed_noise(result.seeds) * sigmas[20 - 15 - 1]
    recorded = hooks.recorder
    assert len(recorded.x) == 16
    torch.testing.assert_close(recorded.sigma[0], sigmas[4].expand(1), rtol=0, atol=1e-6)
    torch.testing.assert_close(recorded.x[0], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.stack([s[0] for s in recorded.sigma]), sigmas[4:-1], rtol=0, atol=1e-6)
    assert "Denoising strength: 0.75" in result.infotexts[0]
    assert "Noise multiplier" not in result.infotexts[0]


def test_fix_steps_runs_exactly_the_requested_steps_on_a_longer_schedule(sd1):
    result, hooks = run(sd1, EngineSettings(img2img_fix_steps=True), denoising_strength=0.75)
    sigmas = sigmas_for(sd1, "Euler", 26)
    assert len(hooks.recorder.x) == 20
    torch.testing.assert_close(hooks.recorder.sigma[0], sigmas[26 - 19 - 1].expand(1), rtol=0, atol=1e-6)


def test_noise_multiplier_scales_the_noise_and_is_written(sd1):
    result, hooks = run(sd1, denoising_strength=0.5, initial_noise_multiplier=0.5)
    sigmas = sigmas_for(sd1, "Euler", 20)
    expected = vae_mean_latent(sd1, picture()) + seed_noise(result.seeds) * 0.5 * sigmas[20 - 10 - 1]
    torch.testing.assert_close(hooks.recorder.x[0], expected, rtol=1e-5, atol=1e-5)
    assert "Noise multiplier: 0.5" in result.infotexts[0]


def test_timestep_sampler_start_is_the_ddpm_forward_process(sd1):
    """DDIM at strength 0.75 of 20: noised to timesteps[15] (√ᾱ·x + √(1−ᾱ)·noise), then A1111's loop
    over timesteps[:15] from its last entry down: 14 evaluations."""
    result, hooks = run(sd1, sampler_name="DDIM", denoising_strength=0.75)
    timesteps = a1111_timesteps(20)
    alpha = alphas_for(sd1)[timesteps[15]].float()
    expected = vae_mean_latent(sd1, picture()) * alpha.sqrt() + seed_noise(result.seeds) * (1 - alpha).sqrt()
    torch.testing.assert_close(hooks.recorder.x[0], expected, rtol=1e-5, atol=1e-5)
    assert hooks.recorder.sigma[0].item() == timesteps[14].item()
    assert len(hooks.recorder.x) == 14


def test_extra_noise_adds_its_share_of_the_same_noise_and_is_written(sd1):
    """`img2img_extra_noise` e: σ samplers start at init + noise·σ + noise·e; the timestep ones at the
    forward process + noise·e·√ᾱ (A1111's sample_img2img)."""
    settings = EngineSettings(img2img_extra_noise=0.25)
    result, hooks = run(sd1, settings, denoising_strength=0.75)
    sigma = sigmas_for(sd1, "Euler", 20)[20 - 15 - 1]
    noise = seed_noise(result.seeds)
    expected = vae_mean_latent(sd1, picture()) + noise * sigma + noise * 0.25
    torch.testing.assert_close(hooks.recorder.x[0], expected, rtol=1e-5, atol=1e-5)
    assert "Extra noise: 0.25" in result.infotexts[0]

    result, hooks = run(sd1, settings, sampler_name="DDIM", denoising_strength=0.75)
    alpha = alphas_for(sd1)[a1111_timesteps(20)[15]].float()
    expected = (vae_mean_latent(sd1, picture()) * alpha.sqrt() + noise * (1 - alpha).sqrt()
                + noise * 0.25 * alpha.sqrt())
    torch.testing.assert_close(hooks.recorder.x[0], expected, rtol=1e-5, atol=1e-5)


def test_an_extra_noise_hook_replaces_the_extra_noise_only(sd1):
    class ZeroExtra(Hooks):
        def extra_noise(self, plan, noise, x, xi):
            self.seen = (x.clone(), xi.clone())
            return torch.zeros_like(noise)

    hooks = ZeroExtra()
    result = generate(sd1, request(denoising_strength=0.75), EngineSettings(img2img_extra_noise=0.5), hooks=hooks)
    plain, plain_hooks = run(sd1, denoising_strength=0.75)
    torch.testing.assert_close(hooks.recorder.x[0], plain_hooks.recorder.x[0], rtol=0, atol=0)
    torch.testing.assert_close(hooks.seen[1], plain_hooks.recorder.x[0], rtol=0, atol=0)  # xi before extra
    assert "Extra noise: 0.5" in result.infotexts[0] and "Extra noise" not in plain.infotexts[0]


@pytest.mark.parametrize("sampler", ["UniPC", "PLMS", "DPM++ 2M", "Euler a", "DPM++ SDE"])
def test_other_samplers_run(sd1, sampler):
    result, _ = run(sd1, sampler_name=sampler, steps=8, denoising_strength=0.6)
    assert result.images[0].size == (SIZE, SIZE)


def test_strength_0_is_the_vae_round_trip(sd1):
    """Strength 0: one step at the smallest non-zero sigma. With no noise (multiplier 0) and a UNet
    that predicts zero noise, that step changes nothing: the image is exactly the input decoded from
    its own latent."""
    handle = sd1.unet.register_forward_hook(lambda module, args, out: type(out)(sample=torch.zeros_like(out.sample)))
    try:
        result, hooks = run(sd1, denoising_strength=0.0, initial_noise_multiplier=0.0)
    finally:
        handle.remove()
    sigmas = sigmas_for(sd1, "Euler", 20)
    assert len(hooks.recorder.x) == 1
    torch.testing.assert_close(hooks.recorder.sigma[0], sigmas[-2].expand(1), rtol=0, atol=1e-6)
    latent = vae_mean_latent(sd1, picture())
    torch.testing.assert_close(hooks.samples, latent, rtol=1e-5, atol=1e-5)
    round_trip = (decode_latents(sd1, latent).images[0].permute(1, 2, 0) * 255).round().byte().numpy()
    assert np.abs(np.asarray(result.images[0], dtype=np.int16) - round_trip).max() <= 1


def test_strength_0_with_the_model_stays_within_one_small_sigma_step(sd1):
    """The real UNet at strength 0: the one Euler step from init + σ·noise lands on D(x) = x − σ·ε̂, so
    the latent moves from the init by σ·(noise − ε̂) with σ the smallest sigma (≈ 0.03)."""
    result, hooks = run(sd1, denoising_strength=0.0)
    sigma = sigmas_for(sd1, "Euler", 20)[-2]
    latent, noise = vae_mean_latent(sd1, picture()), seed_noise(result.seeds)
    start = hooks.recorder.x[0]
    torch.testing.assert_close(start, latent + noise * sigma, rtol=1e-5, atol=1e-5)
    eps_hat = (start - hooks.samples) / sigma  # the guided noise prediction the step removed
    torch.testing.assert_close(hooks.samples - latent, sigma * (noise - eps_hat), rtol=1e-4, atol=1e-5)
    assert (hooks.samples - latent).abs().max() <= sigma * (noise.abs().max() + eps_hat.abs().max())


def test_batch_images_reproduce_single_runs_with_the_next_seed(sd1):
    batch, _ = run(sd1, sampler_name="Euler a", batch_size=2, seed=10, steps=6)
    single, _ = run(sd1, sampler_name="Euler a", seed=11, steps=6)
    assert batch.seeds == [10, 11]
    assert np.abs(np.asarray(batch.images[1], dtype=np.int16) - np.asarray(single.images[0], dtype=np.int16)).max() <= 1


def test_one_init_image_per_batch_image(sd1):
    images = [picture(seed=1), picture(seed=2)]
    result, hooks = run(sd1, init_images=images, batch_size=2, steps=4)
    init, _ = hooks.sampling[0]
    for index, image in enumerate(images):
        torch.testing.assert_close(init[index:index + 1], vae_mean_latent(sd1, image), rtol=1e-5, atol=1e-5)


def test_latent_upscale_mode_resizes_the_latent_bilinearly(sd1):
    small = picture(32, 32)
    result, hooks = run(sd1, init_images=[small], resize_mode=3, steps=4)
    init, _ = hooks.sampling[0]
    expected = torch.nn.functional.interpolate(vae_mean_latent(sd1, small), size=(8, 8), mode="bilinear")
    torch.testing.assert_close(init, expected, rtol=1e-5, atol=1e-5)
    assert result.images[0].size == (SIZE, SIZE)


def test_images_are_saved_to_the_img2img_folder(sd1, tmp_path):
    result = generate(sd1, request(steps=4), save=SaveTarget(str(tmp_path)))
    assert len(result.saved_paths) == 1
    assert "outputs/img2img-images" in result.saved_paths[0].replace("\\", "/")


# --- inpainting ------------------------------------------------------------------------------------


def left_half_mask(width: int = SIZE, height: int = SIZE) -> Image.Image:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[:, : width // 2] = 255
    return Image.fromarray(mask, mode="L")


HARD_WHOLE = dict(mask_blur_x=0, mask_blur_y=0, inpaint_full_res=False, inpainting_fill=1)


class BlendRecorder(Recorder):
    def __init__(self):
        super().__init__()
        self.after = []

    def after_cfg(self, step, denoised):
        self.after.append(denoised.clone())
        return denoised


def test_hard_mask_keeps_every_pixel_outside_it(sd1):
    """Whole picture, no blur: the right half is the input's pixels exactly after paste-back, the
    left half is repainted."""
    result, _ = run(sd1, mask=left_half_mask(), steps=6, **HARD_WHOLE)
    out, original = np.asarray(result.images[0], dtype=np.int16), np.asarray(picture(), dtype=np.int16)
    assert np.array_equal(out[:, SIZE // 2:], original[:, SIZE // 2:])
    assert np.abs(out[:, : SIZE // 2] - original[:, : SIZE // 2]).max() > 10
    info = result.infotexts[0]
    assert "Denoising strength: 0.75" in info and "Mask blur" not in info and "Masked content" not in info


def test_latent_outside_the_mask_is_the_init_after_every_step_and_at_the_end(sd1):
    """Ordinary checkpoint: each guided x0 is blended with the init latent (before the after_cfg
    listeners, A1111's order), and so are the final samples."""
    hooks = Hooks()
    hooks.recorder = BlendRecorder()
    generate(sd1, request(mask=left_half_mask(), steps=6, **HARD_WHOLE), hooks=hooks)
    latent = vae_mean_latent(sd1, picture())
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., 4:] = 1  # the latent mask of the left-half mask, rounded: columns 0-3 repainted
    for denoised in hooks.recorder.after + [hooks.samples]:
        torch.testing.assert_close(denoised * keep, latent * keep, rtol=1e-5, atol=1e-5)
    assert (hooks.samples * (1 - keep) - latent * (1 - keep)).abs().max() > 1e-2


def test_latent_nothing_and_latent_noise_start_from_the_formula(sd1):
    """`latent nothing`: zeros under the mask; `latent noise`: the first batch's seed noise there
    (the same draw as the sampling noise, A1111's quirk); then + noise·σ as always. Both encode the
    picture after "fill" blurred its masked pixels (A1111 fills for every content but original)."""
    from modules.generation import img2img_images as ops

    sigma = sigmas_for(sd1, "Euler", 20)[4]
    latent = vae_mean_latent(sd1, ops.fill_masked(picture(), left_half_mask()))
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., 4:] = 1
    for fill, masked in ((3, lambda noise: 0), (2, lambda noise: noise)):
        result, hooks = run(sd1, mask=left_half_mask(), **{**HARD_WHOLE, "inpainting_fill": fill})
        noise = seed_noise(result.seeds)
        expected = latent * keep + masked(noise) * (1 - keep) + noise * sigma
        torch.testing.assert_close(hooks.recorder.x[0], expected, rtol=1e-5, atol=1e-5)
        assert f"Masked content: {('fill', 'original', 'latent noise', 'latent nothing')[fill]}" in result.infotexts[0]


def test_only_masked_returns_the_original_size_with_pixels_outside_the_mask_unchanged(sd1):
    original = picture(96, 80, seed=3)
    mask = np.zeros((80, 96), dtype=np.uint8)
    mask[30:50, 40:60] = 255
    result, _ = run(sd1, init_images=[original], mask=Image.fromarray(mask, mode="L"), mask_blur_x=0, mask_blur_y=0,
                    inpaint_full_res=True, inpaint_full_res_padding=8, inpainting_fill=1, steps=6)
    out = np.asarray(result.images[0], dtype=np.int16)
    assert result.images[0].size == (96, 80)
    outside = mask == 0
    assert np.array_equal(out[outside], np.asarray(original, dtype=np.int16)[outside])
    assert np.abs(out[~outside] - np.asarray(original, dtype=np.int16)[~outside]).max() > 10
    assert "Inpaint area: Only masked" in result.infotexts[0] and "Masked area padding: 8" in result.infotexts[0]


@pytest.mark.parametrize("full_res", [True, False])
def test_empty_mask_is_refused(sd1, full_res):
    from modules.generation.img2img import EmptyMaskError

    with pytest.raises(EmptyMaskError, match="nothing to inpaint"):
        generate(sd1, request(mask=Image.new("L", (SIZE, SIZE)), inpaint_full_res=full_res))
    with pytest.raises(EmptyMaskError):  # all white, inverted
        generate(sd1, request(mask=Image.new("L", (SIZE, SIZE), 255), inpainting_mask_invert=1,
                              inpaint_full_res=full_res))


def test_timestep_sampler_keeps_the_init_outside_the_mask(sd1):
    result, hooks = run(sd1, sampler_name="DDIM", mask=left_half_mask(), steps=10, **HARD_WHOLE)
    keep = torch.zeros(1, 1, 8, 8)
    keep[..., 4:] = 1
    latent = vae_mean_latent(sd1, picture())
    torch.testing.assert_close(hooks.samples * keep, latent * keep, rtol=1e-5, atol=1e-5)
    alphas = alphas_for(sd1)
    # Each model input outside the mask is the init noised to that evaluation's timestep.
    noise = seed_noise(result.seeds)
    for x, t in zip(hooks.recorder.x, hooks.recorder.sigma):
        alpha = alphas[int(t[0].item())].float()
        expected = latent * alpha.sqrt() + noise * (1 - alpha).sqrt()
        torch.testing.assert_close(x * keep, expected * keep, rtol=1e-5, atol=1e-5)


def test_colour_correction_matches_the_init_colours(sd1):
    from modules.generation import img2img_images as ops

    plain, _ = run(sd1, steps=4)
    corrected, _ = run(sd1, EngineSettings(img2img_color_correction=True), steps=4)
    expected = ops.apply_color_correction(ops.color_correction_reference(picture()), plain.images[0])
    assert np.array_equal(np.asarray(corrected.images[0]), np.asarray(expected))


@pytest.fixture(scope="module")
def sd1_inpaint(tmp_path_factory):
    return load_checkpoint(write_checkpoint(tmp_path_factory.mktemp("i2i") / "inpaint.safetensors", "sd1-inpaint",
                                            dtype=torch.float32))


def test_inpainting_checkpoint_gets_mask_and_masked_image_latent(sd1_inpaint):
    """9-channel UNet: channels 4..8 of every UNet input are [mask nearest-resized to 8×8 | the scaled
    VAE mean of the image with the masked pixels set to 0 (mid-grey) at weight 1]."""
    seen = []
    handle = sd1_inpaint.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        result, _ = run(sd1_inpaint, mask=left_half_mask(), steps=3, **HARD_WHOLE)
    finally:
        handle.remove()
    pixels = torch.from_numpy(np.asarray(picture(), dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., : SIZE // 2] = 1
    with torch.no_grad():
        masked_latent = (sd1_inpaint.vae.encode(pixels * (1 - mask)).latent_dist.mean
                         * sd1_inpaint.vae.config.scaling_factor)
    small_mask = torch.zeros(1, 1, 8, 8)
    small_mask[..., :4] = 1
    assert seen and all(x.shape[1] == 9 for x in seen)
    for x in seen:
        for row in x:  # cond and uncond rows alike
            torch.testing.assert_close(row[4:5], small_mask[0], rtol=0, atol=0)
            # 1e-4: the engine's lerp(img, img·(1 − mask), 1) rounds differently from img·(1 − mask)
            torch.testing.assert_close(row[5:], masked_latent[0], rtol=1e-4, atol=1e-4)
    assert "Conditional mask weight: 1.0" in result.infotexts[0]


def test_inpainting_mask_weight_shows_the_model_part_of_the_original(sd1_inpaint):
    seen = []
    handle = sd1_inpaint.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        result, _ = run(sd1_inpaint, mask=left_half_mask(), steps=2, inpainting_mask_weight=0.25, **HARD_WHOLE)
    finally:
        handle.remove()
    pixels = torch.from_numpy(np.asarray(picture(), dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    mask = torch.zeros(1, 1, SIZE, SIZE)
    mask[..., : SIZE // 2] = 1
    with torch.no_grad():  # lerp(img, img·(1 − mask), 0.25) = img·(1 − 0.25·mask)
        expected = sd1_inpaint.vae.encode(pixels * (1 - 0.25 * mask)).latent_dist.mean
    torch.testing.assert_close(seen[0][0, 5:], expected[0] * sd1_inpaint.vae.config.scaling_factor,
                               rtol=1e-4, atol=1e-4)
    assert "Conditional mask weight: 0.25" in result.infotexts[0]


def test_inpainting_checkpoint_without_a_mask_is_refused(sd1_inpaint):
    with pytest.raises(ValueError, match="inpainting checkpoint .* needs a mask"):
        generate(sd1_inpaint, request(steps=2))


@pytest.fixture(scope="module")
def sd1_pix2pix(tmp_path_factory):
    return load_checkpoint(write_checkpoint(tmp_path_factory.mktemp("i2i") / "p2p.safetensors", "sd1-pix2pix",
                                            dtype=torch.float32))


class EditRecorder(CFGHooks):
    def __init__(self):
        self.steps = []

    def after_unet(self, step, out):
        self.steps.append([step.x.clone(), step.image_cond.clone(), out.clone()])

    def after_cfg(self, step, denoised):
        self.steps[-1].append(denoised.clone())
        return denoised


def test_instruct_pix2pix_image_cfg_combines_three_predictions(sd1_pix2pix):
    """Rows (prompt, image), (negative, image), (negative, zeros); the unscaled image latent as the 4
    extra channels; denoised = uncond + cfg·(cond − img) + image_cfg·(img − uncond)."""
    hooks = Hooks()
    hooks.recorder = EditRecorder()
    result = generate(sd1_pix2pix, request(steps=3, cfg_scale=6.0, image_cfg_scale=1.5), hooks=hooks)
    with torch.no_grad():
        pixels = torch.from_numpy(np.asarray(picture(), dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
        image_latent = sd1_pix2pix.vae.encode(pixels).latent_dist.mean
    assert hooks.recorder.steps
    for x, image_cond, out, denoised in hooks.recorder.steps:
        assert x.shape[0] == 3 and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
        torch.testing.assert_close(image_cond[:2], image_latent.expand(2, -1, -1, -1), rtol=1e-5, atol=1e-5)
        assert torch.count_nonzero(image_cond[2]) == 0
        cond, img, uncond = out[0:1], out[1:2], out[2:3]
        torch.testing.assert_close(denoised, uncond + 6.0 * (cond - img) + 1.5 * (img - uncond), rtol=1e-5, atol=1e-5)
    assert "Image CFG scale: 1.5" in result.infotexts[0]


def test_instruct_pix2pix_refuses_and_with_image_cfg(sd1_pix2pix):
    with pytest.raises(ValueError, match="AND is not supported"):
        generate(sd1_pix2pix, request(steps=2, prompt="a AND b", image_cfg_scale=1.5))


def test_txt2img_on_an_inpainting_checkpoint_masks_everything(sd1_inpaint):
    """A1111's txt2img conditioning for inpainting checkpoints: an all-ones mask and the latent of a
    mid-grey image (0 in [−1, 1])."""
    from modules.generation.engine import GenerationRequest

    seen = []
    handle = sd1_inpaint.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    try:
        result = generate(sd1_inpaint, GenerationRequest(prompt="a cat", width=SIZE, height=SIZE, steps=2, seed=3))
    finally:
        handle.remove()
    with torch.no_grad():
        grey = (sd1_inpaint.vae.encode(torch.zeros(1, 3, SIZE, SIZE)).latent_dist.mean
                * sd1_inpaint.vae.config.scaling_factor)
    assert result.images[0].size == (SIZE, SIZE)
    for x in seen:
        assert x.shape[1] == 9 and torch.equal(x[:, 4], torch.ones_like(x[:, 4]))
        torch.testing.assert_close(x[:, 5:], grey.expand(x.shape[0], -1, -1, -1), rtol=1e-5, atol=1e-5)


def test_variation_seed_noise_is_txt2img_s(sd1):
    """Seeds, variation seeds and their strength make the same first noise as in txt2img."""
    result, hooks = run(sd1, seed=5, subseed=9, subseed_strength=0.4, denoising_strength=0.5)
    noise = ImageRNG((4, SIZE // 8, SIZE // 8), [5], [9], 0.4).first()
    sigma = sigmas_for(sd1, "Euler", 20)[20 - 10 - 1]
    torch.testing.assert_close(hooks.recorder.x[0], vae_mean_latent(sd1, picture()) + noise * sigma,
                               rtol=1e-5, atol=1e-5)
    assert "Variation seed: 9" in result.infotexts[0] and "Variation seed strength: 0.4" in result.infotexts[0]


def test_extra_noise_reaches_the_hires_pass_and_not_plain_txt2img(sd1):
    from modules.generation.engine import GenerationRequest

    settings = EngineSettings(img2img_extra_noise=0.3)
    base = dict(prompt="a cat", width=SIZE, height=SIZE, steps=2, seed=3, sampler_name="Euler")
    plain = generate(sd1, GenerationRequest(**base), settings)
    assert "Extra noise" not in plain.infotexts[0]
    hires = {**base, "enable_hr": True, "hr_scale": 1.5, "denoising_strength": 0.5}
    with_extra = generate(sd1, GenerationRequest(**hires), settings)
    without = generate(sd1, GenerationRequest(**hires))
    assert "Extra noise: 0.3" in with_extra.infotexts[0]
    assert not np.array_equal(np.asarray(with_extra.images[0]), np.asarray(without.images[0]))


@pytest.mark.parametrize("field", ["init_images", "mask"])
def test_an_image_over_the_pixel_limit_is_refused_naming_the_field_and_the_limit(field):
    """The UI, the API and Batch share the limit (the request checks it); a 1-bit image keeps the test small."""
    from modules.generation.requests import MAX_INIT_IMAGE_PIXELS

    huge = Image.new("1", (8193, 8192))
    fields = {"mask": huge} if field == "mask" else {"init_images": [huge]}
    with pytest.raises(ValidationError, match=rf"{field}.*8193x8192.*at most {MAX_INIT_IMAGE_PIXELS:,}"):
        request(**fields)
    request(mask=Image.new("1", (8192, 8192)))  # at the limit: accepted
