"""Search-space files: the shipped ones load, bad ones are refused with a clear message."""

from __future__ import annotations

import pytest

from kdtune.engine.errors import UserError
from kdtune.sweep.spaces import apply_overrides, available, default_dir, load_search_space, resolve_search_space, space_label


def test_shipped_spaces_load_with_their_issue_values():
    assert {"temperature", "alpha", "joint"} <= set(available())
    temperature = load_search_space("temperature", "grid")
    assert temperature.axes == {"temperature": [1, 2, 3, 4, 5, 6, 8, 10, 15, 20]}
    assert set(temperature.fixed) == {"alpha"}
    alpha = load_search_space("alpha", "grid")
    assert alpha.axes["alpha"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99]
    joint = load_search_space("joint", "optuna")
    assert joint.distributions == {"temperature": ("loguniform", 1.0, 20.0), "alpha": ("uniform", 0.0, 1.0)}
    assert len(load_search_space("joint", "grid").axes) == 2


def write(tmp_path, name, text):
    (tmp_path / f"{name}.yaml").write_text(text)
    return tmp_path


def test_user_space_in_another_folder(tmp_path):
    folder = write(tmp_path, "mine", "grid:\n  temperature: [2, 3]\n  alpha: 0.7\n")
    space = load_search_space("mine", "grid", folder)
    assert space.axes == {"temperature": [2.0, 3.0]} and space.fixed == {"alpha": 0.7}


def test_a_yaml_path_is_read_as_a_file(tmp_path, monkeypatch):
    write(tmp_path, "mine", "grid:\n  temperature: [2, 3]\n  alpha: 0.7\n")
    monkeypatch.chdir(tmp_path)
    for given in (str(tmp_path / "mine.yaml"), "mine.yaml", "./mine.yaml"):
        space = resolve_search_space(given, "grid")
        assert (space.name, space.axes, space.fixed) == ("mine", {"temperature": [2.0, 3.0]}, {"alpha": 0.7})
        assert space_label(given) == "mine"
    with pytest.raises(UserError, match="search space file other/none.yaml not found"):
        resolve_search_space("other/none.yaml", "grid")


def test_a_dict_is_a_whole_document_or_one_section():
    section = {"temperature": [2, 8], "alpha": 0.5}
    for given in (section, {"grid": section, "optuna": {"temperature": {"uniform": [1, 2]}, "alpha": 0.5}}):
        space = resolve_search_space(given, "grid")
        assert (space.kind, space.axes, space.fixed) == ("grid", {"temperature": [2.0, 8.0]}, {"alpha": 0.5})
    assert space_label(section) == "custom"
    optuna = resolve_search_space({"temperature": {"loguniform": [1, 20]}, "alpha": {"uniform": [0, 1]}}, "optuna")
    assert optuna.distributions == {"temperature": ("loguniform", 1.0, 20.0), "alpha": ("uniform", 0.0, 1.0)}
    with pytest.raises(UserError, match=r"search space \(dict\): unknown parameter 'beta'"):
        resolve_search_space({"temperature": [2], "beta": 1}, "grid")
    with pytest.raises(UserError, match="invalid search space 3"):
        resolve_search_space(3, "grid")


def test_installed_copy_is_used_without_a_checkout(tmp_path, monkeypatch):
    """Installed, kdtune/sweep/spaces.py has no ../search_spaces beside it; the packaged copy is used."""
    import kdtune.sweep.spaces as module

    (tmp_path / "kdtune" / "builtin_spaces").mkdir(parents=True)
    monkeypatch.setattr(module, "__file__", str(tmp_path / "kdtune" / "sweep" / "spaces.py"))
    monkeypatch.delenv("KDTUNE_SEARCH_SPACES", raising=False)
    assert default_dir() == tmp_path / "kdtune" / "builtin_spaces"


def test_unknown_name_lists_what_exists(tmp_path):
    folder = write(tmp_path, "mine", "grid:\n  temperature: [2]\n  alpha: 0.5\n")
    with pytest.raises(UserError, match=r"unknown search space 'nope'.*mine"):
        load_search_space("nope", "grid", folder)


