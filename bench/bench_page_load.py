"""What mounting every tab at load costs the page: in the same page loads, the time from navigation to
the txt2img prompt being visible (when the page was usable before) and to `onUiLoaded` having run
(`<body data-atelier-ui-loaded>`: every main tab opened once and its elements mounted, as A1111
extensions expect). One server (tiny SD1 checkpoint, the UI-only sample extension of the tests),
Debian's Chromium headless, a fresh browser context per load; median of --runs after one untimed load.

    python bench/bench_page_load.py [--runs 5]

Writes bench/out/page_load.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import OUT_DIR, machine_description, median  # noqa: E402

from tests.browser.harness import find_chromium, start_server, write_tiny_checkpoints  # noqa: E402
from tests.extension_samples import write_sample  # noqa: E402


def one_load(browser, url: str) -> tuple[float, float]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        start = time.perf_counter()
        page.goto(url + "/")
        page.locator("#txt2img_prompt textarea").wait_for(state="visible", timeout=120_000)
        usable = time.perf_counter() - start
        page.locator("body[data-atelier-ui-loaded='true']").wait_for(state="attached", timeout=120_000)
        loaded = time.perf_counter() - start
        return usable, loaded
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    data_dir = Path(tempfile.mkdtemp(prefix="atelier-bench-page-"))
    write_tiny_checkpoints(data_dir, ("alpha",))
    write_sample(data_dir / "extensions")
    server = start_server(data_dir, data_dir / "server.log")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=find_chromium(), headless=True,
                                                 args=["--no-sandbox", "--disable-dev-shm-usage"])
            one_load(browser, server.url)  # warm-up: Gradio's assets, the model load settling
            loads = [one_load(browser, server.url) for _ in range(args.runs)]
            browser.close()
    finally:
        server.stop()
    usable = median([u for u, _ in loads])
    loaded = median([b for _, b in loads])
    result = {"machine": machine_description(), "runs": args.runs, "prompt_visible_s": usable,
              "ui_loaded_s": loaded, "mounting_s": median([b - u for u, b in loads]),
              "loads": [{"prompt_visible_s": u, "ui_loaded_s": b} for u, b in loads]}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / "page_load.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
