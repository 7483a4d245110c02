"""Prompt styles: A1111's `styles.csv` (`name,prompt,negative_prompt`), read, applied, edited, saved.

A style's text is merged into a prompt as A1111 does (`merge_prompts`): `{prompt}` in the style is
replaced by the prompt; otherwise the style is appended after `, `. Styles apply in the order given.

`StyleDatabase` is the one owner of the styles files (one per `AppContext`, `context.prompt_styles`;
A1111's `shared.prompt_styles` for extensions). It keeps A1111's public surface (`styles`,
`apply_styles_to_prompt`, `get_style_prompts`, `reload`, `save_styles`,
`extract_styles_from_prompt`, ...) and adds what a shared server needs:

- **External edits are picked up**: every read of `styles` compares the files' modification time
  and size with the last load and reloads when they differ (editing `styles.csv` in a text editor
  needs no restart and no refresh button).
- **Writes are whole and serialised**: a file is written through a temp file renamed into place
  (`modules.common.atomic_files`), after copying the previous file to `<name>.bak` (A1111's
  backup), under one lock. `set_style` and `delete_style` re-read the file, change one style and
  save in one step under that lock, so two users saving different styles at once both keep theirs.
- **Writes go only to the configured files** (`--styles-file`, default `<data-dir>/styles.csv`):
  `save_styles(path)` ignores `path` (A1111 deprecated it too) and a style whose `path` names any
  other file is saved in the default file.
- **A bad file is an error the UI shows, not a crash**: a file that is not UTF-8 or not CSV with
  A1111's header is listed in `errors` and contributes no styles, and nothing is saved over it
  (saving would throw its contents away); rows without a name are skipped and rows with more
  fields than the header lose the extra ones, each listed in `warnings`. Names and sizes are
  validated where styles are made (`set_style`), not when a file is read, so that no row is lost
  at the next save.
- Columns other than A1111's three are kept when the file is saved again (A1111 drops them).

Differences from A1111 kept on purpose: no "divider" pseudo-styles between files when several are
configured; comment rows (`#...` names) are skipped on reading, as A1111 does, but not written back.
"""

from __future__ import annotations

import csv
import glob
import io
import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from modules.common.atomic_files import write_bytes

if TYPE_CHECKING:
    from modules.generation.engine import GenerationRequest

log = logging.getLogger(__name__)

FIELDS = ("name", "prompt", "negative_prompt")  # A1111's columns, in its order
MAX_NAME_LENGTH = 200
# A style's prompt cap when the prompt_max_length setting is 0 (no limit for prompts): a style file
# is read on every generation, so it stays bounded whatever the setting.
MAX_TEXT_LENGTH = 100_000
MAX_FILE_BYTES = 16 * 1024 * 1024


class PromptStyle(NamedTuple):
    """One style, as A1111's `modules.styles.PromptStyle`: `path` is the file it came from (None:
    not saved yet, it goes to the default file)."""

    name: str
    prompt: str
    negative_prompt: str
    path: str | None = None


class StyleError(ValueError):
    """A style that cannot be used or saved; the message names the value and the fix."""


class StylesFileError(StyleError):
    """A styles file that cannot be read (not UTF-8, not CSV, too large)."""


def merge_prompts(style_prompt: str, prompt: str) -> str:
    """`prompt` with one style's text merged in (A1111's rule, see the module docstring)."""
    if "{prompt}" in style_prompt:
        return style_prompt.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_prompt.strip()) if part)


def apply_styles_to_prompt(prompt: str, style_texts: Iterable[str]) -> str:
    """`prompt` with each style text merged in, in order."""
    for text in style_texts:
        prompt = merge_prompts(text or "", prompt)
    return prompt


def extract_style_text_from_prompt(style_text: str, prompt: str) -> tuple[bool, str]:
    """Whether `prompt` is what merging `style_text` makes, and the prompt before the merge.

    `"masterpiece"` matches a prompt ending in it (and the `, ` before it is removed);
    `"masterpiece, {prompt}"` matches a prompt with that text around it. Both are compared stripped.
    """
    stripped_prompt, stripped_style = prompt.strip(), (style_text or "").strip()
    if "{prompt}" in stripped_style:
        left, _, right = stripped_style.partition("{prompt}")
        if (len(stripped_prompt) >= len(left) + len(right) and stripped_prompt.startswith(left)
                and stripped_prompt.endswith(right)):
            return True, stripped_prompt[len(left):len(stripped_prompt) - len(right)]
    elif stripped_prompt.endswith(stripped_style):
        rest = stripped_prompt[:len(stripped_prompt) - len(stripped_style)]
        return True, rest.removesuffix(", ")
    return False, prompt


