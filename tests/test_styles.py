"""The prompt style database over A1111's styles.csv: reading (quotes, commas, line breaks, BOM, bad
rows, bad files), merging (`{prompt}`), extracting styles back from a prompt, saving (backup, only
the configured files, concurrent saves) and picking up edits made outside."""

from __future__ import annotations

import csv
import io
import os
import threading

import pytest

from modules.generation.engine import GenerationRequest
from modules.generation.styles import (
    MAX_NAME_LENGTH,
    PromptStyle,
    StyleDatabase,
    StyleError,
    StylesFileError,
    apply_request_styles,
    check_style,
    merge_prompts,
)

# Written as A1111's Excel-friendly file: BOM, CRLF, quoted fields holding commas, quotes and a
# line break, an empty negative prompt.
A1111_CSV = (
    "\ufeffname,prompt,negative_prompt\r\n"
    'noir,"black and white, film grain","color, ""vivid"""\r\n'
    'frame,"masterpiece, {prompt}, best quality",lowres\r\n'
    'poem,"line one\nline two",\r\n'
)


def write(path, text: str, encoding: str = "utf-8"):
    path.write_bytes(text.encode(encoding))
    return path


def rows_of(path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8-sig"), newline="")))


def test_reads_a1111_file_with_quotes_commas_line_breaks_and_bom(tmp_path):
    db = StyleDatabase(write(tmp_path / "styles.csv", A1111_CSV))
    assert list(db.styles) == ["noir", "frame", "poem"]
    assert db.styles["noir"] == PromptStyle("noir", "black and white, film grain", 'color, "vivid"',
                                            str(tmp_path / "styles.csv"))
    assert db.styles["poem"].prompt == "line one\nline two" and db.styles["poem"].negative_prompt == ""
    assert db.errors == [] and db.warnings == []


def test_save_round_trips_and_keeps_a1111_format(tmp_path):
    path = write(tmp_path / "styles.csv", A1111_CSV)
    db = StyleDatabase(path)
    before = dict(db.styles)
    db.set_style('with, "comma"', "a, b", 'c "d"')
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and raw.split(b"\r\n")[0] == b"\xef\xbb\xbfname,prompt,negative_prompt"
    again = StyleDatabase(path)
    assert {k: v for k, v in again.styles.items() if k in before} == before
    assert again.styles['with, "comma"'][:3] == ('with, "comma"', "a, b", 'c "d"')
    assert [r["name"] for r in rows_of(path)] == ["noir", "frame", "poem", 'with, "comma"']


def test_old_name_text_columns_are_read(tmp_path):
    db = StyleDatabase(write(tmp_path / "styles.csv", "name,text\nold,ancient\n"))
    assert db.styles["old"][:3] == ("old", "ancient", "")


def test_merge_rule_and_order():
    assert merge_prompts("masterpiece, {prompt}, 4k", "a cat") == "masterpiece, a cat, 4k"
    assert merge_prompts("film grain", " a cat ") == "a cat, film grain"
    assert merge_prompts("film grain", "") == "film grain"
    assert merge_prompts("", "a cat") == "a cat"


def test_apply_styles_in_order_and_unknown_names(tmp_path):
    db = StyleDatabase(write(tmp_path / "styles.csv", A1111_CSV))
    # noir appends; frame then wraps everything so far.
    assert db.apply_styles_to_prompt("a cat", ["noir", "frame"]) == \
        "masterpiece, a cat, black and white, film grain, best quality"
    assert db.apply_negative_styles_to_prompt("blurry", ["noir", "frame"]) == 'blurry, color, "vivid", lowres'
    assert db.get_style_prompts(["noir", "missing"]) == ["black and white, film grain", ""]
    assert db.apply_styles_to_prompt("a cat", ["missing"]) == "a cat"  # A1111 skips unknown names
    with pytest.raises(StyleError, match="unknown style 'missing'.*'noir'"):
        db.styled_prompts("a cat", "", ["missing"])


def test_request_gets_styles_merged_and_keeps_names(tmp_path):
    db = StyleDatabase(write(tmp_path / "styles.csv", A1111_CSV))
    request = apply_request_styles(GenerationRequest(prompt="a cat", negative_prompt="blurry", styles=("noir",)), db)
    assert request.prompt == "a cat, black and white, film grain"
    assert request.negative_prompt == 'blurry, color, "vivid"' and request.styles == ("noir",)


def test_extract_styles_reverses_apply(tmp_path):
    db = StyleDatabase(write(tmp_path / "styles.csv", A1111_CSV))
    prompt = db.apply_styles_to_prompt("a cat", ["noir", "frame"])
    negative = db.apply_negative_styles_to_prompt("blurry", ["noir", "frame"])
    assert db.extract_styles_from_prompt(prompt, negative) == (["noir", "frame"], "a cat", "blurry")
    # The negative prompt must carry the style too.
    assert db.extract_styles_from_prompt("a cat, black and white, film grain", "blurry") == \
        ([], "a cat, black and white, film grain", "blurry")
    assert db.extract_styles_from_prompt("a dog", "") == ([], "a dog", "")


def test_save_keeps_a_backup_of_the_previous_file(tmp_path):
    path = write(tmp_path / "styles.csv", A1111_CSV)
    db = StyleDatabase(path)
    db.set_style("added", "p", "n")
    assert (tmp_path / "styles.csv.bak").read_bytes() == A1111_CSV.encode()
    db.delete_style("noir")
    assert "noir" in [r["name"] for r in rows_of(tmp_path / "styles.csv.bak")]
    assert "noir" not in [r["name"] for r in rows_of(path)]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".atelier-tmp")]


