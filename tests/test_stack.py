"""Stacked packs on the CPU: a stacked pack matches the loop pack to float rounding, member by member (losses,
BatchNorm statistics, predictions), its optimiser treats members independently, its checkpoints resume either
trainer, and packs that cannot stack are refused with their reason.

Tolerances: vmap runs the members' convolutions as one grouped convolution, whose backward sums in another
order than the loop's kernels, so gradients differ at float32 rounding from the first step, and Adam's
normalised steps carry that on (a near-zero gradient's sign decides a full lr-sized step).  With Adam at lr
1e-3 over 9 steps the loop and the stack were measured to differ by up to 2e-6 relative in losses, 4e-5 in BN
statistics and 6e-5 in validation logits (of magnitude ~1); the tests allow 1e-4 relative for losses, 1e-3
for BN statistics and logits: 20-50x the drift, and ~100x below how far members with other seeds, T or
alpha are apart (the tests check that too)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import synthetic_splits

from kdtune.engine.config import RunConfig
from kdtune.engine.errors import UserError
from kdtune.engine.losses import kd_loss_terms
from kdtune.engine.models import create_model
from kdtune.engine.pack import train_pack
from kdtune.engine.stack import Stack, can_stack, choose_pack_mode, member_optimizer_state, stacked_kd_loss_terms, train_stacked
from kdtune.engine.train import LiveTeacher, build_optimizer, lr_factor, predict, train

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # only named: choose_pack_mode decides from the device type, nothing runs there
LOSSES = ("train_loss", "train_ce", "train_kd")
REL, LOGITS_ATOL, BN_TOL = 1e-4, 1e-3, 1e-3
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def splits():
    return synthetic_splits(n_train=96, n_val=48, n_test=48)


@pytest.fixture(scope="module")
def teacher(splits):
    torch.manual_seed(99)
    return LiveTeacher(create_model("tinycnn"), splits, CPU, "fp32")


def members(specs=((0, 2.0, 0.3), (1, 4.0, 0.7), (2, 7.5, 0.0)), **overrides) -> list[RunConfig]:
    """(seed, T, alpha) per member; tinycnn has no dropout, so a stacked member can match its loop run."""
    values = {"model": "tinycnn", "epochs": 3, "batch_size": 32, "recipe": "seed", **overrides}
    return [RunConfig(**values, seed=s, temperature=t, alpha=a) for s, t, a in specs]


@pytest.fixture(scope="module")
def loop_and_stack(splits, teacher):
    configs = members()
    return configs, train_pack(configs, splits, CPU, teacher=teacher), train_stacked(configs, splits, CPU, teacher)


def test_a_stacked_pack_matches_the_loop_pack_member_by_member(loop_and_stack, splits):
    configs, loop, stacked = loop_and_stack
    assert len(stacked) == len(loop) == 3
    for member_loop, member_stack in zip(loop, stacked):
        assert [h["epoch"] for h in member_stack.history] == [1, 2, 3]
        for a, b in zip(member_loop.history, member_stack.history):
            assert set(a) == set(b)
            for key in (*LOSSES, "val_nll", "lr"):
                assert b[key] == pytest.approx(a[key], rel=REL, abs=1e-7), key
            assert b["val_acc"] == a["val_acc"]
        logits_loop = predict(member_loop.model, splits.val_images, splits, CPU, "fp32")
        logits_stack = predict(member_stack.model, splits.val_images, splits, CPU, "fp32")
        torch.testing.assert_close(logits_stack, logits_loop, rtol=REL, atol=LOGITS_ATOL)
    # alpha 0 learns nothing from the teacher, but is measured against it as every member is
    assert "agreement" in stacked[2].final and "test_inherited_errors" in stacked[2].final
    for key in ("agreement", "test_agreement", "test_kl", "test_inherited_errors"):
        for member_loop, member_stack in zip(loop, stacked):
            assert member_stack.final[key] == pytest.approx(member_loop.final[key], rel=REL, abs=1e-6), key
    assert stacked[2].final["train_kd"] == 0.0 and "test_acc" in stacked[0].final
    # The members really differ (seed, T, alpha), by far more than the tolerance.
    finals = [m.final["train_loss"] for m in stacked]
    assert min(abs(x - y) for i, x in enumerate(finals) for y in finals[i + 1:]) > 1e-2


def test_batchnorm_statistics_are_per_member_and_the_loops(loop_and_stack):
    _, loop, stacked = loop_and_stack
    for member_loop, member_stack in zip(loop, stacked):
        a, b = member_loop.model.state_dict(), member_stack.model.state_dict()
        running = [name for name in a if "running" in name]
        assert len(running) == 6  # mean and variance of tinycnn's three BatchNorms
        for name in running:
            torch.testing.assert_close(b[name], a[name], rtol=BN_TOL, atol=BN_TOL)
        assert b["features.1.num_batches_tracked"].item() == 9  # 3 epochs of 3 batches
    for name in running:
        first, second, third = (m.model.state_dict()[name] for m in stacked)
        assert min((first - second).abs().max(), (first - third).abs().max(), (second - third).abs().max()) > 5e-2


def test_the_loss_is_kd_loss_terms_per_member():
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 16, 10, generator=g) * 3, torch.randn(3, 16, 10, generator=g) * 3
    targets = torch.randint(0, 10, (3, 16), generator=g)
    temperatures, alphas = [1.0, 4.0, 9.5], [0.9, 0.25, 0.0]
    total, ce, kd = stacked_kd_loss_terms(student, teacher, targets, torch.tensor(temperatures),
                                          torch.tensor(alphas), label_smoothing=0.1)
    for i, (t, a) in enumerate(zip(temperatures, alphas)):
        expected = kd_loss_terms(student[i], teacher[i] if a > 0 else None, targets[i], t, a, 0.1)
        torch.testing.assert_close(torch.stack([total[i], ce[i], kd[i]]), torch.stack(expected), rtol=1e-6, atol=1e-6)
    assert kd[2] == 0 and kd[0] != kd[1]


@pytest.mark.parametrize("recipe", ["seed", "strong"])
def test_one_optimiser_on_stacked_tensors_equals_one_per_member(recipe):
    """Adam (seed) and SGD with Nesterov momentum (strong), both with weight decay, under the recipe's schedule."""
    configs = members(recipe=recipe)
    stack = Stack(configs, 10, CPU)
    stacked_opt = build_optimizer(stack, configs[0])
    alone = [create_model("tinycnn") for _ in configs]
    for i, model in enumerate(alone):  # the same initial weights as the stack's members
        model.load_state_dict(stack.member_state_dict(i))
    alone_opts = [build_optimizer(m, c) for m, c in zip(alone, configs)]
    schedule = lambda s: lr_factor(s, 3, configs[0])  # noqa: E731
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, schedule) for o in (stacked_opt, *alone_opts)]
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        for name, stacked in stack.params.items():
            stacked.grad = torch.randn(stacked.shape, generator=g)
            for i, model in enumerate(alone):
                model.get_parameter(name).grad = stacked.grad[i].clone()
        for optimizer in (stacked_opt, *alone_opts):
            optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
    for i, model in enumerate(alone):
        for name, p in model.named_parameters():
            torch.testing.assert_close(stack.params[name][i], p.detach(), rtol=1e-6, atol=1e-7)
        # A member's slice of the optimiser state is the state of its own optimiser.
        own, sliced = alone_opts[i].state_dict(), member_optimizer_state(stacked_opt.state_dict(), i)
        for index, entry in own["state"].items():
            for key, value in entry.items():
                torch.testing.assert_close(sliced["state"][index][key], value, rtol=1e-6, atol=1e-7)
    assert not torch.equal(stack.params["head.1.weight"][0], stack.params["head.1.weight"][1])