def extract_original_prompts(style: PromptStyle, prompt: str, negative_prompt: str) -> tuple[bool, str, str]:
    """Whether both prompts carry `style`, and both without it. A style with no text never matches."""
    if not style.prompt and not style.negative_prompt:
        return False, prompt, negative_prompt
    matched, positive = extract_style_text_from_prompt(style.prompt, prompt)
    if not matched:
        return False, prompt, negative_prompt
    matched, negative = extract_style_text_from_prompt(style.negative_prompt, negative_prompt)
    if not matched:
        return False, prompt, negative_prompt
    return True, positive, negative


def check_style(name: str, prompt: str, negative_prompt: str, *, max_text_length: int = 0) -> PromptStyle:
    """A style as a user typed it, validated: the name stripped, non-empty, at most
    `MAX_NAME_LENGTH` characters, on one line and not starting with `#` (A1111 reads such rows as
    comments); each text at most `max_text_length` characters (0: `MAX_TEXT_LENGTH`). Raises
    `StyleError`."""
    name = (name or "").strip()
    if not name:
        raise StyleError("style name: empty; type a name for the style")
    if len(name) > MAX_NAME_LENGTH:
        raise StyleError(f"style name: {len(name):,} characters; the limit is {MAX_NAME_LENGTH}. Use a shorter name")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise StyleError(f"style name {name!r}: line breaks and control characters are not allowed; "
                         "keep the name on one line")
    if name.startswith("#"):
        raise StyleError(f"style name {name!r}: a name starting with '#' is read as a comment in styles.csv; "
                         "start it with another character")
    limit = max_text_length if max_text_length > 0 else MAX_TEXT_LENGTH
    for label, text in (("prompt", prompt), ("negative prompt", negative_prompt)):
        text = text or ""
        if len(text) > limit:
            raise StyleError(f"style {name!r}: the {label} is {len(text):,} characters long; the limit is {limit:,} "
                             "(setting prompt_max_length). Shorten it")
        if "\x00" in text:
            raise StyleError(f"style {name!r}: the {label} contains a NUL character; remove it")
    return PromptStyle(name, prompt or "", negative_prompt or "")


class StylesFile(NamedTuple):
    """What one styles file holds: its styles, columns beyond A1111's (per style name), and the
    rows that were skipped, each with its line and why."""

    styles: list[PromptStyle]
    extra_columns: list[str]
    extras: dict[str, dict[str, str]]
    warnings: list[str]


