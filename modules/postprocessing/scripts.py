"""The shape of a postprocessing step (A1111's `modules.scripts_postprocessing`, A1111.md §14.5).

Extensions subclass `ScriptPostprocessing` in their `scripts/*.py` files (beside `scripts.Script`
ones) to add a step to the Extras tab; the names and signatures here are A1111's so that such files
run unchanged:

    name                 the step's name (the key of `postprocessing_operation_order`,
                         `postprocessing_disable_in_extras` and of a request's `script_args`)
    order                the default position: Upscale 1000, GFPGAN 2000, CodeFormer 3000, ...
    filename             the file it came from (set by the loader)
    controls             {argument name: component} as `ui()` returned it (set by the UI)
    ui()                 Gradio components keyed by `process()`'s keyword arguments
    process_firstpass(pp, **args)   every step, before any `process` (e.g. to set pp.shared sizes)
    process(pp, **args)  the step itself, on `pp.image` and then on every extra image
    image_changed()      the single image changed (steps drop their caches)

Atelier's additions: `extension` (None for a built-in step), `app` (the AppContext), and
`job_control`, the running job's control (`interrupted`, `report`...) while `Postprocessing.run`
runs the step, else None.

No Gradio here: the built-in steps' controls are built by the Extras tab (modules.ui).
"""

from __future__ import annotations

from typing import Any

from PIL import Image


class PostprocessedImageSharedInfo:
    """What `process_firstpass` tells later steps about the size the image is going to have."""

    target_width: int | None = None
    target_height: int | None = None


class PostprocessedImage:
    """One image going through the steps: the image, the text its steps add (`info`, written as the
    `postprocessing` infotext), further images a step made (`extra_images`, e.g. flipped copies) with
    the name tags that become their file-name suffixes, and a step's caption."""

    def __init__(self, image: Image.Image):
        self.image = image
        self.info: dict[str, Any] = {}
        self.shared = PostprocessedImageSharedInfo()
        self.extra_images: list[Any] = []
        self.nametags: list[str] = []
        self.disable_processing = False
        self.caption: str | None = None

    def get_suffix(self, used_suffixes: dict[str, int] | None = None) -> str:
        """`-tag1-tag2` from the name tags; one already in `used_suffixes` gets `-1`, `-2`, ... (A1111)."""
        used_suffixes = {} if used_suffixes is None else used_suffixes
        suffix = "-".join(self.nametags)
        if suffix:
            suffix = "-" + suffix
        if suffix not in used_suffixes:
            used_suffixes[suffix] = 1
            return suffix
        for i in range(1, 100):
            proposed = f"{suffix}-{i}"
            if proposed not in used_suffixes:
                used_suffixes[proposed] = 1
                return proposed
        return suffix

    def create_copy(self, new_image: Image.Image, *, nametags: list[str] | None = None,
                    disable_processing: bool = False) -> PostprocessedImage:
        """A new image carrying this one's info and shared sizes (A1111's helper for steps that add
        images)."""
        copy = PostprocessedImage(new_image)
        copy.info = dict(self.info)
        copy.shared = self.shared
        copy.nametags = list(self.nametags) + list(nametags or [])
        copy.disable_processing = disable_processing
        return copy


class ScriptPostprocessing:
    """A postprocessing step (see the module docstring). Subclasses set `name` and `order` and
    override `ui` and `process`."""

    filename: str | None = None
    controls: dict[str, Any] | None = None
    args_from: int | None = None
    args_to: int | None = None
    order = 1000
    name: str | None = None
    group: Any = None
    # Atelier: the extension the step came from (None for a built-in one) and the AppContext it runs in.
    extension: str | None = None
    app: Any = None
    job_control: Any = None

    def ui(self) -> dict[str, Any] | None:
        """Gradio components keyed by the names of `process`'s keyword arguments."""
        return None

    def process_firstpass(self, pp: PostprocessedImage, **args) -> None:
        pass

    def process(self, pp: PostprocessedImage, **args) -> None:
        pass

    def image_changed(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} order={self.order}>"
