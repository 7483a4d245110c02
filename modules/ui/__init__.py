"""The Gradio web UI: Blocks only, thin over the typed core (the only package that imports gradio).

Also A1111's `modules.ui` for extensions (`from modules import ui; ui.create_refresh_button(...)`),
resolved on first use so that importing a part of this package does not import the others."""


def __getattr__(name: str):
    if name == "create_refresh_button":
        from modules.ui.refresh_button import create_refresh_button

        return create_refresh_button
    raise AttributeError(f"module 'modules.ui' has no attribute {name!r}")
