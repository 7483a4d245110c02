"""img2img Batch (A1111.md §13.1) on tiny real-layout checkpoints through the job queue: folder walk
and masks, output names that never overwrite, one seed for every file, PNG info, interrupt, the
gallery limit; and the folder rules a user on a shared server must not get around."""

from __future__ import annotations

import os
import re
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from modules.generation.img2img_batch import (
    MAX_BATCH_IMAGE_PIXELS,
    BatchRefused,
    BatchSpec,
    plan_batch,
    submit_batch,
)
from modules.serving.cmd_args import parse_args
from modules.serving.jobs import JobEvent, JobState
from modules.serving.paths import REPO_ROOT
from modules.ui import img2img_batch_tab
from tests.test_api_support import WAIT, make_context

SIZE = 64
TEMPLATE = {"prompt": "a cat", "width": SIZE, "height": SIZE, "steps": 2, "sampler_name": "Euler",
            "denoising_strength": 0.5, "seed": -1}


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    context = make_context(tmp_path_factory.mktemp("batch"), names=("a", "b"))
    yield context
    context.jobs.shutdown(timeout=WAIT)


@pytest.fixture
def settings(context):
    """Settings changed by a test go back afterwards."""
    before = context.settings.current().to_dict()
    yield context.settings
    context.settings.apply({key: before[key] for key in ("save_images_add_number", "samples_save",
                                                         "img2img_batch_show_results_limit")})