@pytest.mark.parametrize(
    "text, message",
    [
        ("grid: [1, 2\n", "not valid YAML"),
        ("!!python/object/apply:os.system ['touch /tmp/kdtune-pwned']\n", "not valid YAML"),
        ("optuna:\n  temperature: {uniform: [1, 2]}\n  alpha: 0.5\n", "no 'grid:' section"),
        ("grid:\n  temperature: [0, 2]\n  alpha: 0.5\n", r"invalid value 0.*> 0"),
        ("grid:\n  temperature: [2]\n  alpha: 1.5\n", r"invalid value 1.5.*\[0, 1\]"),
        ("grid:\n  temperature: [2]\n  beta: 0.5\n", "unknown parameter 'beta'"),
        ("grid:\n  temperature: 2\n  alpha: 0.5\n", "varies nothing"),
        ("grid:\n  temperature: [2]\n", "does not set 'alpha'"),
        ("grid:\n  temperature: [abc]\n  alpha: 0.5\n", "invalid value 'abc'"),
    ],
)
def test_bad_grid_files_are_refused(tmp_path, text, message):
    folder = write(tmp_path, "bad", text)
    with pytest.raises(UserError, match=message):
        load_search_space("bad", "grid", folder)


def test_hostile_yaml_never_executes(tmp_path):
    marker = tmp_path / "pwned"
    folder = write(tmp_path, "evil", f"grid: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(UserError):
        load_search_space("evil", "grid", folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("{gaussian: [1, 2]}", "unknown distribution"),
        ("{loguniform: [5, 2]}", "low < high"),
        ("{uniform: [1]}", "unknown distribution"),
    ],
)
def test_bad_distributions_are_refused(tmp_path, spec, message):
    folder = write(tmp_path, "bad", f"optuna:\n  temperature: {spec}\n  alpha: 0.5\n")
    with pytest.raises(UserError, match=message):
        load_search_space("bad", "optuna", folder)


def test_method_is_a_named_parameter_fixed_swept_or_categorical(tmp_path):
    methods = load_search_space("methods", "grid")
    assert methods.axes == {"method": ["kd", "ls", "ctkd", "dkd"], "temperature": [2, 4, 8]} and methods.fixed == {"alpha": 0.9}
    assert load_search_space("methods", "optuna").distributions["method"] == ("categorical", ["kd", "ls", "ctkd", "dkd"])
    folder = write(tmp_path, "fixed", "grid:\n  method: ls\n  temperature: [2, 3]\n  alpha: 0.7\n")
    assert load_search_space("fixed", "grid", folder).fixed == {"method": "ls", "alpha": 0.7}
    # A space that does not name a method is plain KD: it is not required.
    assert "method" not in load_search_space("temperature", "grid").fixed


ALL_METHODS = "kd, ls, ctkd, dkd, kd-shuffled, kd-uniform"


@pytest.mark.parametrize(
    "section, spec, message",
    [
        ("grid", "[kd, fitnet]", f"invalid value 'fitnet'; must be one of {ALL_METHODS}"),
        ("grid", "3", f"invalid value 3; must be one of {ALL_METHODS}"),
        ("optuna", "{categorical: [kd]}", f"method takes {{categorical: [two or more of {ALL_METHODS}]}}"),
        ("optuna", "{uniform: [0, 1]}", "method takes {categorical"),
    ],
)
def test_bad_methods_are_refused(tmp_path, section, spec, message):
    other = "temperature: [2]" if section == "grid" else "temperature: {uniform: [1, 2]}"
    folder = write(tmp_path, "bad", f"{section}:\n  method: {spec}\n  {other}\n  alpha: 0.5\n")
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("{", r"\{")):
        load_search_space("bad", section, folder)


def test_a_categorical_is_only_for_names(tmp_path):
    folder = write(tmp_path, "bad", "optuna:\n  temperature: {categorical: [1, 2]}\n  alpha: 0.5\n")
    with pytest.raises(UserError, match="temperature is a number: use uniform or loguniform"):
        load_search_space("bad", "optuna", folder)


def test_preset_overrides_replace_only_values_of_the_same_shape():
    seed_values = {"temperature": [1, 2, 3], "alpha": 0.3}
    temperature = apply_overrides(load_search_space("temperature", "grid"), seed_values)
    assert temperature.axes == {"temperature": [1, 2, 3]} and temperature.fixed == {"alpha": 0.3}
    alpha = apply_overrides(load_search_space("alpha", "grid"), seed_values)
    assert alpha.axes == load_search_space("alpha", "grid").axes  # the alpha curve keeps its axis
    assert alpha.fixed == {"temperature": 4.0}
