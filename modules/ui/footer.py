"""The page's footer, as A1111's: "API" (the API's docs at /docs, shown when the API is on, `--api`),
"Reload UI" (reloads the page), and a line with the versions of Atelier (its git commit), Python, torch,
diffusers and Gradio. It replaces Gradio's own footer links (turned off in modules.ui.app), whose
settings panel speaks to developers ("launch(pwa=True)"), not to users.

Versions come from the installed packages' metadata and the repository's `.git` files: nothing is
imported and no process is started to read them.
"""

from __future__ import annotations

import html
import platform
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import gradio as gr

from modules.serving.paths import REPO_ROOT

PACKAGES = ("torch", "diffusers", "gradio")  # after Python, in A1111's order (diffusers is Atelier's model code)
NOT_AVAILABLE = "N/A"  # A1111's text for a version it cannot tell
SEPARATOR = "&#x2000;•&#x2000;"  # A1111's: a wide space each side of the dot


def package_version(name: str) -> str:
    """The installed distribution's version (`2.13.0+cu128` keeps its local part), or "N/A"."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return NOT_AVAILABLE


def git_commit(repo: Path = REPO_ROOT) -> str | None:
    """The commit checked out in `repo`, read from its `.git` files (HEAD, the branch's ref file or
    `packed-refs`); None when it is not a git checkout or the files say nothing readable."""
    git_dir = repo / ".git"
    try:
        if git_dir.is_file():  # a worktree or submodule: "gitdir: <path>"
            pointer = git_dir.read_text(encoding="utf-8").strip()
            if not pointer.startswith("gitdir:"):
                return None
            git_dir = (repo / pointer[len("gitdir:"):].strip()).resolve()
        head = (git_dir / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref:"):
            return head if _is_hash(head) else None  # a detached HEAD holds the hash itself
        ref = head[len("ref:"):].strip()
        common = git_dir
        commondir = git_dir / "commondir"  # a worktree keeps the branches in the main .git
        if commondir.is_file():
            common = (git_dir / commondir.read_text(encoding="utf-8").strip()).resolve()
        for folder in (git_dir, common):
            ref_file = folder / ref
            if ref_file.is_file():
                value = ref_file.read_text(encoding="utf-8").strip()
                return value if _is_hash(value) else None
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == ref and _is_hash(parts[0]):
                    return parts[0]
    except (OSError, UnicodeDecodeError):
        return None
    return None


def _is_hash(text: str) -> bool:
    return len(text) in (40, 64) and all(ch in "0123456789abcdef" for ch in text)


def versions(repo: Path = REPO_ROOT, packages: Sequence[str] = PACKAGES) -> list[tuple[str, str]]:
    """(name, version) pairs for the versions line: Atelier's commit (short, when known), Python, then
    each package."""
    commit = git_commit(repo)
    pairs = [("version", commit[:10])] if commit else []
    pairs.append(("python", platform.python_version()))
    pairs += [(name, package_version(name)) for name in packages]
    return pairs


def footer_html(api_on: bool, version_pairs: Sequence[tuple[str, str]]) -> str:
    """The footer's HTML: the links, then the versions line."""
    links = []
    if api_on:
        links.append("<a href='docs' target='_blank' rel='noopener' id='footer_api'>API</a>")
    # A page load reads every value again (modules.ui.settings_tab's "Reload UI" does the same).
    links.append("<a href='./' onclick='window.location.reload(); return false;' id='footer_reload'>Reload UI</a>")
    line = SEPARATOR.join(f"{html.escape(name)}: {html.escape(value)}" for name, value in version_pairs)
    return f"<div class='footer-links'>{SEPARATOR.join(links)}</div><div class='versions'>{line}</div>"


def build(context) -> gr.HTML:
    """The footer at the end of the page (call it last inside the Blocks)."""
    api_on = bool(getattr(context.args, "api", False))
    return gr.HTML(footer_html(api_on, versions()), elem_id="footer", padding=False, js_on_load=None)


CSS = """
#footer { text-align: center; font-size: 0.85em; opacity: 0.8; margin-top: 1.5em; }
#footer .versions { margin-top: 0.4em; }
#footer a { text-decoration: underline; }
"""