def test_first_save_creates_the_file(tmp_path):
    db = StyleDatabase(tmp_path / "styles.csv")
    assert db.styles == {}
    db.set_style("first", "p", "")
    assert rows_of(tmp_path / "styles.csv") == [{"name": "first", "prompt": "p", "negative_prompt": ""}]
    assert not (tmp_path / "styles.csv.bak").exists()


def test_extra_columns_are_kept(tmp_path):
    path = write(tmp_path / "styles.csv", "name,prompt,negative_prompt,description\na,x,,kept text\n")
    StyleDatabase(path).set_style("b", "y", "")
    assert rows_of(path) == [{"name": "a", "prompt": "x", "negative_prompt": "", "description": "kept text"},
                             {"name": "b", "prompt": "y", "negative_prompt": "", "description": ""}]


def test_names_cannot_inject_rows(tmp_path):
    path = write(tmp_path / "styles.csv", A1111_CSV)
    db = StyleDatabase(path)
    with pytest.raises(StyleError, match="line breaks"):
        db.set_style('evil"\nhacked,prompt,', "x", "")
    db.set_style('evil",injected,"', "x\r\nhacked,row,here", "")
    names = [r["name"] for r in rows_of(path)]
    assert names == ["noir", "frame", "poem", 'evil",injected,"'] and "hacked" not in names


@pytest.mark.parametrize("name, fragment", [
    ("", "empty"), ("   ", "empty"), ("a" * (MAX_NAME_LENGTH + 1), "limit"), ("tab\there", "line breaks"),
    ("#comment", "comment"),
])
def test_bad_names_are_refused_with_the_reason(name, fragment):
    with pytest.raises(StyleError, match=fragment):
        check_style(name, "", "")


def test_text_length_follows_the_prompt_limit(tmp_path):
    limit = {"value": 10}
    db = StyleDatabase(tmp_path / "styles.csv", max_text_length=lambda: limit["value"])
    with pytest.raises(StyleError, match="negative prompt is 11 characters long; the limit is 10"):
        db.set_style("long", "ok", "x" * 11)
    limit["value"] = 20
    db.set_style("long", "ok", "x" * 11)
    assert db.styles["long"].negative_prompt == "x" * 11


def test_bad_rows_are_skipped_with_a_warning(tmp_path):
    text = ("name,prompt,negative_prompt\n"
            "good,a,b\n"
            ",orphan text,\n"  # no name
            "long,x,y,surplus,fields\n"  # more fields than the header: kept, the surplus dropped
            "#note,comment row,\n"  # A1111's comment: skipped silently
            "short\n"  # fewer fields: the missing ones are empty
            "good2,c,d\n")
    db = StyleDatabase(write(tmp_path / "styles.csv", text))
    assert list(db.styles) == ["good", "long", "short", "good2"] and db.styles["short"][:3] == ("short", "", "")
    assert db.styles["long"][:3] == ("long", "x", "y")
    assert len(db.warnings) == 2 and "line 3" in db.warnings[0] and "line 4" in db.warnings[1]
    assert "2 field(s) more" in db.warnings[1] and db.errors == []


def test_rows_the_editor_would_refuse_are_kept_through_a_save(tmp_path):
    # A1111 writes whatever it was given; a row skipped on reading would vanish at the next save.
    text = ('name,prompt,negative_prompt\n"two\nlines",x,\nlong,' + "y" * 50 + ",\n")
    path = write(tmp_path / "styles.csv", text)
    db = StyleDatabase(path, max_text_length=10)
    assert list(db.styles) == ["two\nlines", "long"] and db.warnings == []
    db.set_style("new", "z", "")
    assert [r["name"] for r in rows_of(path)] == ["two\nlines", "long", "new"]
    assert rows_of(path)[1]["prompt"] == "y" * 50


@pytest.mark.parametrize("content, fragment", [
    ("name;prompt\nx;y\n".encode("utf-16"), "not UTF-8"),
    ("name,prompt\nstyle,caf\xe9\n".encode("latin-1"), "not UTF-8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8"),
    (b"title,text2\nx,y\n", "header line"),
    (b"name,prompt\nok,\"open quote\n" + b"x" * 200_000, "not valid CSV"),
])
def test_unreadable_file_is_an_error_not_a_crash_and_is_never_overwritten(tmp_path, content, fragment):
    path = tmp_path / "styles.csv"
    path.write_bytes(content)
    db = StyleDatabase(path)
    assert db.styles == {} and len(db.errors) == 1 and fragment in db.errors[0] and "styles.csv" in db.errors[0]
    assert str(tmp_path) not in db.errors[0]  # no server paths in what the page shows
    with pytest.raises(StylesFileError, match="not saved"):
        db.set_style("x", "y", "")
    assert path.read_bytes() == content
    with pytest.raises(StyleError, match=f"unknown style 'x'; known styles: none.*{fragment}"):
        db.styled_prompts("", "", ["x"])  # a request naming a style says why there is none


