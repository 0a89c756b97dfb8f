"""The report: tables checked number by number against the trials they came from, figures, partial
experiments, remote storage, and the one-line errors.

The synthetic experiment is a real (tiny) Ray Tune experiment whose function trainable reports
the trainable's metric keys from `fake_metrics`, so every expected number is known exactly.  Its
sweep is interrupted like a Ctrl-C in its seventh trial, leaving trials finished, stopped early,
errored, in progress (interrupted mid-run) and pending.  A real sweep (`scripts/tune.py` on the mini
CIFAR-10 folder) checks the report against the result.json files Tune wrote.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from by_hand import mde_by_hand, sign_flip_by_hand
from scipy import stats

from kdtune.cli.args import run_cli
from kdtune.report.summary import OUTCOMES, Experiment, config_table, headline, summary_columns, write_report
from kdtune.sweep.settings import SweepSettings, sweep_points
from kdtune.sweep.spaces import SearchSpace

REPO = Path(__file__).resolve().parents[1]

EPOCHS = 3
TEMPERATURES = [2.0, 4.0, 8.0, 16.0]
SEEDS = [0, 1]
ALPHA = 0.5
TEACHER = {"val_acc": 0.9, "test_acc": 0.88}
DATA = {"train": 100, "val": 10, "test": 10}
STOPS_EARLY = (2.0, 1)  # (T, seed): returns after epoch 1, as if ASHA had stopped it
ERRORS = (8.0, 1)  # raises in epoch 2, after reporting epoch 1
INTERRUPTED = (16.0, 0, 2)  # (T, seed, epoch) at which "Ctrl-C" is pressed: T = 16, seed 1 never starts


def load_script(name: str):
    """scripts/<name>.py as a module (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the synthetic experiment


def fake_metrics(temperature: float, alpha: float, seed: int, epoch: int) -> dict:
    """Every metric kdtune.sweep.trainable reports, as made-up deterministic numbers.  KD helps most at T = 4 and
    alpha = 0.5; T = 2 dips in its last epoch, so its best epoch is not its last."""
    val = 0.40 + 0.05 * epoch + 0.01 * seed
    if alpha > 0:
        val += 0.08 - 0.03 * abs(math.log2(temperature) - 2) - 0.01 * (temperature > 4) - 0.05 * abs(alpha - 0.5)
        val += 0.004 * seed * temperature / 8  # the gain differs between seeds: paired tests have a spread
        if temperature == 2.0 and epoch == EPOCHS:
            val -= 0.1
    ece = 0.02 + 0.005 * temperature + 0.01 * alpha + 0.001 * seed + 0.01 / epoch
    metrics = {
        "epoch": epoch, "train_loss": 2.0 / epoch, "train_ce": 1.5 / epoch, "train_kd": 0.5 / epoch if alpha else 0.0,
        "lr": 0.1 / epoch, "val_acc": val, "val_nll": 1.0 / epoch, "val_ece": ece,
        "test_acc": val - 0.02 + 0.005 * seed, "test_nll": 1.1 / epoch, "test_ece": 0.03, "epoch_s": 1.0,
        "images_per_s": 1000.0, "diverged": False, "temperature": temperature, "alpha": alpha, "seed": seed,
    }
    # Every student is measured against the teacher, the no-KD one too.
    metrics["agreement"] = 0.5 + 0.05 * epoch - 0.01 * temperature + 0.2 * alpha + 0.002 * seed
    metrics.update(test_agreement=metrics["agreement"] - 0.01, test_kl=0.5 - 0.3 * alpha + 0.01 * seed,
                   test_inherited_errors=0.2 + 0.3 * alpha - 0.005 * temperature)
    return metrics


def fake_trainable(config: dict) -> None:
    from ray import tune

    temperature, alpha, seed = config["temperature"], config["alpha"], config["seed"]
    for epoch in range(1, EPOCHS + 1):
        if (temperature, seed) == ERRORS and epoch == 2:
            raise RuntimeError("injected failure")
        tune.report(fake_metrics(temperature, alpha, seed, epoch))
        if (temperature, seed) == STOPS_EARLY:
            return
        if (temperature, seed, epoch) == INTERRUPTED:
            time.sleep(120)  # reports nothing more: the interrupt stops it here


def settings(search: str = "grid", seeds: int = len(SEEDS), **space) -> SweepSettings:
    space = {"fixed": {"alpha": ALPHA}, "axes": {"temperature": TEMPERATURES}, "distributions": {}, **space}
    return SweepSettings(
        name="synthetic", search=search, space=SearchSpace("synthetic", search, **space), preset="quick",
        teacher="resnet20", student="tinycnn", recipe="strong", teacher_recipe="strong", teacher_epochs=1,
        epochs=EPOCHS, data_dir="unused", val_size=10, train_subset=None, seeds=seeds, num_samples=4, sampler="tpe",
        search_seed=0, asha=False, grace_period=1, reduction_factor=2, max_failures=0,
    )


def write_record(root: Path, storage: str, sweep: SweepSettings | None = None) -> None:
    sweep = sweep or settings()
    record = {"settings": sweep.to_dict(), "teacher": TEACHER, "data": DATA,
              "storage": storage, "points": sweep_points(sweep)}
    root.mkdir(parents=True, exist_ok=True)
    (root / "experiment.json").write_text(json.dumps(record))


def run_phase(storage: Path, phase: str, param_space: dict, callbacks=(), cpus: int = 1) -> None:
    from ray import tune

    tune.Tuner(
        tune.with_resources(fake_trainable, {"cpu": cpus}),
        param_space=param_space,
        tune_config=tune.TuneConfig(metric="val_acc", mode="max", reuse_actors=True),  # no process per trial
        run_config=tune.RunConfig(name=phase, storage_path=str(storage), verbose=0, callbacks=list(callbacks),
                                  failure_config=tune.FailureConfig(max_failures=0)),
    ).fit()


def interrupt_at(temperature: float, seed: int, epoch: int):
    """A Tune callback that presses Ctrl-C when that trial reports that epoch, as a user stopping a sweep would."""
    from ray import tune

    class Interrupt(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if (trial.config["temperature"], trial.config["seed"], result["epoch"]) == (temperature, seed, epoch):
                os.kill(os.getpid(), signal.SIGINT)  # Tune's handler saves the state and stops

    return Interrupt()


@pytest.fixture(scope="module")
def ray_local(ray_session):
    """The session's Ray, whose workers are sent this module's functions by value: they cannot import it."""
    ray_session.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray_session


@pytest.fixture(scope="module")
def synthetic(ray_local, tmp_path_factory):
    """{'before_sweep': experiment with only its baseline run, 'partial': the interrupted sweep as well}."""
    from ray import tune

    base = tmp_path_factory.mktemp("synthetic")
    root = base / "partial"
    write_record(root, str(root))
    run_phase(root, "baseline", {"alpha": 0.0, "temperature": 1.0, "seed": tune.grid_search(SEEDS)})
    before = base / "before_sweep"
    shutil.copytree(root, before)
    write_record(before, str(before))
    # 2 CPUs a trial on a 2-CPU cluster: one trial at a time in grid order, so the interrupt is deterministic.
    space = {"alpha": ALPHA, "temperature": tune.grid_search(TEMPERATURES), "seed": tune.grid_search(SEEDS)}
    run_phase(root, "sweep", space, callbacks=[interrupt_at(*INTERRUPTED)], cpus=2)
    return {"before_sweep": before, "partial": root}


def copy_experiment(source: Path, target: Path, storage: str | None = None) -> Path:
    shutil.copytree(source, target)
    write_record(target, storage or str(target))
    return target


# ----------------------------------------------------------------------------- what the numbers must be


def expected_trials() -> list[dict]:
    """What each trial of the synthetic experiment ran: phase, T, alpha, seed, outcome, epochs."""
    trials = [dict(phase="baseline", temperature=1.0, alpha=0.0, seed=s, outcome="finished", epochs=EPOCHS)
              for s in SEEDS]
    for t, s in ((t, s) for t in TEMPERATURES for s in SEEDS):
        outcome, epochs = "finished", EPOCHS
        if (t, s) == STOPS_EARLY:
            outcome, epochs = "stopped early", 1
        elif (t, s) == ERRORS:
            outcome, epochs = "errored", 1
        elif (t, s) == INTERRUPTED[:2]:
            outcome, epochs = "in progress", INTERRUPTED[2]
        elif t == INTERRUPTED[0]:
            outcome, epochs = "pending", 0
        trials.append(dict(phase="sweep", temperature=t, alpha=ALPHA, seed=s, outcome=outcome, epochs=epochs))
    return trials


def trial_numbers(trial: dict) -> dict:
    """Final and best-epoch metrics of one finished trial, straight from fake_metrics."""
    history = [fake_metrics(trial["temperature"], trial["alpha"], trial["seed"], epoch)
               for epoch in range(1, trial["epochs"] + 1)]
    best = max(history, key=lambda m: m["val_acc"])
    last = history[-1]
    return {"val_acc": last["val_acc"], "test_acc": last["test_acc"], "best_epoch_val_acc": best["val_acc"],
            "best_epoch_test_acc": best["test_acc"], "agreement": last.get("agreement", math.nan),
            "val_ece": last["val_ece"], "test_agreement": last["test_agreement"], "test_kl": last["test_kl"],
            "inherited_errors": last["test_inherited_errors"]}


def expected_row(trials: list[dict], baseline: list[dict]) -> dict:
    """One summary.csv row computed by hand (numpy, not pandas group-bys) from its trials; p_holm is left
    to expected_summary, which sees every configuration."""
    finished = [trial_numbers(t) for t in trials if t["outcome"] == "finished"]
    n = len(finished)
    # The synthetic trials' configs name no method, as an older kdtune's: they read as plain KD.
    row = {"phase": trials[0]["phase"], "method": "kd", "temperature": trials[0]["temperature"], "alpha": trials[0]["alpha"],
           "trials": len(trials), "seeds_finished": n, "complete": n == len(SEEDS),
           "epochs_run_min": min(t["epochs"] for t in trials), "epochs_run_max": max(t["epochs"] for t in trials)}
    for name in ("val_acc", "test_acc", "best_epoch_val_acc", "best_epoch_test_acc", "agreement", "val_ece",
                 "test_agreement", "test_kl", "inherited_errors"):
        values = np.array([f[name] for f in finished])
        row[f"{name}_mean"] = values.mean() if n else math.nan
        row[f"{name}_std"] = values.std(ddof=1) if n > 1 else math.nan
        if name in ("val_acc", "test_acc"):
            row[f"{name}_ci95"] = stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
    row["learned_temperature_mean"] = row["learned_temperature_std"] = math.nan  # no ctkd: no learned T
    for split, size in (("val", DATA["val"]), ("test", DATA["test"])):  # correct images: round(accuracy x images)
        row[f"{split}_correct"] = sum(round(f[f"{split}_acc"] * size) for f in finished) if n else math.nan
    row.update(expected_gain(trials, baseline) if trials[0]["phase"] == "sweep" else
               dict(gain_pairs=0, gain_mean=math.nan, gain_ci95=math.nan, p_paired=math.nan))
    for outcome in OUTCOMES:
        row[outcome.replace(" ", "_")] = sum(t["outcome"] == outcome for t in trials)
    return row


def expected_gain(trials: list[dict], baseline: list[dict]) -> dict:
    """Paired by seed: KD minus no-KD final test accuracy over the seeds both finished, t-interval and p by hand."""
    kd = {t["seed"]: trial_numbers(t)["test_acc"] for t in trials if t["outcome"] == "finished"}
    base = {t["seed"]: trial_numbers(t)["test_acc"] for t in baseline if t["outcome"] == "finished"}
    d = np.array([kd[s] - base[s] for s in sorted(kd) if s in base])
    n = len(d)
    if n < 2:
        return dict(gain_pairs=n, gain_mean=d.mean() if n else math.nan, gain_ci95=math.nan, p_paired=math.nan,
                    p_signflip=sign_flip_by_hand(list(d)) if n else math.nan)
    se = d.std(ddof=1) / math.sqrt(n)
    return dict(gain_pairs=n, gain_mean=d.mean(), gain_sd=d.std(ddof=1), gain_ci95=stats.t.ppf(0.975, n - 1) * se,
                mde=mde_by_hand(n, d.std(ddof=1)), p_paired=2 * stats.t.sf(abs(d.mean() / se), n - 1),
                p_signflip=sign_flip_by_hand(list(d)))


def holm_by_hand(p: list[float]) -> list[float]:
    """Holm's step-down adjustment written out: the i-th smallest p times (m - i + 1), made non-decreasing;
    m counts every configuration, tested or not (an untested one is as if p = 1, and gets no value)."""
    tested = sorted((v, i) for i, v in enumerate(p) if math.isfinite(v))
    m, out, running = len(p), [math.nan] * len(p), 0.0
    for rank, (value, i) in enumerate(tested, start=1):
        running = max(running, min(1.0, (m - rank + 1) * value))
        out[i] = running
    return out


def expected_summary(trials: list[dict]) -> pd.DataFrame:
    def key(trial):  # the report's order: the baseline first, then T, then alpha
        return trial["phase"] != "baseline", trial["temperature"], trial["alpha"]

    baseline = [t for t in trials if t["phase"] == "baseline"]
    rows = [expected_row([t for t in trials if key(t) == k], baseline) for k in sorted({key(t) for t in trials})]
    sweep = [r for r in rows if r["phase"] == "sweep"]
    for row, p in zip(sweep, holm_by_hand([r["p_paired"] for r in sweep])):
        row["p_holm"] = p
    for row in rows:
        row.setdefault("p_holm", math.nan)
    complete = [r for r in sweep if r["complete"]]
    best = max((r["val_correct"] / r["seeds_finished"] for r in complete), default=None)
    for row in rows:
        row["tied_best"] = row in complete and row["val_correct"] / row["seeds_finished"] == best
    return pd.DataFrame(rows, columns=summary_columns())


def assert_same_table(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(actual.columns) == list(expected.columns)
    assert len(actual) == len(expected)
    for column in expected.columns:
        got, want = actual[column].to_numpy(), expected[column].to_numpy()
        if column in ("phase", "method", "complete"):
            assert list(got) == list(want), column
        else:
            # The MDE is a root found numerically, by the module and by hand: equal to the solvers' tolerance.
            rtol = 1e-6 if column == "mde" else 1e-9
            np.testing.assert_allclose(got.astype(float), want.astype(float), rtol=rtol, atol=1e-12, equal_nan=True,
                                       err_msg=column)


def assert_images(folder: Path, names: list[str]) -> None:
    """Each figure opens, is README-sized and is not blank."""
    import matplotlib.image

    for name in names:
        pixels = matplotlib.image.imread(folder / name)
        assert pixels.shape[0] >= 400 and pixels.shape[1] >= 600, name
        assert pixels[..., :3].std() > 0.05, f"{name} is blank"


# ----------------------------------------------------------------------------- synthetic experiments


@pytest.mark.slow
def test_partial_experiment_report_numbers(synthetic, tmp_path):
    root = copy_experiment(synthetic["partial"], tmp_path / "exp")
    report = write_report(root)
    out = root / "report"
    figures = ["temperature_analysis.png", "gain_analysis.png", "learning_curves.png", "fidelity_calibration.png",
               "fidelity.png"]
    # A made-up experiment has no teacher store to draw a card from: the card says so, in words only.
    assert sorted(p.name for p in out.iterdir()) == sorted(figures + ["summary.csv", "summary.md", "teacher_card.md"])
    assert "No soft-target profile: the experiment has no teacher_card.json" in (out / "teacher_card.md").read_text()
    assert_images(out, figures)

    trials = expected_trials()
    assert_same_table(pd.read_csv(out / "summary.csv"), expected_summary(trials))

    # The headline: the chosen T (4: the only configuration whose seeds all finished), its test accuracy, and
    # its gain paired by seed over the no-KD student, with the choice among 4 configurations corrected for.
    best = {t["seed"]: trial_numbers(t)["test_acc"] for t in trials if t["temperature"] == 4.0}
    base = {t["seed"]: trial_numbers(t)["test_acc"] for t in trials if t["phase"] == "baseline"}
    gains = np.array([best[s] - base[s] for s in SEEDS])
    p = stats.ttest_rel([best[s] for s in SEEDS], [base[s] for s in SEEDS]).pvalue
    half = stats.t.ppf(0.975, len(SEEDS) - 1) * gains.std(ddof=1) / math.sqrt(len(SEEDS))
    markdown = (out / "summary.md").read_text()
    assert report["markdown"] == markdown
    assert "among the 1 complete of 4 configurations that competed: **T = 4, α = 0.5** (2 seeds)" in markdown
    values = list(best.values())
    assert f"test {100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}%" in markdown
    assert "optimistic (selected among 4)" in markdown and "**test" not in markdown
    low, high = 100 * (gains.mean() - half), 100 * (gains.mean() + half)
    assert f"{100 * gains.mean():+.2f} points (95% CI {low:+.2f} to {high:+.2f}, 2 paired seeds; " in markdown
    assert (f"paired t-test p = {p:.3g}, exact sign-flip p = 0.5, Holm-adjusted for the 4 configurations compared "
            f"p = {4 * p:.3g}; no significance claimed with 2 < 5 pairs") in markdown
    # T = 2 has a better mean validation accuracy over the seed that finished, but a seed was stopped: not chosen.
    assert "Not eligible, incomplete: T = 2, α = 0.5 — 1 of 2 seeds finished (1 stopped early)" in markdown
    assert "Not eligible, incomplete: T = 8, α = 0.5 — 1 of 2 seeds finished (1 errored)" in markdown
    assert "Trials: 6 finished, 1 stopped early, 1 errored, 1 in progress, 1 pending (of 10 planned)." in markdown
    assert "best-epoch val †" in markdown and "optimistic" in markdown

    # The experiment's own per-trial files are refreshed from the same results.
    per_trial = pd.read_csv(root / "summary.csv")
    # The per-trial summary and the report agree: a started trial Tune saved as PENDING is "in progress".
    assert sorted(per_trial["outcome"]) == sorted(t["outcome"] for t in trials)
    assert "In progress: started but not finished" in markdown
    curve = json.loads((root / "temperature_results.json").read_text())
    finished = [t for t in trials if t["phase"] == "sweep" and t["outcome"] == "finished"]
    assert curve.keys() == {f"{t:g}" for t in {t["temperature"] for t in finished}}
    for key, value in curve.items():
        want = np.mean([trial_numbers(t)["test_acc"] for t in finished if f"{t['temperature']:g}" == key])
        assert value == pytest.approx(want, rel=1e-12)


@pytest.mark.slow
def test_experiment_before_its_sweep_started(synthetic, tmp_path):
    root = copy_experiment(synthetic["before_sweep"], tmp_path / "exp")
    report = write_report(root, out=tmp_path / "out")
    assert_same_table(report["configs"], expected_summary([t for t in expected_trials() if t["phase"] == "baseline"]))
    assert [p.name for p in report["figures"]] == ["learning_curves.png"]
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "Trials: 2 finished, 8 not started yet (of 10 planned)." in markdown
    assert "Chosen configuration: none yet — no distilled configuration has started" in markdown
    assert "temperature_analysis.png: no distilled configuration has a finished seed yet" in markdown


@pytest.mark.slow
def test_remote_storage_and_formats_without_ray(synthetic, tmp_path):
    """Storage given as a URI away from the experiment folder (as with --storage-path); a fresh process
    with no Ray cluster; --out and --format."""
    storage = tmp_path / "bucket" / "synthetic"
    shutil.copytree(synthetic["partial"], storage)
    root = tmp_path / "results" / "synthetic"
    write_record(root, storage.as_uri())
    out = tmp_path / "out-pdf"
    no_cluster = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}  # connecting to Ray would fail
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "report.py"), str(root), "--out", str(out),
                           "--format", "pdf"], capture_output=True, text=True, cwd=tmp_path, env=no_cluster)
    assert done.returncode == 0, done.stderr
    assert "Trials: 6 finished, 1 stopped early, 1 errored, 1 in progress, 1 pending" in done.stdout
    figures = [f"{name}.pdf" for name in ("temperature_analysis", "gain_analysis", "learning_curves",
                                          "fidelity_calibration", "fidelity")]
    assert sorted(p.name for p in out.iterdir()) == sorted(["summary.csv", "summary.md", "teacher_card.md", *figures])
    assert all((out / name).read_bytes().startswith(b"%PDF") for name in figures)
    assert_same_table(pd.read_csv(out / "summary.csv"), expected_summary(expected_trials()))
    report = write_report(root, out=tmp_path / "out-svg", fmt="svg")
    assert [p.suffix for p in report["figures"]] == [".svg"] * 5
    assert all(p.read_bytes().startswith(b"<?xml") for p in report["figures"])