def picture(seed: int = 0, size: int = SIZE) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def save(path: Path, image: Image.Image | None = None, infotext: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    info = None
    if infotext is not None:
        info = PngInfo()
        info.add_text("parameters", infotext)
    (image or picture()).save(path, pnginfo=info)
    return path


def square_mask() -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def run(context, spec: BatchSpec, **template):
    job = submit_batch(context, {**TEMPLATE, **template}, spec)
    job.wait(WAIT)
    assert job.state in (JobState.DONE, JobState.INTERRUPTED), job.error
    return job, job.result


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# --- folders, masks and names ----------------------------------------------------------------------


def test_folder_walk_masks_and_a_missing_mask(context, settings, tmp_path):
    settings.apply({"save_images_add_number": False})
    source, masks, out = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    for name in ("b.png", "a10.png", "sub/c.jpg", "a2.png", "notes.txt"):
        save(source / name) if not name.endswith(".txt") else (source / name).write_text("not an image")
    for stem in ("a2", "a10", "c"):  # b has none; more than one mask: matched by stem
        save(masks / f"{stem}.png", square_mask())
    (masks / "a10.png").rename(masks / "a10.mask.png")  # "<stem>.*": any suffix after the stem's dot
    job, result = run(context, BatchSpec.directory(str(source), str(out), str(masks)))
    # Natural order, the root folder before its subfolder; b skipped with a warning naming it.
    assert names(out) == ["a10.png", "a2.png", "c.png"]
    assert [Path(p).name for p in result.saved_paths] == ["a2.png", "a10.png", "c.png"]
    assert any(str(source / "b.png") in w and "no mask" in w for w in result.warnings)
    # Each ran as an inpainting request (A1111 writes "Mask blur" only with a mask).
    assert len(result.images) == 3 and all("Mask blur: 4" in text for text in result.infotexts)


def test_a_single_mask_file_masks_every_image(context, tmp_path):
    source, masks = tmp_path / "in", tmp_path / "masks"
    save(source / "x.png"), save(source / "y.png")
    save(masks / "whatever.png", square_mask())
    plan = plan_batch(BatchSpec.directory(str(source), "", str(masks)), context.args, context.paths.data_dir)
    assert [(f.path.name, f.mask.name) for f in plan.files] == [("x.png", "whatever.png"), ("y.png", "whatever.png")]


def test_a_mask_folder_with_no_match_leaves_nothing_to_do(context, tmp_path):
    source, masks = tmp_path / "in", tmp_path / "masks"
    save(source / "x.png")
    save(masks / "p.png", square_mask()), save(masks / "q.png", square_mask())
    with pytest.raises(BatchRefused, match=r"Input directory: no images to process.*x\.png: no mask"):
        plan_batch(BatchSpec.directory(str(source), "", str(masks)), context.args, context.paths.data_dir)


def test_output_names_never_overwrite_and_number_several_images(context, settings, tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    save(source / "a.png")
    out.mkdir()
    (out / "a.png").write_bytes(b"the user's own file")
    settings.apply({"save_images_add_number": False})
    run(context, BatchSpec.directory(str(source), str(out)))
    assert (out / "a.png").read_bytes() == b"the user's own file"
    assert names(out) == ["a-1.png", "a.png"]
    run(context, BatchSpec.directory(str(source), str(out)), batch_size=2)  # [generation_number] 1 and 2
    assert names(out) == ["a-1-1.png", "a-1.png", "a-2.png", "a.png"]
    settings.apply({"save_images_add_number": True})  # A1111's default: NNNNN- before the pattern
    run(context, BatchSpec.directory(str(source), str(out)))
    numbered = [n for n in names(out) if re.fullmatch(r"\d{5}-a\.png", n)]
    assert len(numbered) == 1 and (out / "a.png").read_bytes() == b"the user's own file"


def test_every_file_shares_the_one_seed(context, tmp_path):
    source = tmp_path / "in"
    for index in range(3):
        save(source / f"{index}.png", picture(index))
    _, result = run(context, BatchSpec.directory(str(source)), batch_size=2, seed=-1, subseed=-1)
    first, second = result.seeds[:2]
    assert second == first + 1  # within a file, seed + i as in any batch
    assert result.seeds == [first, first + 1] * 3
    assert result.subseeds == result.subseeds[:2] * 3


def test_uploads_run_and_the_gallery_keeps_the_first_n(context, settings, tmp_path):
    settings.apply({"img2img_batch_show_results_limit": 3, "samples_save": False})
    files = [str(save(tmp_path / f"up{i}.png", picture(i))) for i in range(2)]
    job, result = run(context, BatchSpec.upload(files + [str(tmp_path / "gone.png")]), batch_size=2)
    assert len(result.images) == 3 and len(result.infotexts) == 3 and len(result.seeds) == 3
    assert result.saved_paths == []  # samples_save off and no output folder: nothing written
    # The gallery: no grid in front (return_grid is on), each image with its infotext, the skip as a note.
    assert context.settings.current()["return_grid"]
    outcome = img2img_batch_tab.batch_outcome(context, job)
    assert [image.info["parameters"] for image in outcome.images] == outcome.infotexts[:3]
    assert len(outcome.images) == 3 and any("gone.png" in note for note in outcome.notes)


def test_png_info_is_appended_and_replaces_the_ticked_keys(context, tmp_path):
    other = context.checkpoints.list()[1]
    other_hash = context.checkpoints.ensure_hash(other).shorthash
    infotext = (f"a dog\nNegative prompt: blurry\nSteps: 3, Sampler: Euler a, CFG scale: 5, Seed: 1234, "
                f"Size: 64x64, Model hash: {other_hash}")
    source, info_dir = tmp_path / "in", tmp_path / "info"
    save(source / "own.png", infotext=infotext)
    save(source / "plain.png")
    save(info_dir / "plain.png", infotext=infotext.replace("a dog", "a bird"))
    props = ["Prompt", "Seed", "Steps", "Sampler", "Model hash"]
    _, result = run(context, BatchSpec.directory(str(source), use_png_info=True, png_info_props=props),
                    negative_prompt="ugly", cfg_scale=7)
    own = result.infotexts[0]
    assert own.startswith("a cat a dog\nNegative prompt: ugly\n")  # appended; the negative one not ticked
    for part in ("Steps: 3", "Sampler: Euler a", "CFG scale: 7", "Seed: 1234", f"Model hash: {other_hash}"):
        assert part in own
    assert "a cat\n" in result.infotexts[1]  # plain.png has no infotext of its own: the tab's values
    assert "Mask blur" not in own
    _, result = run(context, BatchSpec.directory(str(source), use_png_info=True, png_info_dir=str(info_dir),
                                                 png_info_props=["Prompt"]))
    assert result.infotexts[1].startswith("a cat a bird\n")
    assert any("own.png" in w and "no PNG info" in w for w in result.warnings)  # not in info_dir


def test_interrupt_stops_the_batch_after_the_current_file(context, tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    for name in ("1.png", "2.png", "3.png"):
        save(source / name)

    def interrupt_at_first_step(event, job):
        if event is JobEvent.PROGRESS and job.kind == "img2img":
            context.jobs.interrupt(job.id)

    context.jobs.add_listener(interrupt_at_first_step)
    try:
        job, result = run(context, BatchSpec.directory(str(source), str(out)))
    finally:
        context.jobs.remove_listener(interrupt_at_first_step)
    assert job.state is JobState.INTERRUPTED and result.interrupted
    assert len(result.images) == 1  # the first file's (partial) image, no other file started
    assert [re.sub(r"^\d{5}-", "", name) for name in names(out)] == ["1.png"]


# --- refusals ------------------------------------------------------------------------------------


def args_for(context, *flags: str):
    return parse_args(["--data-dir", str(context.paths.data_dir), *flags])


@pytest.mark.parametrize("flags, refused", [
    ((), False), (("--listen",), True), (("--server-name", "0.0.0.0"), True),
    (("--listen", "--allow-ui-dir-config"), False), (("--hide-ui-dir-config",), True),
    (("--listen", "--gradio-auth", "u:p"), True),
])
def test_server_folders_are_the_operators_to_open(context, tmp_path, flags, refused):
    save(tmp_path / "in" / "x.png")
    spec = BatchSpec.directory(str(tmp_path / "in"))
    if refused:
        with pytest.raises(BatchRefused, match="Input directory: batch folders are off"):
            plan_batch(spec, args_for(context, *flags), context.paths.data_dir)
        upload = BatchSpec.upload([str(tmp_path / "in" / "x.png")], use_png_info=True, png_info_dir=str(tmp_path))
        with pytest.raises(BatchRefused, match="PNG info directory: batch folders are off"):
            plan_batch(upload, args_for(context, *flags), context.paths.data_dir)
    else:
        assert len(plan_batch(spec, args_for(context, *flags), context.paths.data_dir).files) == 1
    # Uploads alone always work.
    assert len(plan_batch(BatchSpec.upload([str(tmp_path / "in" / "x.png")]), args_for(context, *flags),
                          context.paths.data_dir).files) == 1


def test_output_folders_inside_the_program_are_refused(context, tmp_path):
    save(tmp_path / "in" / "x.png")
    data = context.paths.data_dir
    link = tmp_path / "innocent"
    link.symlink_to(REPO_ROOT / "modules")
    refused = [str(REPO_ROOT / "modules"), str(REPO_ROOT / "extensions"), str(REPO_ROOT / "outputs" / ".." / "venv"),
               "outputs/../models", f"outputs/../../{data.name}/x", str(data), str(link), str(link / "new-sub"),
               "/dev/shm/x", "/proc/self"]
    for value in refused:
        with pytest.raises(BatchRefused, match="Output directory: .* is inside"):
            plan_batch(BatchSpec.directory(str(tmp_path / "in"), value), context.args, data)
    allowed = {"outputs/batch": data / "outputs" / "batch", "outputs/x/../y": data / "outputs" / "y",
               str(tmp_path / "elsewhere"): tmp_path / "elsewhere"}
    for value, expected in allowed.items():
        plan = plan_batch(BatchSpec.directory(str(tmp_path / "in"), value), context.args, data)
        assert plan.output_dir == Path(os.path.realpath(expected))
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(BatchRefused, match="is a file, not a folder"):
        plan_batch(BatchSpec.directory(str(tmp_path / "in"), str(tmp_path / "a-file")), context.args, data)


def test_an_output_folder_inside_a_model_folder_given_on_the_command_line_is_refused(context, tmp_path):
    """--ckpt-dir / --lora-dir ... may lie outside the data folder: they are the program's folders too."""
    save(tmp_path / "in" / "x.png")
    checkpoints, loras, esrgan = tmp_path / "my-checkpoints", tmp_path / "my-loras", tmp_path / "my-esrgan"
    args = args_for(context, "--ckpt-dir", str(checkpoints), "--lora-dir", str(loras),
                    "--esrgan-models-path", str(esrgan))
    for value in (str(checkpoints), str(checkpoints / "sub"), str(loras), str(esrgan)):
        with pytest.raises(BatchRefused, match="Output directory: .* is inside"):
            plan_batch(BatchSpec.directory(str(tmp_path / "in"), value), args, context.paths.data_dir)
    assert plan_batch(BatchSpec.directory(str(tmp_path / "in"), str(tmp_path / "out")), args,
                      context.paths.data_dir).output_dir == Path(os.path.realpath(tmp_path / "out"))


def test_files_that_are_not_plain_images_inside_the_folder_are_skipped(context, tmp_path):
    source, outside = tmp_path / "in", tmp_path / "outside"
    save(source / "good.png")
    save(outside / "secret.png")
    (source / "link.png").symlink_to(outside / "secret.png")  # leads out of the folder
    (source / "zero.png").symlink_to("/dev/zero")  # a device: reading it never ends
    os.mkfifo(source / "pipe.png")  # opening a FIFO blocks
    (source / "fake.png").write_bytes(b"not a png at all")
    Image.new("1", (9000, 9000)).save(source / "huge.png")  # tiny file, 81 megapixels
    (source / "sub").symlink_to(outside, target_is_directory=True)
    _, result = run(context, BatchSpec.directory(str(source)))
    warnings = "\n".join(result.warnings)
    assert len(result.images) == 1 and len(result.infotexts) == 1
    assert str(source / "link.png") in warnings and str(source / "zero.png") in warnings
    assert str(source / "sub" / "secret.png") in warnings  # through the linked folder: out as well
    assert f"{source / 'pipe.png'}: not a regular file" in warnings
    assert f"{source / 'fake.png'}: not an image" in warnings
    assert f"{source / 'huge.png'}: the image is 9000x9000" in warnings
    assert 9000 * 9000 > MAX_BATCH_IMAGE_PIXELS


def test_missing_folders_and_bad_templates_are_refused_before_queueing(context, tmp_path):
    data = context.paths.data_dir
    with pytest.raises(BatchRefused, match="Input directory: .* is not a folder"):
        plan_batch(BatchSpec.directory(str(tmp_path / "nope")), context.args, data)
    with pytest.raises(BatchRefused, match="NUL"):
        plan_batch(BatchSpec.directory("in\x00put"), context.args, data)
    save(tmp_path / "in" / "x.png")
    spec = BatchSpec.directory(str(tmp_path / "in"))
    with pytest.raises(ValueError, match="set per file"):
        submit_batch(context, {**TEMPLATE, "init_images": [picture()]}, spec)
    with pytest.raises(ValueError, match="unknown img2img field"):
        submit_batch(context, {**TEMPLATE, "prompt_typo": "x"}, spec)
    with pytest.raises(ValueError, match="denoising_strength"):
        submit_batch(context, {**TEMPLATE, "denoising_strength": 2}, spec)
    with pytest.raises(ValueError, match="PNG info: unknown key"):
        BatchSpec.directory(str(tmp_path), png_info_props=["Prompt", "Seeds"])


def test_the_pixel_limit_is_the_apis():
    from modules.api.images import MAX_API_IMAGE_PIXELS

    assert MAX_BATCH_IMAGE_PIXELS == MAX_API_IMAGE_PIXELS


# --- the sub-tab --------------------------------------------------------------------------------


class _Context:
    def __init__(self, args):
        self.args = args


def build_tab(args) -> img2img_batch_tab.BatchTab:
    with gr.Blocks(), gr.Tab("Batch", elem_id="img2img_batch_tab"):
        return img2img_batch_tab.build(_Context(args))


def test_the_tab_has_a1111s_fields_and_builds_specs(context, tmp_path):
    tab = build_tab(args_for(context))
    ids = {getattr(c, "elem_id", None) for c in tab.inputs}
    assert {"img2img_image_batch", "img2img_batch_input_dir", "img2img_batch_output_dir",
            "img2img_batch_inpaint_mask_dir", "img2img_batch_use_png_info", "img2img_batch_png_info_dir",
            "img2img_batch_png_info_props"} <= ids
    values = img2img_batch_tab.values_for(tab, source="from dir", input_dir=" /x ", output_dir="",
                                          inpaint_mask_dir="/m", use_png_info=True, png_info_props=["Seed"])
    assert tab.spec(*values) == BatchSpec.directory("/x", "", "/m", use_png_info=True, png_info_props=["Seed"])
    values = img2img_batch_tab.values_for(tab, source="upload", upload=["/tmp/a.png"], input_dir="/ignored")
    assert tab.spec(*values) == BatchSpec.upload(["/tmp/a.png"])
    with pytest.raises(ValueError, match="Batch Process: no files uploaded"):
        tab.spec(*img2img_batch_tab.values_for(tab, source="upload", upload=[]))
    with pytest.raises(ValueError, match="Input directory: empty"):
        tab.spec(*img2img_batch_tab.values_for(tab, source="from dir", input_dir=""))


def test_the_tab_shows_why_folders_are_off_on_a_shared_server(context):
    tab = build_tab(args_for(context, "--listen"))
    assert tab.input_dir is None and tab.output_dir is None and tab.png_info_dir is None
    assert "--allow-ui-dir-config" in tab.refusal
    assert [getattr(c, "elem_id", None) for c in tab.inputs] == [
        "img2img_batch_source_type", "img2img_image_batch", "img2img_batch_use_png_info",
        "img2img_batch_png_info_props"]
    # Even a crafted "from dir" value has no folder to name: the spec is refused, saying why.
    with pytest.raises(ValueError, match="Input directory: batch folders are off"):
        tab.spec("from dir", None, False, [])


def test_an_uploaded_path_that_is_a_device_is_skipped(context, tmp_path):
    good = save(tmp_path / "good.png")
    _, result = run(context, BatchSpec.upload(["/dev/zero", str(good)]))
    assert len(result.images) == 1
    assert any(w.startswith("/dev/zero: not a regular file") for w in result.warnings)


def test_resize_by_scales_each_file_to_a_multiple_of_8(context, tmp_path):
    files = [str(save(tmp_path / "wide.png", picture(size=96).resize((96, 128)))),
             str(save(tmp_path / "small.png", picture(size=64)))]
    job = submit_batch(context, TEMPLATE, BatchSpec.upload(files), scale_by=0.75)
    result = job.wait(WAIT).result
    # 96x128 x 0.75 = 72x96; 64x64 x 0.75 = 48x48, raised to the smallest request size, 64.
    assert ["Size: 72x96" in result.infotexts[0], "Size: 64x64" in result.infotexts[1]] == [True, True]


def test_the_gallery_lists_a_bounded_number_of_warnings(context, tmp_path):
    from modules.generation.img2img_batch import MAX_WARNINGS_SHOWN

    source = tmp_path / "in"
    count = MAX_WARNINGS_SHOWN + 5
    for index in range(count):
        (source / f"{index}.png").parent.mkdir(exist_ok=True)
        (source / f"{index}.png").write_bytes(b"broken")
    save(source / "z.png")
    _, result = run(context, BatchSpec.directory(str(source)))
    assert len(result.images) == 1
    assert len(result.warnings) == MAX_WARNINGS_SHOWN + 1
    assert result.warnings[-1].startswith(f"... and {count - MAX_WARNINGS_SHOWN} more warnings")


RECORDER = '''
from modules import scripts

SEEN = []  # (init image size, p.outpath_samples, seed, mask given) per process()


class BatchRecorder(scripts.Script):
    def title(self):
        return "Batch recorder"

    def show(self, is_img2img):
        return scripts.AlwaysVisible if is_img2img else False

    def process(self, p, *args):
        SEEN.append((p.init_images[0].size, p.outpath_samples, p.seed, p.image_mask is not None))
'''


def test_each_file_runs_with_the_img2img_tabs_scripts(tmp_path):
    """With extensions loaded, every file is one img2img run of the script host: an always-on script's
    process() sees that file's image, the batch's output folder and the shared seed."""
    import sys

    from modules.extension_host.environment import app_scope
    from modules.extension_host.extensions import ExtensionFolders, load_extensions
    from tests.test_extensions import write_extension

    write_extension(tmp_path / "extensions", "recorder", {"scripts/recorder.py": RECORDER})
    (tmp_path / "builtin").mkdir()
    context = make_context(tmp_path / "data")
    try:
        folders = ExtensionFolders(user=tmp_path / "extensions", builtin=tmp_path / "builtin")
        context.extensions = load_extensions(context.settings, context.args, folders)
        source, out, masks = tmp_path / "in", tmp_path / "out", tmp_path / "masks"
        save(source / "1.png", picture(1, size=64)), save(source / "2.png", picture(2, size=72))
        save(masks / "only.png", square_mask())
        with app_scope(context):
            job, result = run(context, BatchSpec.directory(str(source), str(out), str(masks)), seed=77)
        seen = sys.modules["atelier_extensions.recorder.scripts.recorder"].SEEN
        assert seen == [((64, 64), str(out), 77, True), ((72, 72), str(out), 77, True)]
        assert len(result.images) == 2 and all(Path(p).parent == out for p in result.saved_paths)
    finally:
        context.jobs.shutdown(timeout=WAIT)


def test_masks_are_matched_by_the_first_name_that_starts_with_the_stem_and_a_dot(context, tmp_path):
    """A1111's rule, `<stem>.*`: "a.b.png" is masked by "a.b.png" (not "a.png"), a dotted mask name
    matches its leading part, and the first match in natural order wins."""
    images, masks = tmp_path / "in", tmp_path / "masks"
    for name in ("a.png", "a.b.png", "c.png"):
        save(images / name)
    for name in ("a.b.png", "a.png", "a.z.png", "c.mask.png", "c.png"):
        save(masks / name)
    args = args_for(context)
    plan = plan_batch(BatchSpec.directory(str(images), inpaint_mask_dir=str(masks)), args, context.paths.data_dir)
    pairs = {file.path.name: file.mask.name for file in plan.files}
    assert pairs == {"a.png": "a.b.png", "a.b.png": "a.b.png", "c.png": "c.mask.png"}
