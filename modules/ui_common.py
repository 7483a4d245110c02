"""A1111's name for extensions: `modules.ui_common` (`create_refresh_button`, `plaintext_to_html`,
`save_files`). The code lives in `modules.ui.refresh_button` and `modules.ui.extension_ui_helpers`;
`modules.ui` re-exports `create_refresh_button` too, as A1111's `modules.ui` does."""

# ruff: noqa: F401
from modules.ui.extension_ui_helpers import plaintext_to_html, save_files
from modules.ui.refresh_button import create_refresh_button