# ----------------------------------------------------------------------------- a real sweep


@pytest.fixture(scope="module")
def real_sweep(ray_local, mini_data_dir, tmp_path_factory):
    """scripts/tune.py on real CIFAR-10 images (100 training images): 1 seed, T in {2, 8}, 2 epochs."""
    base = tmp_path_factory.mktemp("real")
    (base / "spaces").mkdir()
    (base / "spaces" / "tiny.yaml").write_text("grid:\n  temperature: [2, 8]\n  alpha: 0.5\n")
    tune_script = load_script("tune")
    mp = pytest.MonkeyPatch()
    mp.setenv("KDTUNE_SEARCH_SPACES", str(base / "spaces"))
    try:
        code = tune_script.main(["--grid", "tiny", "--preset", "quick", "--teacher", "tinycnn", "--seeds", "1",
                                 "--epochs", "2", "--teacher-epochs", "1", "--train-subset", "100", "--val-size", "20",
                                 "--data-dir", str(mini_data_dir), "--name", "real",
                                 "--results-dir", str(base / "results"), "--teacher-store", str(base / "teachers")])
    finally:
        mp.undo()
    assert code == 0
    return base / "results" / "real"


def tune_results(storage: Path) -> list[dict]:
    """Each student's reported epochs, read straight from the result.json Tune wrote (no ExperimentAnalysis):
    a trial is a pack of seeds whose own metrics are its `s<seed>/<name>` keys."""
    trials = []
    # The baseline trains in the sweep's experiment, its config naming its phase.
    for result in sorted((storage / "sweep").glob("*/result.json")):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        phase = lines[0]["config"].get("phase", "sweep")
        for seed in lines[0]["config"]["seeds"]:
            prefix = f"s{seed}/"
            epochs = [{**{k[len(prefix):]: v for k, v in line.items() if k.startswith(prefix)},
                       "temperature": line["temperature"], "alpha": line["alpha"]} for line in lines]
            trials.append({"phase": phase, "epochs": epochs})
    return trials


