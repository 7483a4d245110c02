"""A1111's name for extensions: `modules.scripts_postprocessing` (`ScriptPostprocessing`,
`PostprocessedImage`, `PostprocessedImageSharedInfo`). The code lives in
`modules.postprocessing.scripts` (docs/ARCHITECTURE.md)."""

# ruff: noqa: F401
from modules.postprocessing.scripts import PostprocessedImage, PostprocessedImageSharedInfo, ScriptPostprocessing