def test_external_edits_are_picked_up(tmp_path):
    path = write(tmp_path / "styles.csv", A1111_CSV)
    db = StyleDatabase(path)
    assert "late" not in db.styles
    write(path, A1111_CSV + "late,added in an editor,\n")
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    assert db.styles["late"].prompt == "added in an editor"


def test_save_keeps_styles_another_process_added(tmp_path):
    path = write(tmp_path / "styles.csv", A1111_CSV)
    db = StyleDatabase(path)
    other = StyleDatabase(path)
    other.set_style("from other", "o", "")
    os.utime(path, ns=(2, 2))
    db.set_style("from me", "m", "")
    assert {"from other", "from me"} <= {r["name"] for r in rows_of(path)}


def test_concurrent_saves_keep_every_style(tmp_path):
    path = write(tmp_path / "styles.csv", A1111_CSV)
    db = StyleDatabase(path)
    errors: list[BaseException] = []

    def add(i: int):
        try:
            db.set_style(f"style {i}", f"prompt {i}", "")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {f"style {i}" for i in range(16)} <= {r["name"] for r in rows_of(path)}
    assert len(rows_of(path)) == 3 + 16


def test_writes_only_the_configured_files(tmp_path):
    path = write(tmp_path / "styles.csv", A1111_CSV)
    elsewhere = tmp_path / "elsewhere.csv"
    db = StyleDatabase(path)
    db.styles["sneaky"] = PromptStyle("sneaky", "x", "", str(elsewhere))  # what an extension could do
    db.save_styles(str(tmp_path / "other.csv"))  # A1111's deprecated path argument: ignored
    assert not elsewhere.exists() and not (tmp_path / "other.csv").exists()
    assert "sneaky" in [r["name"] for r in rows_of(path)]


def test_several_files_and_patterns(tmp_path):
    (tmp_path / "more").mkdir()
    main = write(tmp_path / "styles.csv", "name,prompt,negative_prompt\nmain,m,\n")
    extra = write(tmp_path / "more" / "anime.csv", "name,prompt,negative_prompt\nanime,a,\n")
    db = StyleDatabase([main, tmp_path / "more" / "*.csv"])
    assert db.styles["anime"].path == str(extra) and db.default_path == main
    db.set_style("anime", "changed", "")  # stays in its file
    db.set_style("brand new", "n", "")  # goes to the default file
    assert rows_of(extra) == [{"name": "anime", "prompt": "changed", "negative_prompt": ""}]
    assert [r["name"] for r in rows_of(main)] == ["main", "brand new"]
    db.delete_style("anime")  # the file's last style: the file is emptied, not left behind
    assert rows_of(extra) == [] and "anime" not in StyleDatabase([main, tmp_path / "more" / "*.csv"]).styles


def test_app_context_owns_one_database_over_the_data_dir(tmp_path):
    from modules.serving.app_context import AppContext
    from modules.serving.cmd_args import parse_args

    write(tmp_path / "styles.csv", A1111_CSV)
    context = AppContext.from_args(parse_args(["--data-dir", str(tmp_path), "--no-demo-checkpoint"]))
    assert context.prompt_styles is context.prompt_styles
    assert context.prompt_styles.default_path == tmp_path / "styles.csv"
    assert list(context.prompt_styles.styles) == ["noir", "frame", "poem"]


def test_styles_file_flag(tmp_path):
    from modules.serving.app_context import AppContext
    from modules.serving.cmd_args import parse_args

    own = write(tmp_path / "mine.csv", "name,prompt\nmine,x\n")
    context = AppContext.from_args(parse_args(["--data-dir", str(tmp_path), "--no-demo-checkpoint",
                                               "--styles-file", str(own)]))
    assert list(context.prompt_styles.styles) == ["mine"] and context.prompt_styles.default_path == own


def test_a_save_over_the_file_cap_writes_nothing_and_keeps_memory_as_on_disk(tmp_path, monkeypatch):
    import modules.generation.styles as styles_module

    path = write(tmp_path / "styles.csv", A1111_CSV)
    db = StyleDatabase(path)
    monkeypatch.setattr(styles_module, "MAX_FILE_BYTES", len(A1111_CSV.encode()) + 20)
    with pytest.raises(StyleError, match="styles.csv would be .* bytes; styles files are limited"):
        db.set_style("big", "x" * 100, "")
    assert path.read_bytes() == A1111_CSV.encode() and "big" not in db.styles
    assert not (tmp_path / "styles.csv.bak").exists()