@pytest.mark.slow
def test_real_sweep_report(real_sweep):
    report = write_report(real_sweep)
    out = real_sweep / "report"
    figures = ["temperature_analysis.png", "learning_curves.png", "fidelity_calibration.png"]
    assert_images(out, figures)
    table = pd.read_csv(out / "summary.csv").set_index(["phase", "temperature"])
    results = tune_results(real_sweep)
    assert len(results) == len(table) == 3
    for trial in results:
        last = trial["epochs"][-1]
        best = max(trial["epochs"], key=lambda e: e["val_acc"])
        row = table.loc[(trial["phase"], last["temperature"])]
        assert last["epoch"] == 2 and row["seeds_finished"] == 1 and row["finished"] == 1
        assert row["alpha"] == last["alpha"]
        for column, value in (("val_acc_mean", last["val_acc"]), ("test_acc_mean", last["test_acc"]),
                              ("best_epoch_val_acc_mean", best["val_acc"]),
                              ("val_ece_mean", last["val_ece"])):
            assert row[column] == pytest.approx(value, rel=1e-6), column
        # The test set is evaluated after the last epoch only (no --test-every): no best-epoch test accuracy,
        # unless the best epoch is the last.
        assert "test_acc" not in trial["epochs"][0]
        want = best["test_acc"] if best is last else math.nan
        assert row["best_epoch_test_acc_mean"] == pytest.approx(want, rel=1e-6, nan_ok=True)
        if trial["phase"] == "sweep":
            assert row["agreement_mean"] == pytest.approx(last["agreement"], rel=1e-6)
        assert math.isnan(row["val_acc_std"]) and math.isnan(row["val_acc_ci95"])  # one seed: no spread
    markdown = report["markdown"]
    assert "One seed per configuration: no standard deviations, confidence bands or significance tests." in markdown
    assert "cannot be told from seed-to-seed noise" in markdown


