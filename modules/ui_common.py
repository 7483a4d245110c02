"""A1111's name for extensions: `modules.ui_common` (its `create_refresh_button`). The code lives in
`modules.ui.refresh_button`; `modules.ui` re-exports it too, as A1111's `modules.ui` does."""

from modules.ui.refresh_button import create_refresh_button  # noqa: F401
