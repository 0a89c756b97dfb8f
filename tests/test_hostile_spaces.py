"""Hostile search spaces (issue 19): each refused in one short line naming the value or key, never expanded and
never a traceback; nothing lost (a repeated key) and nothing silently wrong (a repeated point, 1e308 as text)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import run_command

from kdtune.cli.tune import main as tune
from kdtune.engine.errors import UserError
from kdtune.sweep.spaces import MAX_BYTES, load_search_space, resolve_search_space

SHORT = 300  # an error line quotes at most ~200 characters of a bad value


def space_file(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "hostile.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def refused(space, kind: str = "grid") -> str:
    """The one short line a hostile space (a file's path or a dict) is refused with."""
    with pytest.raises(UserError) as info:
        load_search_space(space, kind) if isinstance(space, str) else resolve_search_space(space, kind)
    message = str(info.value)
    own = message.replace(space, "") if isinstance(space, str) else message  # what it says, less the file's path
    assert "\n" not in message and len(own) < SHORT, message[:1000]
    return message


def alias_bomb(levels: int) -> str:
    """A flow list of nested anchors, each level nine aliases of the one before ("billion laughs"). The tests use
    six levels (531,441 strings): where aliases were expanded that costs well under a second, so a regression
    fails them instead of exhausting memory as the issue's nine levels (387 million) did."""
    items = ["&l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    items += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return f"[{', '.join(items)}]"


def test_a_value_given_twice_is_refused_after_normalising_numbers(tmp_path):
    message = refused(space_file(tmp_path, "grid:\n  temperature: [2, 2.0]\n  alpha: 0.5\n"))
    assert "grid.temperature: 2 is listed twice (as 2 and 2.0)" in message


def test_a_method_given_twice_in_a_grid_is_refused(tmp_path):
    message = refused(space_file(tmp_path, "grid:\n  method: [kd, ls, kd]\n  temperature: [2, 4]\n  alpha: 0.5\n"))
    assert "grid.method: kd is listed twice" in message


def test_a_method_given_twice_in_a_categorical_is_refused(tmp_path):
    text = "optuna:\n  method: {categorical: [kd, kd]}\n  temperature: {loguniform: [1, 20]}\n  alpha: 0.5\n"
    assert "optuna.method: kd is listed twice" in refused(space_file(tmp_path, text), "optuna")


def test_a_top_level_key_given_twice_is_refused(tmp_path):
    text = "grid:\n  temperature: [2]\n  alpha: 0.5\ngrid:\n  temperature: [4, 8]\n  alpha: 0.5\n"
    assert "line 4: key 'grid' is given twice" in refused(space_file(tmp_path, text))


def test_a_parameter_given_twice_in_a_section_is_refused(tmp_path):
    text = "grid:\n  temperature: [2, 4]\n  alpha: 0.5\n  temperature: [8]\n"
    assert "line 4: key 'temperature' is given twice" in refused(space_file(tmp_path, text))


def test_an_unknown_top_level_key_is_refused(tmp_path):
    message = refused(space_file(tmp_path, "foo: bar\ngrid:\n  temperature: [2, 4]\n  alpha: 0.5\n"))
    assert "unknown top-level key 'foo'; allowed: grid, optuna, description" in message


def test_a_dict_space_gets_the_same_checks():
    assert "2 is listed twice" in refused({"grid": {"temperature": [2, 2.0], "alpha": 0.5}, "description": "d"})
    assert "kd is listed twice" in refused({"temperature": [2], "alpha": 0.5, "method": ["kd", "kd"]})
    assert "unknown top-level key 'foo'" in refused({"grid": {"temperature": [2, 4], "alpha": 0.5}, "foo": 1})


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    utf16 = b"\xff\xfe" + "grid:\n  temperature: [2, 4]\n  alpha: 0.5\n".encode("utf-16-le")
    message = refused(space_file(tmp_path, utf16))
    assert "is not UTF-8 text (byte 0xff at offset 0)" in message


def test_a_file_over_the_size_cap_is_refused(tmp_path):
    text = "grid:\n  temperature: [2, 4]\n  alpha: 0.5\n# " + "x" * MAX_BYTES + "\n"
    message = refused(space_file(tmp_path, text))
    assert f"is {len(text)} bytes, more than the {MAX_BYTES} (1 MiB)" in message


@pytest.mark.parametrize("where", ["description: {bomb}\ngrid:\n  temperature: [2, 4]\n  alpha: 0.5\n",
                                   "grid:\n  temperature: {bomb}\n  alpha: 0.5\n"], ids=["description", "axis"])
def test_an_alias_bomb_is_refused_unexpanded(tmp_path, where):
    message = refused(space_file(tmp_path, where.format(bomb=alias_bomb(6))))
    assert "search spaces need no anchors or aliases" in message


def test_numbers_in_yaml_12_form_are_numbers(tmp_path):
    space = load_search_space(space_file(tmp_path, "grid:\n  temperature: [1e308, 8, 2E5, 1e-3]\n  alpha: 5e-1\n"), "grid")
    assert space.axes == {"temperature": [1e308, 8.0, 2e5, 1e-3]} and space.fixed == {"alpha": 0.5}


@pytest.mark.parametrize("temperature, alpha, bad", [("[.inf, 8]", "0.5", "inf"), ("[8]", ".nan", "nan"),
                                                     ("[1e999, 8]", "0.5", "inf")])
def test_infinite_and_nan_values_are_refused(tmp_path, temperature, alpha, bad):
    text = f"grid:\n  temperature: {temperature}\n  alpha: {alpha}\n"
    assert f"invalid value {bad}; must be" in refused(space_file(tmp_path, text))


def test_python_tags_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    text = f"grid: !!python/object/apply:os.system ['touch {marker}']\n"
    assert "could not determine a constructor for the tag" in refused(space_file(tmp_path, text))
    assert not marker.exists()


def test_malformed_yaml_is_one_line_saying_where(tmp_path):
    message = refused(space_file(tmp_path, "grid:\n  temperature: [1, 2\n"))
    assert "is not valid YAML" in message and "line 3" in message


def test_a_long_bad_value_is_quoted_short(tmp_path):
    message = refused(space_file(tmp_path, f"grid:\n  temperature: [2, {'x' * 5000}]\n  alpha: 0.5\n"))
    assert "invalid value 'xxxx" in message and "…" in message


def test_a_huge_dict_value_is_quoted_short():
    nested = [[[0.0] * 1000] * 1000]  # one list shared: cheap to build, a million numbers to repr
    assert "invalid value [[0.0, 0.0" in refused({"temperature": nested, "alpha": 0.5})


@pytest.mark.parametrize("text, fragment", [
    (b"\xff\xfegrid: {}\n", "is not UTF-8 text"),
    (f"grid:\n  temperature: {alias_bomb(6)}\n  alpha: 0.5\n".encode(), "search spaces need no anchors or aliases"),
], ids=["not-utf8", "alias-bomb"])
def test_the_cli_refuses_in_one_error_line(tmp_path, capsys, text, fragment):
    argv = ["--grid", space_file(tmp_path, text), "--dry-run", "--data-dir", str(tmp_path / "no-data"),
            "--results-dir", str(tmp_path / "results"), "--teacher-store", str(tmp_path / "teachers")]
    done = run_command(tune, argv, capsys, tmp_path, prog="kdtune tune")
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[:1000]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert len(lines[0].replace(str(tmp_path), "")) < SHORT, lines[0][:1000]
    assert not (tmp_path / "results").exists()