def read_styles_file(path: Path) -> StylesFile:
    """Read one A1111 styles file (UTF-8, optional BOM; also A1111's old `name,text` columns).
    Raises `StylesFileError` when the file as a whole cannot be read."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise StylesFileError(f"{path.name} is {size:,} bytes; styles files are limited to {MAX_FILE_BYTES:,}. "
                                  "Split it or remove styles")
        raw = path.read_bytes()
    except OSError as error:
        raise StylesFileError(f"{path.name} could not be read: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise StylesFileError(
            f"{path.name} is not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start}); save it as UTF-8 "
            "(\"CSV UTF-8\" in Excel, or convert it with iconv), then refresh the styles") from None
    if "\x00" in text:
        raise StylesFileError(f"{path.name} contains NUL bytes: it is not a CSV text file; replace it with A1111's "
                              "styles.csv format (header line name,prompt,negative_prompt)")
    reader = csv.DictReader(io.StringIO(text, newline=""), skipinitialspace=True)
    try:
        columns = list(reader.fieldnames or [])
        if not columns:
            return StylesFile([], [], {}, [])
        text_column = "prompt" if "prompt" in columns else "text" if "text" in columns else None
        if "name" not in columns or text_column is None:
            raise StylesFileError(
                f"{path.name} does not start with A1111's header line name,prompt,negative_prompt (its first line has "
                f"{', '.join(repr(c) for c in columns[:6])}); add that line, or fix the file, then refresh the styles")
        extra_columns = [c for c in columns if c not in (*FIELDS, "text") and c]
        file = StylesFile([], extra_columns, {}, [])
        seen: set[str] = set()
        for row in reader:
            where = f"{path.name} line {reader.line_num}"
            name = row.get("name")
            if name is None or not name.strip():
                if any((value or "").strip() for key, value in row.items() if key is not None):
                    file.warnings.append(f"{where}: skipped a row without a name")
                continue
            if name.startswith("#"):
                continue  # A1111's comment rows
            # Everything else is kept as written, even what the editor would refuse (a name with a line
            # break, a text over today's prompt_max_length): a row skipped here would be lost at the
            # next save. Prompts are checked against the limit when a request uses them.
            if row.get(None):
                file.warnings.append(f"{where}: {len(row[None])} field(s) more than the header has; they are "
                                     "ignored (and not saved again)")
            if name in seen:
                file.warnings.append(f"{where}: a second style named {name!r}; this one is used")
                file.styles[:] = [s for s in file.styles if s.name != name]
            seen.add(name)
            file.styles.append(PromptStyle(name, row.get(text_column) or "", row.get("negative_prompt") or "",
                                           str(path)))
            extras = {c: row.get(c) or "" for c in extra_columns}
            if any(extras.values()):
                file.extras[name] = extras
    except csv.Error as error:
        raise StylesFileError(f"{path.name} is not valid CSV ({error}, line {reader.line_num}); fix that line "
                              "(a quote left open?), then refresh the styles") from None
    return file


def styles_csv_text(styles: Iterable[PromptStyle], extra_columns: Sequence[str] = (),
                    extras: dict[str, dict[str, str]] | None = None) -> str:
    """The CSV text A1111 writes: a header and one row per style, quoted by the csv module (so a
    name or prompt with commas, quotes or line breaks stays one field)."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=[*FIELDS, *extra_columns])
    writer.writeheader()
    for style in styles:
        writer.writerow({"name": style.name, "prompt": style.prompt or "", "negative_prompt": style.negative_prompt or "",
                         **(extras or {}).get(style.name, {})})
    return buffer.getvalue()


def configured_styles_paths(patterns: Sequence[str | os.PathLike], data_dir: Path) -> list[Path]:
    """`--styles-file` values (paths, or glob patterns such as `styles/*.csv`), or `<data-dir>/styles.csv`."""
    return [Path(p).expanduser() for p in patterns] if patterns else [data_dir / "styles.csv"]


def _is_pattern(path: Path) -> bool:
    return glob.has_magic(path.name)


