"""Start-up with 10 sample extensions beside start-up with none: the first 200 on `/` and the first
image, as bench_startup.py times them (a fresh `launch.py` process on a fresh data folder holding one
tiny SD1 checkpoint), the two kinds alternating in the same rounds.

    python bench/bench_extension_startup.py [--runs 3] [--count 10] [--steps 4] [--px 64]

Each sample extension is written here, in the shape popular A1111 extensions have (our own code, no
third-party extension): a `scripts/<name>.py` with an always-on Script whose `ui()` builds an
`InputAccordion` with a slider, a dropdown and a textbox and whose `process` adds its infotext key;
an option registered in `on_ui_settings` (read in `process` as `shared.opts.<key>`); an
`on_app_started` route; a `javascript/<name>.js` using `onUiLoaded`/`gradioApp`; a `style.css`.
`ATELIER_SKIP_INSTALL` is left unset, as a user's start is. Medians of --runs after one untimed
warm-up round; writes bench/out/extension_startup.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_startup  # noqa: E402
from common import OUT_DIR, machine_description, median  # noqa: E402

SCRIPT = '''
import gradio as gr
from modules import script_callbacks, scripts, shared
from modules.ui_components import InputAccordion

KEY = "{key}"


def on_ui_settings():
    shared.opts.add_option(KEY + "_suffix", shared.OptionInfo("", "Text added by {title}",
                                                              section=(KEY, "{title}")))


script_callbacks.on_ui_settings(on_ui_settings)


def on_app_started(demo, app):
    @app.get("/{key}/status")
    def status():
        return {{"suffix": shared.opts.data.get(KEY + "_suffix", "")}}


script_callbacks.on_app_started(on_app_started)


class Sample(scripts.Script):
    def title(self):
        return "{title}"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with InputAccordion(False, label="{title}", elem_id=KEY) as enabled:
            strength = gr.Slider(0, 1, value=0.5, step=0.05, label="Strength", elem_id=KEY + "_strength")
            mode = gr.Dropdown(["soft", "hard"], value="soft", label="Mode", elem_id=KEY + "_mode")
            note = gr.Textbox("", label="Note", elem_id=KEY + "_note")
        return [enabled, strength, mode, note]

    def process(self, p, enabled, strength, mode, note):
        if enabled:
            p.extra_generation_params["{title}"] = f"{{mode}} {{strength}} {{shared.opts.data.get(KEY + '_suffix', '')}}"
'''

JAVASCRIPT = '''
onUiLoaded(function () {{
    const accordion = gradioApp().getElementById("{key}");
    if (accordion) accordion.dataset.sampleLoaded = "yes";
}});
'''


def write_sample_extensions(folder: Path, count: int) -> None:
    for index in range(count):
        key = f"sample_ext_{index:02d}"
        root = folder / f"sample-extension-{index:02d}"
        (root / "scripts").mkdir(parents=True)
        (root / "javascript").mkdir()
        title = f"Sample extension {index:02d}"
        (root / "scripts" / f"{key}.py").write_text(textwrap.dedent(SCRIPT.format(key=key, title=title)))
        (root / "javascript" / f"{key}.js").write_text(JAVASCRIPT.format(key=key))
        (root / "style.css").write_text(f"#{key} {{ border-left: 2px solid var(--color-accent); }}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=10, help="sample extensions in the loaded case")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--px", type=int, default=64)
    args = parser.parse_args()

    from modules.library.synthetic_checkpoints import write_checkpoint

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    template = OUT_DIR / "startup-tiny-sd1.safetensors"
    if not template.exists():
        write_checkpoint(template, "sd1", size="tiny", seed=0)
    samples = Path(tempfile.mkdtemp(prefix="atelier-sample-extensions-", dir=OUT_DIR))
    write_sample_extensions(samples, args.count)

    results: dict[str, list[dict]] = {"none": [], "samples": []}
    try:
        for index in range(args.runs + 1):
            for kind in ("none", "samples"):
                extensions = samples if kind == "samples" else None
                run = bench_startup.one_run(args.python, template, args.steps, args.px,
                                            OUT_DIR / f"extension-startup-{kind}-run{index}.log",
                                            extensions=extensions)
                label = "warm-up" if index == 0 else f"run {index}"
                print(f"{label} {kind}: first 200 on / {run['page_s']:.2f} s, first image {run['image_s']:.2f} s",
                      flush=True)
                if index:
                    results[kind].append(run)
    finally:
        shutil.rmtree(samples, ignore_errors=True)

    summary = {kind: {"median_page_s": median([r["page_s"] for r in runs]),
                      "median_image_s": median([r["image_s"] for r in runs]), "runs": runs}
               for kind, runs in results.items()}
    result = {"count": args.count, "request": {"steps": args.steps, "width": args.px, "height": args.px},
              "machine": machine_description(), **summary}
    (OUT_DIR / "extension_startup.json").write_text(json.dumps(result, indent=2))
    for kind in ("none", "samples"):
        label = "no extensions" if kind == "none" else f"{args.count} sample extensions"
        print(f"median, {label}: first 200 on / {summary[kind]['median_page_s']:.2f} s, first image "
              f"{summary[kind]['median_image_s']:.2f} s")
    print(result["machine"])


if __name__ == "__main__":
    main()