def test_dropout_masks_differ_per_member():
    """Two identical cnn3 members (same seed, data order, T, alpha) part only through their dropout masks."""
    data = synthetic_splits(n_train=64, n_val=16, n_test=16, seed=1)
    twins = members(specs=((4, 4.0, 0.0), (4, 4.0, 0.0)), model="cnn3", epochs=1)
    a, b = train_stacked(twins, data, CPU)
    assert a.final["train_loss"] != b.final["train_loss"]
    same = train_stacked(members(specs=((4, 4.0, 0.0), (4, 4.0, 0.0)), epochs=1), data, CPU)  # tinycnn: no dropout
    assert same[0].final["train_loss"] == same[1].final["train_loss"]


def test_stacked_and_loop_checkpoints_resume_either_trainer(splits, teacher):
    configs = members(specs=((0, 2.0, 0.3), (1, 4.0, 0.7)), epochs=2)
    saved = []
    full = train_pack(configs, splits, CPU, teacher=teacher, mode="stack",
                      on_epoch=lambda metrics, states: saved.append(states))
    assert len(saved) == 2 and set(saved[0][0]) >= {"model", "optimizer", "scheduler", "rng", "history", "config"}
    resumed = train_stacked(configs, splits, CPU, teacher, resume=saved[0])
    for f, r in zip(full, resumed):
        assert [h[k] for h in r.history for k in LOSSES] == [h[k] for h in f.history for k in LOSSES]
    # The loop trainer takes a stacked member's state as its own and carries on the same way.
    alone = train(configs[1], splits, CPU, teacher=teacher, resume=saved[0][1])
    assert len(alone.history) == 2
    assert alone.final["train_loss"] == pytest.approx(full[1].final["train_loss"], rel=REL)
    torch.testing.assert_close(alone.model.state_dict()["features.5.running_var"],
                               full[1].model.state_dict()["features.5.running_var"], rtol=BN_TOL, atol=BN_TOL)
    # And a stacked pack takes a loop pack's states.
    loop_saved = []
    loop = train_pack(configs, splits, CPU, teacher=teacher, on_epoch=lambda metrics, states: loop_saved.append(states))
    from_loop = train_stacked(configs, splits, CPU, teacher, resume=loop_saved[0])
    for a, b in zip(loop, from_loop):
        assert b.history[0] == a.history[0] and len(b.history) == 2
        assert b.final["train_loss"] == pytest.approx(a.final["train_loss"], rel=REL)