class StyleDatabase:
    """The styles of the configured files, by name (see the module docstring).

    `paths`: files or glob patterns; the first file (or the first match of a first pattern, else
    `styles.csv` in its folder) is the default file that new styles are saved to.
    `max_text_length`: the cap on a style's prompt texts (a number, or a function read at each use,
    such as the `prompt_max_length` setting); 0 means `MAX_TEXT_LENGTH`.
    """

    def __init__(self, paths: Sequence[str | os.PathLike] | str | os.PathLike, *,
                 max_text_length: int | Callable[[], int] = 0):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not paths:
            raise ValueError("StyleDatabase needs at least one styles file")
        self.paths = [Path(p) for p in paths]
        first = self.paths[0]
        if _is_pattern(first):
            self.default_path = next(iter(sorted(first.parent.glob(first.name))), first.parent / "styles.csv")
        else:
            self.default_path = first
        self._max_text_length = max_text_length
        self._lock = threading.RLock()
        self.no_style = PromptStyle("None", "", "", None)
        self._styles: dict[str, PromptStyle] = {}
        self._extras: dict[str, dict[str, dict[str, str]]] = {}  # file -> style name -> extra columns
        self._extra_columns: dict[str, list[str]] = {}  # file -> its extra columns, in order
        self._signature: tuple = ()
        self.errors: list[str] = []  # files that could not be read
        self.warnings: list[str] = []  # rows that were skipped
        self.all_styles_files: list[Path] = []
        self.reload()

    # --- reading -------------------------------------------------------------------------------

    @property
    def max_text_length(self) -> int:
        limit = self._max_text_length() if callable(self._max_text_length) else self._max_text_length
        return int(limit) if limit and limit > 0 else MAX_TEXT_LENGTH

    @property
    def styles(self) -> dict[str, PromptStyle]:
        """Name -> `PromptStyle`, in file order; reloaded first when a file changed on disk. The
        dict may be changed in place and written with `save_styles()` (what A1111 extensions do)."""
        self.refresh()
        return self._styles

    def _files(self) -> list[Path]:
        files: list[Path] = [self.default_path]
        for path in self.paths:
            files += sorted(path.parent.glob(path.name)) if _is_pattern(path) else [path]
        return list(dict.fromkeys(files))

    @staticmethod
    def _stat_signature(files: Sequence[Path]) -> tuple:
        signature = []
        for file in files:
            try:
                stat = file.stat()
                signature.append((str(file), stat.st_mtime_ns, stat.st_size))
            except OSError:
                signature.append((str(file), None, None))
        return tuple(signature)

    def refresh(self) -> bool:
        """Reload when a file was changed, added or removed since the last load; returns whether it did."""
        with self._lock:
            if self._stat_signature(self._files()) == self._signature:
                return False
            self.reload()
            return True

    def reload(self) -> None:
        """Read every configured file again. Unreadable files are listed in `errors`."""
        with self._lock:
            files = self._files()
            signature = self._stat_signature(files)
            styles: dict[str, PromptStyle] = {}
            errors: list[str] = []
            warnings: list[str] = []
            self._extras, self._extra_columns = {}, {}
            for file in files:
                if not file.is_file():
                    continue
                try:
                    content = read_styles_file(file)
                except StylesFileError as error:
                    errors.append(str(error))
                    continue
                warnings += content.warnings
                self._extras[str(file)] = content.extras
                self._extra_columns[str(file)] = content.extra_columns
                for style in content.styles:
                    if style.name in styles and styles[style.name].path != style.path:
                        warnings.append(f"style {style.name!r} is in {styles[style.name].path} and {style.path}; "
                                        f"the one in {style.path} is used")
                    styles[style.name] = style
            # A new dict: a reader holding the old one sees a whole set, never a half-read one.
            self._styles, self.errors, self.warnings, self._signature = styles, errors, warnings, signature
            self.all_styles_files = [f for f in files if f.is_file()]
            for message in errors:
                log.error("Styles (in %s): %s", ", ".join(str(f.parent) for f in files[:1]), message)
            for message in warnings:
                log.warning("Styles: %s", message)

    @property
    def problems(self) -> list[str]:
        """What the user should see about the files: read errors first, then skipped rows."""
        self.refresh()
        return [*self.errors, *self.warnings]

    def names(self) -> list[str]:
        return list(self.styles)

    def get_style_prompts(self, styles: Iterable[str]) -> list[str]:
        current = self.styles
        return [current.get(name, self.no_style).prompt for name in styles]

    def get_negative_style_prompts(self, styles: Iterable[str]) -> list[str]:
        current = self.styles
        return [current.get(name, self.no_style).negative_prompt for name in styles]

    def apply_styles_to_prompt(self, prompt: str, styles: Iterable[str]) -> str:
        """`prompt` with the named styles' prompts merged in; unknown names are skipped (A1111)."""
        return apply_styles_to_prompt(prompt, self.get_style_prompts(styles))

    def apply_negative_styles_to_prompt(self, prompt: str, styles: Iterable[str]) -> str:
        return apply_styles_to_prompt(prompt, self.get_negative_style_prompts(styles))

    def styled_prompts(self, prompt: str, negative_prompt: str, names: Sequence[str]) -> tuple[str, str]:
        """Both prompts with the named styles applied in order, for a generation request; an unknown
        name is a `StyleError` listing the known ones (a request must not silently lose a style)."""
        current = self.styles
        unknown = [name for name in names if name not in current]
        if unknown:
            known = ", ".join(repr(n) for n in current) or "none (no styles.csv)"
            broken = f" ({self.errors[0]})" if self.errors else ""
            raise StyleError(f"styles: unknown style {unknown[0]!r}; known styles: {known}{broken}")
        return (apply_styles_to_prompt(prompt, (current[n].prompt for n in names)),
                apply_styles_to_prompt(negative_prompt, (current[n].negative_prompt for n in names)))

    def extract_styles_from_prompt(self, prompt: str, negative_prompt: str) -> tuple[list[str], str, str]:
        """The styles whose text both prompts end with (or are wrapped in), and the prompts without
        them: A1111's reading of an infotext's prompt back into prompt + selected styles. Styles are
        peeled off one at a time, the most recently applied first; the list is in applying order."""
        extracted: list[str] = []
        candidates = list(self.styles.values())
        while True:
            for style in candidates:
                matched, new_prompt, new_negative = extract_original_prompts(style, prompt, negative_prompt)
                if matched:
                    prompt, negative_prompt = new_prompt, new_negative
                    candidates.remove(style)
                    extracted.append(style.name)
                    break
            else:
                break
        return list(reversed(extracted)), prompt, negative_prompt

    # --- writing -------------------------------------------------------------------------------

    def get_style_paths(self) -> set[str]:
        """The files a save writes: the default file and every configured file a style came from."""
        allowed = {str(f) for f in self._files()}
        paths = {str(self.default_path)}
        paths.update(s.path for s in self._styles.values() if s.path in allowed)
        return paths

    def _target(self, style: PromptStyle, allowed: set[str]) -> str:
        # A style from anywhere else (an extension set its path, or none) goes to the default file:
        # a save never writes outside the configured files.
        return style.path if style.path in allowed else str(self.default_path)

    def save_styles(self, path: str | os.PathLike | None = None) -> None:
        """Write the styles to their files, each after copying it to `<file>.bak`. `path` is
        ignored (A1111 deprecated it): writes go only to the configured files. Raises
        `StylesFileError` when a file could not be read (saving would erase it)."""
        with self._lock:
            if self.errors:
                raise StylesFileError("styles are not saved while a styles file cannot be read (saving would erase "
                                      f"it): {self.errors[0]}")
            allowed = {str(f) for f in self._files()}
            # Every file read is written again (a file whose last style was deleted must be emptied).
            files = {*self.get_style_paths(), *(str(f) for f in self.all_styles_files if str(f) in allowed)}
            by_file: dict[str, list[PromptStyle]] = {p: [] for p in sorted(files)}
            for style in self._styles.values():
                target = self._target(style, allowed)
                by_file.setdefault(target, []).append(style._replace(path=target))
            contents = {Path(file): self._file_bytes(Path(file), styles) for file, styles in by_file.items()}
            for file, data in contents.items():  # checked before anything is written
                if len(data) > MAX_FILE_BYTES:
                    raise StyleError(f"{file.name} would be {len(data):,} bytes; styles files are limited to "
                                     f"{MAX_FILE_BYTES:,}. Delete styles you no longer use")
            for file, data in contents.items():
                self._write_file(file, data)
            self._styles = {s.name: s._replace(path=self._target(s, allowed)) for s in self._styles.values()}
            self._signature = self._stat_signature(self._files())

    def _file_bytes(self, path: Path, styles: list[PromptStyle]) -> bytes:
        key = str(path)
        # With a BOM, as A1111 writes it: Excel then opens the file as UTF-8.
        return styles_csv_text(styles, self._extra_columns.get(key, ()), self._extras.get(key, {})).encode("utf-8-sig")

    def _write_file(self, path: Path, data: bytes) -> None:
        if path.is_file():
            if path.read_bytes() == data:
                return  # unchanged: no write, and the backup keeps the previous version
            write_bytes(path.with_name(path.name + ".bak"), path.read_bytes(), what=f"the backup of {path.name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(path, data, what=path.name)

    def set_style(self, name: str, prompt: str, negative_prompt: str) -> PromptStyle:
        """Add or replace one style and save at once (it keeps its file and place when it exists).
        Validated by `check_style`; raises `StyleError`."""
        style = check_style(name, prompt, negative_prompt, max_text_length=self.max_text_length)
        with self._lock:
            self.refresh()  # another user's save, or an edit in a text editor, is kept
            existing = self._styles.get(style.name)
            style = style._replace(path=existing.path if existing is not None else None)
            self._save_changed({**self._styles, style.name: style})
            return self._styles[style.name]

    def delete_style(self, name: str) -> bool:
        """Remove one style and save at once; returns whether it existed."""
        with self._lock:
            self.refresh()
            if name not in self._styles:
                return False
            self._save_changed({k: v for k, v in self._styles.items() if k != name})
            return True

    def _save_changed(self, styles: dict[str, PromptStyle]) -> None:
        """Save `styles` as the new set; when saving fails, the set in memory stays what is on disk."""
        previous, self._styles = self._styles, styles
        try:
            self.save_styles()
        except BaseException:
            self._styles = previous
            raise


def apply_request_styles(request: GenerationRequest, database: StyleDatabase) -> GenerationRequest:
    """`request` with its `styles` merged into both prompts (the names stay in `styles`, for the
    `[styles]` file name pattern and scripts); raises `StyleError` for an unknown name."""
    if not request.styles:
        return request
    prompt, negative = database.styled_prompts(request.prompt, request.negative_prompt, request.styles)
    return request.model_copy(update={"prompt": prompt, "negative_prompt": negative})
