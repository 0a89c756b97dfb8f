"""The teacher card: what a reader needs to judge the teacher every student was taught by.

The sweep writes `teacher_card.json` into the experiment folder once the teacher and its logit cache are ready
(`kdtune.engine.teacher.teacher_card`); the report renders it as `teacher_card.md` and `teacher_card.png`.
An experiment run before cards existed gets one rebuilt from its teacher store and logit cache when both are
still where the experiment recorded them; otherwise the card says what is missing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from kdtune.engine.atomic import atomic_write, save_json
from kdtune.engine.errors import first_line
from kdtune.report.experiment import Experiment
from kdtune.report.record import TEACHER_CARD

PROFILE = (("entropy_fraction", "entropy / log(classes)"), ("non_target_mass", "mass off the true class"),
           ("true_class_probability", "true-class probability"))


def load_card(exp: Experiment) -> tuple[dict | None, str | None]:
    """(the card, None), or (None, why there is none)."""
    path = exp.root / TEACHER_CARD
    if path.is_file():
        try:
            return json.loads(path.read_text()), None
        except (OSError, ValueError) as error:
            return None, f"{path} could not be read ({first_line(error)})"
    try:
        card = rebuild_card(exp.record)
    except Exception as error:  # a moved store, a deleted cache, a dataset no longer there: said, not raised
        return None, (f"the experiment has no {TEACHER_CARD} (run by kdtune 0.2 or older) and it could not be "
                      f"rebuilt from its teacher store ({first_line(error, 160)})")
    try:
        save_json(path, card)
    except OSError:
        pass  # a read-only experiment folder: the card is still written into the report
    return card, None


def rebuild_card(record: dict) -> dict:
    """The card of an experiment that has none, from the teacher checkpoint and logit cache it recorded."""
    from kdtune.engine.data import load_dataset, make_splits
    from kdtune.engine.teacher import Teacher, assemble, cache_entries, load_cached, teacher_card

    settings, teacher_meta = record["settings"], record["teacher"]
    path = Path(teacher_meta["path"])
    if not path.is_file():
        raise FileNotFoundError(f"no teacher checkpoint at {path}")
    dataset = load_dataset(settings["data_dir"], dataset=settings.get("dataset"), image_size=settings.get("image_size"))
    splits = make_splits(dataset, settings["val_size"], settings.get("train_subset"))
    teacher = Teacher(None, teacher_meta, path)
    epochs = int(settings["epochs"])
    files = cache_entries(teacher, splits, int(settings["aug_seed"]), epochs, record["cache_mode"])
    loaded = load_cached(files, splits)
    missing = [name for name in files if name not in loaded]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the logit cache's {len(files)} entries are missing in "
                                f"{files['val'].parent}")
    swept = [p["temperature"] for p in record.get("points", []) if isinstance(p.get("temperature"), (int, float))]
    return teacher_card(teacher, assemble(loaded, epochs, int(settings["aug_seed"]), splits), splits, swept)


def card_markdown(card: dict | None, why: str | None, record: dict) -> str:
    teacher = record.get("teacher") or {}
    lines = [f"# Teacher card: {record['settings'].get('teacher')}", ""]
    if card is None:
        lines += [f"No soft-target profile: {why}.", ""]
        if teacher:
            lines += [f"- Validation accuracy {100 * teacher['val_acc']:.2f}%, test {100 * teacher['test_acc']:.2f}%",
                      f"- Checkpoint {teacher.get('path')}"]
        return "\n".join(lines) + "\n"
    training = card.get("training") or {}
    parameters = f", {card['parameters']:,} parameters" if isinstance(card.get("parameters"), int) else ""
    lines += [
        "From the teacher's cached logits of the un-augmented validation and test images (stored in fp16: an image "
        "whose top two logits nearly tie may be counted otherwise than at training time).", "",
        "| split | accuracy | NLL | ECE |", "|---|---|---|---|",
        *[f"| {name} | {100 * card[f'{split}_acc']:.2f}% | {card[f'{split}_nll']:.3f} | {100 * card[f'{split}_ece']:.2f}% |"
          for split, name in (("val", "validation"), ("test", "test"))],
        "",
        f"- Model {card.get('model')}{parameters}; checkpoint `{card.get('path')}`, sha256 `{card.get('sha256')}`",
        f"- Trained: recipe {training.get('recipe')}, {training.get('epochs')} epoch{'s' * (training.get('epochs') != 1)}, "
        f"seed {training.get('seed')}, "
        f"augmentation stream {training.get('aug_seed')}, label smoothing {training.get('label_smoothing')}, "
        f"precision {training.get('precision')}" + (f", {card['train_seconds'] / 60:.1f} min"
                                                     if card.get("train_seconds") else ""),
        f"- Data splits {card.get('data_key')}; soft targets measured on the {card['views']['images']:,} training "
        f"images in each of the {card['views']['epochs']} epochs' augmented views (stream {card['views']['aug_seed']}) "
        f"that the students are taught on",
        "",
        "Softened targets softmax(teacher logits / T), mean over those views (entropy as a fraction of "
        f"log {card['classes']}: 0 is one-hot, 1 uniform); ◆ marks the temperatures this experiment swept.",
        "",
        "| T | entropy / log(classes) | mass off the true class | true-class probability |",
        "|---|---|---|---|",
    ]
    for row in card["profile"]:
        mark = " ◆" if row["swept"] else ""
        lines.append(f"| {row['temperature']:g}{mark} | {row['entropy_fraction']:.3f} | {row['non_target_mass']:.3f} | "
                     f"{row['true_class_probability']:.3f} |")
    uniform = 1 / card["classes"]
    near_one_hot = [r["temperature"] for r in card["profile"] if r["entropy_fraction"] < 0.1]
    near_uniform = [r["temperature"] for r in card["profile"] if r["true_class_probability"] < 1.5 * uniform]
    lines.append("")
    if near_one_hot:
        lines.append(f"- Up to T = {max(near_one_hot):g} the targets are close to one-hot (entropy under 10% of "
                     f"the maximum): little beyond the label to learn.")
    if near_uniform:
        lines.append(f"- From T = {min(near_uniform):g} the true class gets under 1.5x a uniform share "
                     f"({uniform:.2f}): the targets approach uniform.")
    return "\n".join(lines) + "\n"


def plot_card(card: dict, path: Path) -> Path:
    from kdtune.report.figures import DPI, RC, plt

    with plt.rc_context(RC):
        fig, ax = plt.subplots(figsize=(7.5, 4.4))
        temperatures = [r["temperature"] for r in card["profile"]]
        for k, (key, label) in enumerate(PROFILE):
            ax.plot(temperatures, [r[key] for r in card["profile"]], color=f"C{k}", label=label)
            swept = [r for r in card["profile"] if r["swept"]]
            ax.plot([r["temperature"] for r in swept], [r[key] for r in swept], "D", color=f"C{k}")
        ax.axhline(1 / card["classes"], color="gray", linestyle=":", linewidth=1, label="uniform share 1/classes")
        ax.set_xscale("log")
        ticks = [t for t in (1, 2, 5, 10, 20, 50, 100) if temperatures[0] <= t <= temperatures[-1]]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
        ax.set(xlabel="temperature T (log scale; ◆ swept)", ylabel="mean over the cached training views", ylim=(0, 1.02),
               title=f"Teacher {card.get('model')}: test {100 * card['test_acc']:.2f}%, its soft targets against T")
        ax.grid(alpha=0.3)
        ax.legend(loc="center right", frameon=False)
        fig.tight_layout()
        fig.savefig(path, dpi=DPI)
        plt.close(fig)
    return path


def write_card(exp: Experiment, out: Path, fmt: str) -> list[Path]:
    """teacher_card.md, and teacher_card.<fmt> where there is a profile to draw; the files written."""
    card, why = load_card(exp)
    markdown = card_markdown(card, why, exp.record)
    written = [atomic_write(out / "teacher_card.md", lambda tmp: Path(tmp).write_text(markdown))]
    if card is not None and card.get("profile") and all(math.isfinite(r["entropy_fraction"]) for r in card["profile"]):
        written.append(plot_card(card, out / f"teacher_card.{fmt}"))
    return written
