"""One home for every default: `kdtune tune` and `kdtune.api` build the same settings from the same inputs, and
the defaults that once drifted (ASHA's grace period, a preset's subset on small data) hold on both paths."""

from __future__ import annotations

import dataclasses

import pytest

from kdtune import api
from kdtune.cli.tune import parse_args, settings_from_args
from kdtune.engine.config import warmup_epochs
from kdtune.engine.errors import UserError

SPACES = {"grid": "temperature", "optuna": "joint"}


def through_cli(search: str, preset: str, data_dir, extra=()):
    argv = [f"--{search}", SPACES[search], "--preset", preset, "--name", "same", "--data-dir", str(data_dir),
            "--val-size", "30", *extra]
    return settings_from_args(parse_args(argv))


def through_api(search: str, preset: str, data_dir, **extra):
    return api.settings(SPACES[search], search=search, preset=preset, name="same", data_dir=data_dir, val_size=30,
                        **extra)


@pytest.mark.parametrize("preset", ["quick", "paper", "seed", "laptop"])
@pytest.mark.parametrize("search", ["grid", "optuna"])
def test_the_command_and_the_api_build_identical_settings(three_class_dir, search, preset, monkeypatch):
    monkeypatch.delenv("KDTUNE_TEACHER_STORE", raising=False)
    cli_settings, cli_resources = through_cli(search, preset, three_class_dir)
    api_settings, api_resources = through_api(search, preset, three_class_dir)
    assert cli_settings == api_settings
    assert cli_resources == api_resources
    # What no preset sets comes from SweepSettings and build_settings, the same for both.
    grid_seeds = 5 if preset == "laptop" else 3  # the laptop preset's seeds resolve a 1-point gain
    assert cli_settings.seeds == (grid_seeds if search == "grid" else 1) and cli_settings.asha == (search == "optuna")
    assert cli_settings.grace_period == warmup_epochs(cli_settings.recipe, cli_settings.epochs) + 1
    defaults = {f.name: f.default for f in dataclasses.fields(type(cli_settings))}
    assert (cli_settings.num_samples, cli_settings.sampler, cli_settings.reduction_factor) == (
        defaults["num_samples"], defaults["sampler"], defaults["reduction_factor"])


def test_given_values_override_on_both_paths_alike(three_class_dir):
    cli, _ = through_cli("optuna", "quick", three_class_dir, ["--num-samples", "7", "--seeds", "2", "--no-asha",
                                                              "--epochs", "9"])
    python, _ = through_api("optuna", "quick", three_class_dir, num_samples=7, seeds=2, asha=False, epochs=9)
    assert cli == python and (cli.num_samples, cli.seeds, cli.asha, cli.epochs) == (7, 2, False, 9)


def test_optuna_through_the_api_takes_asha_after_the_warm_up(three_class_dir):
    """An Optuna sweep through the API once failed on a hard-coded grace period inside the warm-up."""
    settings, _ = through_api("optuna", "quick", three_class_dir)
    assert settings.asha and settings.grace_period > warmup_epochs(settings.recipe, settings.epochs)


def test_a_presets_subset_is_at_most_what_the_data_have(three_class_dir):
    """quick's 5,000-image subset on 180 training images (30 of them for validation): all 150, and the plan
    says so in its first lines; a subset the user gives is still checked against the data."""
    settings, _ = through_cli("grid", "quick", three_class_dir)
    assert settings.train_subset == 150
    from kdtune.sweep.settings import describe_plan

    head = describe_plan(settings, 150, teacher_stored=None).splitlines()[:4]
    assert any("150 training images (all the data have: preset quick's subset is 5000)" in line for line in head)
    assert head[1].startswith("  preset quick: a smoke test, not an answer")  # what quick is, said first
    given, _ = through_cli("grid", "quick", three_class_dir, ["--train-subset", "100"])
    assert given.train_subset == 100
    from kdtune.sweep.settings import load_splits

    with pytest.raises(UserError, match="invalid train_subset 5000: must be between 1 and 150"):
        load_splits(dataclasses.replace(settings, train_subset=5000))


def test_bad_data_is_refused_before_ray_starts(tmp_path, capsys, monkeypatch):
    """No data where --data-dir points: one line, and Ray was never asked to start."""
    import kdtune.sweep.runner
    from kdtune.cli.args import run_cli
    from kdtune.cli.tune import main

    connected = []
    monkeypatch.setattr(kdtune.sweep.runner, "connect", lambda *args, **kwargs: connected.append(args))
    folder = tmp_path / "images"
    (folder / "train" / "cat").mkdir(parents=True)
    (folder / "test" / "cat").mkdir(parents=True)  # an image folder whose classes hold no images
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["--grid", "temperature", "--preset", "paper", "--data-dir", str(folder), "--results-dir",
                       str(tmp_path / "results"), "--teacher-store", str(tmp_path / "teachers")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 1 and len(err.splitlines()) == 1 and "holds no images" in err, err
    assert connected == []


def test_the_teacher_never_labels_the_views_it_trained_on_by_default(three_class_dir):
    from kdtune.engine.teacher import teacher_key
    from kdtune.sweep.settings import load_splits

    settings, _ = through_cli("grid", "paper", three_class_dir)
    assert settings.teacher_config().aug_seed == settings.teacher_aug_seed
    assert settings.student_config(alpha=0.5, temperature=4.0).aug_seed == settings.aug_seed
    assert settings.teacher_aug_seed != settings.aug_seed
    recorded = settings.to_dict()  # what experiment.json holds
    assert (recorded["teacher_aug_seed"], recorded["aug_seed"]) == (settings.teacher_aug_seed, settings.aug_seed)
    assert settings.students_record()["aug_seed"] == settings.aug_seed
    # The teacher's stream is part of its store key: a teacher trained on other views is another entry.
    splits = load_splits(settings)
    other = dataclasses.replace(settings, teacher_aug_seed=settings.aug_seed)
    assert teacher_key(settings.teacher_config(), splits) != teacher_key(other.teacher_config(), splits)


def test_a_confirmation_on_fresh_views_has_its_own_stream_and_cache_in_the_plan(three_class_dir):
    from kdtune.sweep import estimate
    from kdtune.sweep.runner import _base
    from kdtune.sweep.settings import describe_plan

    settings, _ = through_cli("grid", "paper", three_class_dir, ["--confirm", "2"])
    assert settings.confirm_aug_seed == settings.aug_seed and _base(settings, "confirm")["aug_seed"] == settings.aug_seed
    fresh, _ = through_cli("grid", "paper", three_class_dir, ["--confirm", "2", "--confirm-fresh-views"])
    assert fresh.confirm_aug_seed not in (fresh.aug_seed, fresh.teacher_aug_seed)
    assert _base(fresh, "confirm")["aug_seed"] == fresh.confirm_aug_seed
    assert _base(fresh, "sweep")["aug_seed"] == fresh.aug_seed
    assert f"on a new augmentation stream {fresh.confirm_aug_seed} (a second logit cache" in describe_plan(fresh, 150, True)
    speeds = estimate.Speeds(100.0, 100.0, 100.0, 100.0)
    work = dict(n_train=100, n_val=10, n_test=10, epochs=2, teacher_epochs=1, test_every=0, phase_packs={},
                train_teacher=False, build_cache=True)
    one = estimate.estimate(estimate.Work(**work), speeds, 1).cache_s
    two = estimate.estimate(estimate.Work(**work, build_fresh_cache=True), speeds, 1).cache_s
    assert one == pytest.approx((2 * 100 + 10 + 10) / 100.0) and two == pytest.approx(2 * one)
