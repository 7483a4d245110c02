"""The page footer (modules.ui.footer): A1111's links and the versions line, read without imports."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import diffusers
import gradio
import pytest
import torch

from modules.ui.footer import NOT_AVAILABLE, footer_html, git_commit, package_version, versions

REPO = Path(__file__).resolve().parents[1]


def test_versions_line_names_python_torch_diffusers_gradio():
    found = dict(versions())
    assert found["python"] == platform.python_version()
    # The packages' own idea of their version (imported here; the footer reads the metadata only).
    assert found["torch"] == torch.__version__
    assert found["diffusers"] == diffusers.__version__
    assert found["gradio"] == gradio.__version__
    assert package_version("no-such-package-atelier") == NOT_AVAILABLE


def test_links_api_only_with_the_api_and_reload_ui_always():
    with_api = footer_html(True, [("python", "3.11.2"), ("torch", "2.13.0")])
    assert "href='docs'" in with_api and ">API<" in with_api and ">Reload UI<" in with_api
    assert "python: 3.11.2" in with_api and "torch: 2.13.0" in with_api
    without = footer_html(False, [("python", "3.11.2")])
    assert ">API<" not in without and ">Reload UI<" in without


def test_versions_are_escaped():
    assert "<b>" not in footer_html(False, [("x", "<b>1</b>")])


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "one")
    return tmp_path


def test_commit_is_read_from_the_branch_file_packed_refs_and_a_detached_head(repo):
    head = git(repo, "rev-parse", "HEAD")
    assert git_commit(repo) == head
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    assert git_commit(repo) == head
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "two")
    git(repo, "checkout", "-q", "--detach", head)
    assert git_commit(repo) == head


def test_a_worktree_reads_its_own_head(repo, tmp_path_factory):
    other = tmp_path_factory.mktemp("wt") / "tree"
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "two")
    git(repo, "worktree", "add", "-q", "-b", "side", str(other), "HEAD~1")
    assert git_commit(other) == git(other, "rev-parse", "HEAD") != git(repo, "rev-parse", "HEAD")


def test_no_checkout_no_commit(tmp_path):
    assert git_commit(tmp_path) is None
    assert "version" not in dict(versions(tmp_path))


def test_reading_versions_imports_neither_torch_nor_diffusers():
    code = ("import sys; from modules.ui.footer import versions; versions(); "
            "print(sorted(name for name in ('torch', 'diffusers') if name in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("api_on", [True, False])
def test_build_follows_the_api_flag(api_on):
    from types import SimpleNamespace

    from modules.ui import footer

    with gradio.Blocks():
        html = footer.build(SimpleNamespace(args=SimpleNamespace(api=api_on)))
    assert html.elem_id == "footer" and ">Reload UI<" in html.value
    assert (">API<" in html.value) is api_on
    assert f"gradio: {gradio.__version__}" in html.value
