"""The Gradio web UI: Blocks only, thin over the typed core (the only package that imports gradio)."""