# ----------------------------------------------------------------------------- figures of other searches (no Ray)


def made_up_experiment(tmp_path: Path, sweep: SweepSettings, points: list[tuple[float, float]], outcomes: list[str]):
    """An Experiment built in memory: one seed per point, metrics from fake_metrics."""
    rows, epochs = [], []
    for number, ((temperature, alpha), outcome) in enumerate(zip([(1.0, 0.0), *points], ["finished", *outcomes])):
        phase = "baseline" if number == 0 else "sweep"
        run = EPOCHS if outcome == "finished" else 1
        history = [fake_metrics(temperature, alpha, 0, e) for e in range(1, run + 1)]
        numbers = trial_numbers(dict(temperature=temperature, alpha=alpha, seed=0, epochs=run))
        rows.append(dict(phase=phase, trial_id=f"t{number}", temperature=temperature, alpha=alpha, seed=0,
                         status="TERMINATED", outcome=outcome, epochs_run=run, failures=0,
                         final_val_acc=numbers["val_acc"], final_test_acc=numbers["test_acc"],
                         best_val_acc=numbers["best_epoch_val_acc"], best_epoch=1,
                         test_acc_at_best_val=numbers["best_epoch_test_acc"], final_agreement=numbers["agreement"],
                         final_val_ece=numbers["val_ece"], final_val_nll=1.0, trial_number=number,
                         final_test_agreement=numbers["test_agreement"], final_test_kl=numbers["test_kl"],
                         final_test_inherited_errors=numbers["inherited_errors"]))
        columns = ("epoch", "val_acc", "test_acc", "val_ece", "agreement")
        epochs += [dict(phase=phase, trial_id=f"t{number}", **{k: h.get(k, math.nan) for k in columns})
                   for h in history]
    record = {"settings": sweep.to_dict(), "teacher": TEACHER, "storage": str(tmp_path)}
    return Experiment(tmp_path, record, pd.DataFrame(rows), pd.DataFrame(epochs))


