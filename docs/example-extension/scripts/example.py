"""Atelier's example extension (docs/EXTENSIONS.md): an always-on script that adds a line to the
infotext when its checkbox is ticked, a tab, and a small API route. Written as an A1111 extension,
so it runs unchanged in both."""

from modules import script_callbacks, scripts

NOTE_KEY = "Example note"


class ExampleNote(scripts.Script):
    """Always on: with "Add a note" ticked, `Example note: <text>` goes into every image's infotext."""

    def title(self):
        return "Example note"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        import gradio as gr  # here, not at the top: importing gradio takes seconds

        with gr.Accordion("Example note", open=False):
            enabled = gr.Checkbox(False, label="Add a note to the infotext", elem_id=self.elem_id("enabled"))
            note = gr.Textbox("made with the example extension", label="Note", elem_id=self.elem_id("note"))
        return [enabled, note]

    def process(self, p, enabled=False, note=""):
        if enabled and note:
            p.extra_generation_params[NOTE_KEY] = note


def on_ui_tabs():
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as tab:
        gr.Markdown("This tab comes from **extensions/example-extension**. See docs/EXTENSIONS.md to write your "
                    "own; disable this one in the Extensions tab.")
    return [(tab, "Example", "example_extension")]


def on_app_started(demo, app):
    @app.get("/example-extension/hello")
    def hello():
        return {"message": "hello from the example extension"}


script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_app_started(on_app_started)
