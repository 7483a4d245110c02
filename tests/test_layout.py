"""The layout's rules, read from the source (docs/ARCHITECTURE.md):

- the top level of `modules/` holds only A1111's public module names, as façades over the core;
- nothing in the core (every package under `modules/`) imports a façade;
- no import cycles between Atelier's modules (module-level and lazy imports alike).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

MODULES = Path(__file__).resolve().parent.parent / "modules"
# A1111's names that extensions import; each re-exports the core.
FACADES = {"processing", "images", "infotext_utils", "prompt_parser", "extra_networks", "scripts", "script_callbacks",
           "ui_components", "shared", "sd_models", "sd_samplers", "paths", "paths_internal", "devices", "launch_utils",
           "ui_common", "generation_parameters_copypaste", "hashes", "styles", "extras", "upscaler",
           "scripts_postprocessing"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(MODULES.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _all_modules() -> dict[str, Path]:
    return {_module_name(path): path for path in MODULES.rglob("*.py")}


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Atelier modules `path` imports, anywhere in the file (lazy imports in functions count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return {module for module in found if module in known and module != name}


def _graph() -> dict[str, set[str]]:
    known = _all_modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def test_the_top_level_holds_only_a1111_facades():
    top = {path.stem for path in MODULES.glob("*.py")} - {"__init__"}
    assert top == FACADES, f"not an A1111 name at the top level of modules/: {sorted(top - FACADES)}"
    for name in FACADES:
        text = (MODULES / f"{name}.py").read_text(encoding="utf-8")
        assert "A1111's name for extensions" in text, name
        # A façade only re-exports: no code of its own.
        body = [node for node in ast.parse(text).body if not isinstance(node, (ast.ImportFrom, ast.Expr))]
        assert not body, f"modules/{name}.py holds code; it belongs in the package it re-exports"


@pytest.mark.parametrize("name, names", [
    ("processing", ["StableDiffusionProcessingTxt2Img", "Processed", "process_images", "StableDiffusionProcessing"]),
    ("scripts", ["Script", "AlwaysVisible", "basedir"]),
    ("script_callbacks", ["on_ui_tabs", "on_app_started", "on_before_image_saved", "on_cfg_denoiser"]),
    ("images", ["save_image"]),
    ("infotext_utils", ["parse_generation_parameters", "ParamBinding", "PasteField", "register_paste_params_button",
                        "add_paste_fields", "create_buttons", "bind_buttons", "connect_paste_params_buttons"]),
    ("generation_parameters_copypaste", ["parse_generation_parameters", "ParamBinding", "register_paste_params_button",
                                         "create_buttons", "bind_buttons"]),
    ("prompt_parser", ["parse_prompt_attention", "get_learned_conditioning_prompt_schedules"]),
    ("extra_networks", ["parse_prompt"]),
    ("sd_models", ["checkpoints_list", "checkpoint_aliases", "checkpoint_alisases", "list_models", "checkpoint_tiles",
                   "get_closet_checkpoint_match", "select_checkpoint", "reload_model_weights", "unload_model_weights",
                   "model_hash", "CheckpointInfo", "SkipWritingToConfig", "model_data"]),
    ("sd_samplers", ["all_samplers", "all_samplers_map", "samplers", "samplers_for_img2img", "samplers_map",
                     "visible_sampler_names", "create_sampler", "get_sampler_and_scheduler", "SamplerData"]),
    ("paths", ["script_path", "data_path", "models_path", "extensions_dir", "extensions_builtin_dir", "cwd"]),
    ("paths_internal", ["script_path", "data_path", "models_path", "extensions_dir", "config_states_dir",
                        "sd_default_config", "default_sd_model_file"]),
    ("devices", ["device", "cpu", "dtype", "dtype_vae", "dtype_unet", "torch_gc", "get_optimal_device",
                 "get_device_for", "autocast", "device_esrgan"]),
    ("launch_utils", ["run_pip", "is_installed", "run", "git_tag", "commit_hash", "python", "index_url", "repo_dir",
                      "git"]),
    ("ui_common", ["create_refresh_button"]),
    ("upscaler", ["Upscaler", "UpscalerData", "UpscalerNone", "UpscalerLanczos", "UpscalerNearest", "LANCZOS"]),
    ("scripts_postprocessing", ["ScriptPostprocessing", "PostprocessedImage", "PostprocessedImageSharedInfo"]),
    ("styles", ["PromptStyle", "StyleDatabase", "merge_prompts", "apply_styles_to_prompt",
                "extract_style_text_from_prompt", "extract_original_prompts"]),
    ("ui_components", ["InputAccordion", "ToolButton", "FormRow", "FormColumn", "FormGroup", "FormHTML",
                       "FormColorPicker", "FormComponent", "ResizeHandleRow", "DropdownMulti", "DropdownEditable"]),
])
def test_facades_expose_a1111s_names(name, names):
    module = importlib.import_module(f"modules.{name}")
    # dir(): names that are per-app values (PEP 562 `__getattr__`) need a running app to be read.
    missing = [n for n in names if n not in dir(module)]
    assert not missing, f"modules.{name} lacks {missing}"


def test_the_core_never_imports_a_facade():
    facades = {f"modules.{name}" for name in FACADES}
    offenders = {name: sorted(deps & facades) for name, deps in _graph().items()
                 if name not in facades and deps & facades}
    assert not offenders, f"core modules importing A1111 façades (import the package instead): {offenders}"


def test_no_import_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checks_see_imports():
    """The graph the checks above read is not empty (they would pass on nothing)."""
    graph = _graph()
    assert "modules.generation.conditioning" in graph["modules.generation.engine"]
    assert len(graph) > 60