def draw(exp: Experiment, out: Path) -> list[str]:
    from kdtune.report import figures as report_plots
    configs = config_table(exp.trials)
    figures, skipped = report_plots.draw_all(exp, configs, headline(configs, TEACHER), out, "png")
    assert not skipped
    return [p.name for p in figures]


def test_joint_grid_figures(tmp_path):
    grid = [(t, a) for t in (2.0, 4.0, 8.0) for a in (0.3, 0.9)]
    sweep = settings(seeds=1, fixed={}, axes={"temperature": [2.0, 4.0, 8.0], "alpha": [0.3, 0.9]})
    exp = made_up_experiment(tmp_path, sweep, grid, ["finished"] * len(grid))
    names = draw(exp, tmp_path / "out")
    assert names == ["temperature_analysis.png", "alpha_analysis.png", "heatmap.png", "gain_analysis.png",
                     "learning_curves.png", "fidelity_calibration.png", "fidelity.png"]
    assert_images(tmp_path / "out", names)


def test_optuna_figures(tmp_path):
    points = [(1.5, 0.2), (3.0, 0.7), (6.0, 0.4), (12.0, 0.9), (4.5, 0.5)]
    sweep = settings(search="optuna", seeds=1, fixed={}, axes={},
                     distributions={"temperature": ("loguniform", 1.0, 20.0), "alpha": ("uniform", 0.0, 1.0)})
    outcomes = ["finished", "stopped early", "finished", "stopped early", "finished"]
    exp = made_up_experiment(tmp_path, sweep, points, outcomes)
    names = draw(exp, tmp_path / "out")
    assert names == ["temperature_analysis.png", "alpha_analysis.png", "optuna_trials.png", "gain_analysis.png",
                     "learning_curves.png", "fidelity_calibration.png", "fidelity.png"]
    assert_images(tmp_path / "out", names)