def test_a_stack_refuses_what_it_cannot_train(splits):
    mixed = [RunConfig(model="tinycnn", epochs=1), RunConfig(model="cnn3", epochs=1, seed=1)]
    reason = can_stack(mixed)
    assert reason is not None and "model" in reason and "tinycnn" in reason and "cnn3" in reason
    assert "method 'ctkd'" in can_stack([RunConfig(model="tinycnn", epochs=1, method="ctkd", alpha=0.5)])
    other_recipe = [RunConfig(model="tinycnn", epochs=1), RunConfig(model="tinycnn", epochs=1, recipe="strong")]
    assert "members differ in recipe ('seed' vs 'strong')" in can_stack(other_recipe)
    # batch size and lr compare as they take effect: None is the recipe's own
    assert can_stack([RunConfig(model="tinycnn", epochs=1), RunConfig(model="tinycnn", epochs=1, batch_size=128,
                                                                      lr=1e-3, seed=3, temperature=9.0)]) is None
    with pytest.raises(UserError, match="cannot stack this pack: members differ in model"):
        train_pack(mixed, splits, CPU, mode="stack")


def test_choose_pack_mode():
    stackable, mixed = members(), [RunConfig(model="tinycnn", epochs=1), RunConfig(model="cnn3", epochs=1)]
    assert choose_pack_mode("auto", stackable, CPU) == "loop"  # stacking was 3-6x slower on the CPU
    # No GPU measurement has shown stacking faster there yet: auto does not stack on CUDA either.
    assert choose_pack_mode("auto", stackable, CUDA) == "loop"
    assert choose_pack_mode("auto", mixed, CUDA) == "loop"
    assert choose_pack_mode("stack", stackable, CUDA) == "stack" == choose_pack_mode("stack", stackable, CPU)
    assert choose_pack_mode("stack", stackable, CPU) == "stack"
    assert choose_pack_mode("loop", stackable, CUDA) == "loop"
    with pytest.raises(UserError, match="^cannot stack this pack: members differ in model"):
        choose_pack_mode("stack", mixed, CUDA)
    with pytest.raises(UserError, match="invalid pack mode 'fused'"):
        choose_pack_mode("fused", stackable, CPU)


def test_the_benchmark_and_the_training_modules_never_import_ray_or_optuna():
    root = Path(__file__).resolve().parents[1]
    code = ("import sys; import benchmarks.population, kdtune.engine.stack, kdtune.engine.pack, kdtune.engine.train, "
            "kdtune.engine.data, kdtune.engine.teacher; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'optuna'}); print(bad); sys.exit(1 if bad else 0)")
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
