"""A1111's name for extensions: `modules.styles` (`PromptStyle`, `StyleDatabase`, `merge_prompts`,
`apply_styles_to_prompt`, `extract_style_text_from_prompt`, `extract_original_prompts`). The code
lives in `modules.generation.styles`; the app's database is `shared.prompt_styles`. Atelier's own
code imports it from there (docs/ARCHITECTURE.md)."""

# ruff: noqa: F401, F403
from modules.generation.styles import *