# ----------------------------------------------------------------------------- statistics and errors (no Ray)


def test_config_table_counts_every_outcome_but_averages_finished_seeds_only(tmp_path):
    sweep = settings(seeds=1)
    points, outcomes = [(2.0, 0.5), (2.0, 0.5), (4.0, 0.5)], ["finished", "stopped early", "errored"]
    exp = made_up_experiment(tmp_path, sweep, points, outcomes)
    configs = config_table(exp.trials).set_index("temperature")
    assert configs.loc[2.0, "trials"] == 2 and configs.loc[2.0, "seeds_finished"] == 1
    assert configs.loc[2.0, "stopped_early"] == 1 and configs.loc[4.0, "errored"] == 1
    assert configs.loc[2.0, "val_acc_mean"] == pytest.approx(trial_numbers(
        dict(temperature=2.0, alpha=0.5, seed=0, epochs=EPOCHS))["val_acc"])
    assert math.isnan(configs.loc[4.0, "val_acc_mean"])
    assert (configs.loc[2.0, "epochs_run_min"], configs.loc[2.0, "epochs_run_max"]) == (1, EPOCHS)


def one_line_error(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(load_script("report").main, argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return exit_info.value.code, err


def test_not_an_experiment_is_one_line(tmp_path, capsys):
    code, err = one_line_error([str(tmp_path)], capsys)
    assert code == 1 and "is not a kdtune experiment (no experiment.json)" in err
    (tmp_path / "experiment.json").write_text("{not json")
    code, err = one_line_error([str(tmp_path)], capsys)
    assert code == 1 and "is not valid JSON" in err


def test_experiment_without_a_finished_epoch_is_one_line(tmp_path, capsys):
    write_record(tmp_path / "exp", str(tmp_path / "exp"))
    code, err = one_line_error([str(tmp_path / "exp")], capsys)
    assert code == 1 and "no finished epoch in" in err and "no trial has finished one yet" in err


def test_bad_format_is_a_usage_error(tmp_path, capsys):
    code, err = one_line_error([str(tmp_path), "--format", "bmp"], capsys)
    assert code == 2 and "invalid choice: 'bmp'" in err


def test_a_foreign_teacher_is_said_in_the_first_lines(tmp_path):
    from kdtune.report.summary import summary_markdown

    sweep = settings(seeds=1)
    exp = made_up_experiment(tmp_path, sweep, [(4.0, 0.5)], ["finished"])
    exp.record["teacher"] = {**TEACHER, "foreign_data": {"recorded_splits": None, "run_splits": "abc"}}
    configs = config_table(exp.trials)
    lines = summary_markdown(exp, configs, headline(configs, TEACHER), [], []).splitlines()
    assert lines[0] == "# Report: synthetic"
    assert lines[2].startswith("**Warning: the teacher was not trained on this experiment's data splits** (its "
                               "splits: none recorded; this experiment's: abc; used with --allow-foreign-teacher)")
    del exp.record["teacher"]["foreign_data"]
    assert "Warning" not in summary_markdown(exp, configs, headline(configs, TEACHER), [], [])


# ----------------------------------------------------------------------------- wording that follows the intervals


def paired_experiment(tmp_path: Path, gains: dict, confirm_gains: list[float] | None = None) -> Experiment:
    """An Experiment in memory with 3 seeds: the baseline, one search configuration per T with the given per-seed
    gains (test accuracy, fractions), and optionally a confirmation of T = 4 on seeds 3-5."""
    def trial(phase, temperature, alpha, seed, test):
        return dict(phase=phase, trial_id=f"{phase}-{temperature}-{seed}", temperature=temperature, alpha=alpha,
                    seed=seed, status="TERMINATED", outcome="finished", epochs_run=EPOCHS, failures=0,
                    final_val_acc=round(test + 0.01, 3), final_test_acc=test, best_val_acc=test + 0.01, best_epoch=1,
                    test_acc_at_best_val=math.nan, final_agreement=0.6, final_val_ece=0.03, final_val_nll=1.0,
                    trial_number=seed)

    base = [0.45, 0.46, 0.44]
    rows = [trial("baseline", 1.0, 0.0, s, b) for s, b in enumerate(base)]
    for temperature, per_seed in gains.items():
        rows += [trial("sweep", temperature, ALPHA, s, b + g) for s, (b, g) in enumerate(zip(base, per_seed))]
    sweep = settings(seeds=3)
    record = {"settings": {**sweep.to_dict(), "confirm": 3 if confirm_gains else 0, "aug_seed": 7},
              "teacher": {**TEACHER, "path": "/teachers/resnet20-abc123/model.pt", "config": {"seed": 0}},
              "data": DATA, "storage": str(tmp_path / "gone")}
    if confirm_gains:
        rows += [trial("confirm", 1.0, 0.0, 3 + s, b) for s, b in enumerate(base)]
        rows += [trial("confirm", 4.0, ALPHA, 3 + s, b + g) for s, (b, g) in enumerate(zip(base, confirm_gains))]
    return Experiment(tmp_path, record, pd.DataFrame(rows), pd.DataFrame(columns=["phase", "trial_id", "epoch"]))


def markdown_of(exp: Experiment) -> str:
    from kdtune.report.summary import summary_markdown

    configs = config_table(exp.trials, exp.planned_seeds, exp.record["data"])
    return summary_markdown(exp, configs, headline(configs, exp.record["teacher"]), [], [])


def test_an_interval_with_zero_and_the_search_estimate_is_inconclusive(tmp_path):
    exp = paired_experiment(tmp_path, {4.0: [0.010, 0.012, 0.014]}, confirm_gains=[0.04, -0.03, -0.005])
    markdown = markdown_of(exp)
    assert "**Re-measured on 3 fresh seeds**" in markdown
    assert "inconclusive: its 95% interval contains both zero and the search's estimate (+1.20)" in markdown
    for claim in ("Confirmed", "confirmed", "no gain", "vanished", "significant", "larger than the seed-to-seed"):
        assert claim not in markdown, claim
    assert "optimistic (selected among 1)" in markdown and "**test" not in markdown


def test_fewer_than_5_pairs_make_no_claim_of_significance(tmp_path):
    """Three nearly equal gains: a t-test p far below 0.05 on 2 degrees of freedom, an exact sign-flip p of 0.25."""
    exp = paired_experiment(tmp_path, {4.0: [0.0130, 0.0131, 0.0132], 8.0: [0.001, -0.002, 0.003]})
    configs = config_table(exp.trials, exp.planned_seeds, exp.record["data"])
    row = configs[(configs["phase"] == "sweep") & (configs["temperature"] == 4.0)].iloc[0]
    assert row["p_holm"] < 0.001 and row["p_signflip"] == 0.25
    markdown = markdown_of(exp)
    assert "larger than the seed-to-seed spread" not in markdown and "significant" not in markdown
    assert "With fewer than 5 pairs (3 here), no statement of significance is made for any configuration" in markdown
    assert "its 95% interval lies above zero" in markdown  # the interval itself is still read
    assert "exact sign-flip p = 0.25" in markdown


def test_the_first_lines_name_the_teacher_and_the_augmentation_stream(tmp_path):
    lines = markdown_of(paired_experiment(tmp_path, {4.0: [0.01, 0.02, 0.0]})).splitlines()
    head = " ".join(lines[:4])
    assert "conditional on one teacher and one augmentation stream" in head
    assert "/teachers/resnet20-abc123/model.pt" in head and "aug_seed) 7" in head


def test_a_report_is_rebuilt_from_summary_csv_when_tunes_folders_are_gone(tmp_path):
    """A committed example: experiment.json and the per-trial summary.csv, no Tune folders."""
    exp = paired_experiment(tmp_path, {2.0: [0.0, 0.01, -0.01], 4.0: [0.01, 0.02, 0.015]},
                            confirm_gains=[0.02, 0.0, 0.01])
    root = tmp_path / "example"
    root.mkdir()
    (root / "experiment.json").write_text(json.dumps(exp.record))
    exp.trials.drop(columns="trial_number").to_csv(root / "summary.csv", index=False)
    before = (root / "summary.csv").read_text()
    report = write_report(root)
    markdown = report["markdown"]
    assert "Rebuilt from the experiment's summary.csv" in markdown
    assert "learning_curves.png: no per-epoch results (rebuilt from summary.csv)" in markdown
    names = [p.name for p in report["figures"]]
    assert "gain_analysis.png" in names and "learning_curves.png" not in names
    assert_images(root / "report", ["gain_analysis.png"])
    assert f"Figures: {', '.join(names)}" in markdown
    assert (root / "summary.csv").read_text() == before  # the source is not rewritten
    table = pd.read_csv(root / "report" / "summary.csv")
    assert {"mde", "p_signflip", "val_correct", "test_correct", "tied_best"} <= set(table.columns)
    chosen = table[table["tied_best"]]
    assert list(chosen["temperature"]) == [4.0] and chosen["val_correct"].iloc[0] == sum(
        round((b + g + 0.01) * DATA["val"]) for b, g in zip([0.45, 0.46, 0.44], [0.01, 0.02, 0.015]))
