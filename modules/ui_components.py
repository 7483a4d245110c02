"""A1111's name for extensions: `modules.ui_components`. The code lives in
`modules.ui.extension_components`; Atelier's own code imports it from there (docs/ARCHITECTURE.md)."""

# ruff: noqa: F401
from modules.ui.extension_components import (
    DropdownEditable,
    DropdownMulti,
    FormColorPicker,
    FormColumn,
    FormComponent,
    FormGroup,
    FormHTML,
    FormRow,
    InputAccordion,
    ResizeHandleRow,
    ToolButton,
)
