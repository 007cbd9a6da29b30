"""Three moons (spec 4.1): data, the 54-parameter memory, generation, training, the command."""

import json
import math
import sys

import pytest
import torch

from memory_mosaics.cli import main
from memory_mosaics.data.moons import (
    LONGEST_COMBINED,
    STEPS_PER_UNIT,
    UNSEEN_PERIODS,
    MoonSystem,
    combined_period,
    sample_batch,
    spec_systems,
)
from memory_mosaics.experiments.moons import train as train_module
from memory_mosaics.experiments.moons.settings import Settings
from memory_mosaics.experiments.moons.train import clipped_loss, train
from memory_mosaics.layers import ContextualMemory
from memory_mosaics.models.moons import disentanglement, generate, moons_memory
from memory_mosaics.training.loop import TrainingDiverged
from memory_mosaics.training.mlx_adam import MLXAdam, mlx_param_groups
from memory_mosaics.training.optim import set_lr


def test_nine_spec_systems_validation_is_the_ninth():
    train_systems, validation = spec_systems()
    assert len(train_systems) == 8
    kept = [s.periods for s in train_systems + [validation]]
    assert len(set(kept)) == 9 and all(len(set(p)) == 3 for p in kept)  # distinct triples of distinct periods
    combined = [combined_period(p) for p in kept]
    assert combined == sorted(combined) and max(combined) == LONGEST_COMBINED == 6.0
    assert validation.periods == (1.0, 1.5, 2.0) and validation.combined_period == 6.0
    assert STEPS_PER_UNIT == pytest.approx(800 / 6 / 3)
    assert validation.periods_in_steps() == pytest.approx([44.44, 66.67, 88.89], abs=0.01)
    assert validation.combined_period_in_steps() == pytest.approx(266.67, abs=0.01)


def test_numpy_tie_break_keeps_the_same_periods_class():
    """The reference's np.argsort may keep other tied triples; the six untied ones never change."""
    stable = spec_systems()
    numpy_ = spec_systems(tie_break="numpy")
    kept = {s.periods for s in stable[0] + [stable[1]]}, {s.periods for s in numpy_[0] + [numpy_[1]]}
    untied = {p for p in kept[0] if combined_period(p) < LONGEST_COMBINED}
    assert len(untied) == 6 and untied <= kept[1]
    assert all(combined_period(p) == LONGEST_COMBINED for p in kept[1] - untied)
    assert numpy_[1].combined_period == LONGEST_COMBINED
    with pytest.raises(ValueError, match="tie_break"):
        spec_systems(tie_break="random")


def test_windows_targets_norms_and_rotation():
    system = spec_systems()[1]
    x, y = system.windows(3, 800, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (3, 800, 6)
    torch.testing.assert_close(y[:, :-1], x[:, 1:])  # target = next observation
    pairs = x.view(3, 800, 3, 2)
    torch.testing.assert_close(pairs.norm(dim=-1), torch.ones(3, 800, 3))
    # (re, im) = (sin, cos): one step is the complex multiplication by exp(-2 pi i / P)
    z = torch.view_as_complex(pairs.double().contiguous())
    rotation = torch.exp(-2j * math.pi / torch.tensor(system.periods_in_steps(), dtype=torch.float64))
    torch.testing.assert_close(z[:, 1:] / z[:, :-1], rotation.expand(3, 799, 3), atol=1e-5, rtol=0)
    x0 = system.observe(torch.tensor(0))
    torch.testing.assert_close(x0, torch.tensor([math.sin(0.3), math.cos(0.3)] * 3))


def test_training_batches_mix_systems():
    train_systems, _ = spec_systems()
    x, y = sample_batch(train_systems, 5, 50, torch.Generator().manual_seed(1))
    assert x.shape == y.shape == (5, 50, 6)
    torch.testing.assert_close(y[:, :-1], x[:, 1:])


def test_observer_on_a_moon_and_arbitrary_periods():
    sun, moon = MoonSystem((1.0, 2.0, 3.0)), MoonSystem((1.0, 2.0, 3.0), "moon")
    n = torch.arange(500)
    xs, xm = sun.observe(n), moon.observe(n)
    torch.testing.assert_close(xm[:, :2], xs[:, :2])  # moon 1 keeps its own position
    torch.testing.assert_close(xm.view(500, 3, 2).norm(dim=-1), torch.ones(500, 3))
    assert moon.apparent_periods == pytest.approx((1.0, 2.0, 1.5))  # synodic periods
    assert moon.combined_period == sun.combined_period == 6.0
    unseen = MoonSystem(UNSEEN_PERIODS)
    assert not set(UNSEEN_PERIODS) & {p for s in spec_systems()[0] for p in s.periods}
    assert unseen.combined_period == 11.25
    with pytest.raises(ValueError):
        MoonSystem((1.0, 2.0))


@pytest.mark.parametrize("n_head", [1, 3])
def test_model_has_54_parameters_from_contextual_memory(n_head):
    memory = moons_memory(n_head)
    assert isinstance(memory, ContextualMemory)
    assert sum(p.numel() for p in memory.parameters()) == 54
    assert memory.key.n_head == n_head


@pytest.mark.parametrize("n_head", [1, 3])
def test_step_with_true_observations_equals_teacher_forcing(n_head):
    memory = moons_memory(n_head).eval()
    x, _ = spec_systems()[1].windows(2, 120, torch.Generator().manual_seed(2))
    forced = memory(x)
    c = 70
    y, state = memory.prefill(x[:, :c])
    outs = [memory.step(x[:, t : t + 1], state) for t in range(c, x.shape[1])]
    torch.testing.assert_close(torch.cat([y] + outs, dim=1), forced, atol=1e-5, rtol=1e-4)
    gen = generate(memory, x[:, :c], 5)
    assert gen.shape == (2, 5, 6)
    torch.testing.assert_close(gen[:, 0], forced[:, c - 1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(gen[:, 1:2], memory(torch.cat([x[:, :c], gen[:, :1]], 1))[:, -1:], atol=1e-5, rtol=1e-4)


def _oracle(n_head, key_scale):
    """Hand-set memory: key a * z_m, value z_m (one step ahead), output identity (complex weights)."""
    memory = moons_memory(n_head).eval()
    with torch.no_grad():
        for layer, scale in ((memory.key.proj, key_scale), (memory.value.proj, 1.0), (memory.c_proj, 1.0)):
            layer.re.copy_(torch.eye(3) * scale)
            layer.im.zero_()
    return memory


def test_oracle_memories_show_the_papers_effect():
    """With the data layout right, one head per moon predicts after the longest period (88.9 steps on the
    validation system), one head for all moons only after the combined period (266.7 steps)."""
    x, _ = spec_systems()[1].windows(4, 800, torch.Generator().manual_seed(3))

    def error(memory, c):
        return (generate(memory, x[:, :c], 25) - x[:, c : c + 25]).abs().mean().item()

    three, one = _oracle(3, 4.0), _oracle(1, 2.0)
    assert disentanglement(three) == pytest.approx(1.0)
    assert error(three, 150) < 0.1 and error(one, 150) > 0.5
    assert error(one, 300) < 0.1


def test_training_is_deterministic_with_a_seed():
    settings = Settings(steps=3, batch_size=2)
    systems = spec_systems()[0]

    def trained(seed):
        torch.manual_seed(seed)
        memory = moons_memory(3)
        return train(memory, systems, settings, seed, desc="test"), memory.state_dict()

    (l1, s1), (l2, s2), (l3, _) = trained(5), trained(5), trained(6)
    assert l1 == l2 and l1 != l3
    for k in s1:
        assert torch.equal(s1[k], s2[k])


def _reference_complexify(raw):
    """The reference's complexify, transcribed step by step: 2x2 blocks [[p, q], [r, s]] of the raw
    weight become [[a, -b], [b, a]], a = (p + s) / 2, b = (r - q) / 2."""
    w = raw * 0.5
    w[0::2, 0::2] += w[1::2, 1::2]
    w[0::2, 1::2] -= w[1::2, 0::2]
    w[1::2, 0::2] = -w[0::2, 1::2]
    w[1::2, 1::2] = w[0::2, 0::2]
    return w


def _mlx_adamw_step(raw, grads, state, lr, betas, eps, weight_decay):
    """mlx.optimizers.AdamW.apply_single with bias_correction=False (MLX's default), on raw weights."""
    b1, b2 = betas
    for name, g in grads.items():
        w = raw[name] * (1 - lr * weight_decay)
        m = b1 * state[name][0] + (1 - b1) * g
        v = b2 * state[name][1] + (1 - b2) * g.square()
        state[name] = (m, v)
        raw[name] = (w - lr * m / (v.sqrt() + eps)).detach().requires_grad_()


LAYERS = ("key.proj", "value.proj", "c_proj")


@pytest.mark.parametrize("n_head, weight_decay", [(1, 0.0), (3, 0.0), (3, 0.3)])
def test_mlx_adam_is_mlx_adamw_on_the_reference_raw_weights(n_head, weight_decay):
    """MLXAdam on (re, im) = MLX's AdamW on the reference's raw 6x6 weights, over 5 steps (float64)."""
    torch.manual_seed(0)
    memory = moons_memory(n_head).double()
    betas, eps, lrs = (0.9, 0.999), 1e-8, [1e-2 - k * 2e-3 for k in range(5)]
    opt = MLXAdam(mlx_param_groups(memory), lr=lrs[0], betas=betas, eps=eps, weight_decay=weight_decay)
    naive = moons_memory(n_head).double()  # no halving of the gradients: eps 1e-8 per complex parameter
    naive.load_state_dict(memory.state_dict())
    naive_opt = MLXAdam(naive.parameters(), lr=lrs[0], betas=betas, eps=eps, weight_decay=weight_decay)
    # the reference's raw weights start in complex form (its ComplexLinear complexifies its init)
    raw = {n: memory.get_submodule(n).weight.detach().clone().requires_grad_() for n in LAYERS}
    state = {n: (torch.zeros(6, 6, dtype=torch.float64), torch.zeros(6, 6, dtype=torch.float64)) for n in LAYERS}
    gen = torch.Generator().manual_seed(1)
    for lr in lrs:
        x, y = sample_batch(spec_systems()[0], 3, 60, gen)
        x, y = x.double() + 0.1 * torch.randn(x.shape, generator=gen, dtype=torch.float64), y.double()
        for m, o in ((memory, opt), (naive, naive_opt)):
            set_lr(o, lr)
            o.zero_grad()
            clipped_loss(m(x), y, 0.5).backward()
            o.step()
        # reference: the loss through complexify(raw), MLX's rule on the raw gradients
        eff = {n: _reference_complexify(raw[n]) for n in LAYERS}
        params = {f"{n}.{part}": eff[n][i::2, 0::2] for n in LAYERS for part, i in (("re", 0), ("im", 1))}
        loss = clipped_loss(torch.func.functional_call(memory, params, (x,)), y, 0.5)
        grads = dict(zip(LAYERS, torch.autograd.grad(loss, [raw[n] for n in LAYERS])))
        _mlx_adamw_step(raw, grads, state, lr, betas, eps, weight_decay)
        for n in LAYERS:
            torch.testing.assert_close(_reference_complexify(raw[n]), raw[n], atol=1e-15, rtol=0)  # stays complex
            torch.testing.assert_close(memory.get_submodule(n).weight, raw[n].detach(), atol=1e-12, rtol=0)
    # the eps is seen: without the halving (eps 1e-8 per complex parameter) the weights differ
    gap = max((naive.get_submodule(n).weight - raw[n]).abs().max().item() for n in LAYERS)
    assert gap > 1e-10


def test_mlx_adam_groups_and_state_are_the_raw_weights():
    """Complex parameters get raw_scale 1/2: Adam state m/2, v/4 of the moments of the gradient."""
    memory = moons_memory(3).double()
    groups = mlx_param_groups(memory)
    assert len(groups) == 1 and groups[0]["raw_scale"] == 0.5 and len(groups[0]["params"]) == 6
    opt, plain = MLXAdam(groups, lr=0.0), MLXAdam([torch.nn.Parameter(torch.zeros(3, 3, dtype=torch.float64))], lr=0.0)
    g = torch.randn(3, 3, dtype=torch.float64)
    p, q = groups[0]["params"][0], plain.param_groups[0]["params"][0]
    for _ in range(3):
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        plain.step()
    assert torch.equal(opt.state[p]["m"] * 2, plain.state[q]["m"])
    assert torch.equal(opt.state[p]["v"] * 4, plain.state[q]["v"])


def test_disentanglement_score():
    memory = moons_memory(3)
    with torch.no_grad():
        perm = torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]])  # head h reads moon perm[h]
        for layer in (memory.key.proj, memory.value.proj):
            layer.re.copy_(perm * 2.0)
            layer.im.copy_(perm * 0.5)
    assert disentanglement(memory) == pytest.approx(1.0)
    with torch.no_grad():
        memory.key.proj.re.fill_(1.0)
        memory.value.proj.re.fill_(1.0)
        memory.key.proj.im.zero_()
        memory.value.proj.im.zero_()
    assert disentanglement(memory) == pytest.approx(1 / 3)


def test_quick_reproduce_writes_metrics_and_figures(tmp_path):
    assert main(["reproduce", "moons", "--quick", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    keys = ("before_periods", "between_periods", "after_combined")
    for name in ("1head", "3heads"):
        for split in ("train", "validation", "unseen"):
            assert set(metrics["summary"][name][split]) == {*keys, "disentanglement"}
    assert metrics["systems"]["validation"]["periods"] == [1.0, 1.5, 2.0]
    run = metrics["runs"][0]["models"]["3heads"]
    assert len(run["curves"]["train"]) == 8 and len(run["curves"]["validation"]) == len(metrics["contexts"])
    for png in ("error_vs_context", "error_vs_context_train", "drift", "trajectories", "attention", "weights"):
        assert (tmp_path / f"{png}.png").stat().st_size > 0
    assert (tmp_path / "seeds.md").read_text().startswith("Seeds [0]")


def test_parallel_jobs_give_the_same_results(tmp_path):
    """Each (seed, model) job seeds itself: 2 processes reproduce the sequential run exactly."""
    runs = {}
    for jobs in ("1", "2"):
        out = tmp_path / jobs
        assert main(["reproduce", "moons", "--quick", "--seeds", "0-1", "--jobs", jobs, "--out", str(out)]) == 0
        runs[jobs] = json.loads((out / "metrics.json").read_text())["runs"]
    assert runs["1"] == runs["2"]
    assert runs["1"][0]["models"]["3heads"]["weights"] != runs["1"][1]["models"]["3heads"]["weights"]


def test_seeds_are_a_list_heads_a_shorthand_and_replot_redraws(tmp_path, capsys):
    """``--seeds 3 5`` trains seeds 3 and 5 (a list, not a count); ``--heads 3`` = ``--models 3heads``;
    ``--replot`` rewrites the tables and figures from metrics.json; without matplotlib, one line."""
    assert (
        main(
            [
                "reproduce",
                "moons",
                "--quick",
                "--seeds",
                "3",
                "5",
                "--heads",
                "3",
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["settings"]["seeds"] == [3, 5] and [run["seed"] for run in metrics["runs"]] == [3, 5]
    assert list(metrics["runs"][0]["models"]) == ["3heads"] and metrics["claims"] is None
    seeds_md = (tmp_path / "seeds.md").read_text()
    for name in ("seeds.md", "seeds.json", "weights.png"):
        (tmp_path / name).unlink()
    assert main(["reproduce", "moons", "--replot", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "seeds.md").read_text() == seeds_md and (tmp_path / "weights.png").stat().st_size > 0
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
        assert main(["reproduce", "moons", "--replot", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip().startswith("matplotlib is not installed")
    assert main(["reproduce", "moons", "--replot", "--out", str(tmp_path / "none")]) == 2
    assert not (tmp_path / "none").exists()


def _nan_after(steps):
    """A clipped loss that turns NaN from training step ``steps`` on."""
    calls = []

    def loss(y_hat, y, clip):
        calls.append(1)
        value = clipped_loss(y_hat, y, clip)
        return value * math.nan if len(calls) > steps else value

    return loss


def test_divergence_raises_and_keeps_the_last_good_weights(monkeypatch):
    """A NaN loss raises TrainingDiverged (step counted from 1) before the optimiser moves."""
    torch.manual_seed(0)
    memory, before = moons_memory(3), []

    def loss(y_hat, y, clip):
        before.append({k: v.clone() for k, v in memory.state_dict().items()})  # weights before this step
        value = clipped_loss(y_hat, y, clip)
        return value * math.nan if len(before) == 3 else value

    monkeypatch.setattr(train_module, "clipped_loss", loss)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 3"):
        train(memory, spec_systems()[0], Settings(steps=5, batch_size=2), 0, desc="test", progress=False)
    assert len(before) == 3 and not torch.equal(before[2]["key.proj.re"], before[0]["key.proj.re"])
    for k, v in memory.state_dict().items():
        assert torch.equal(v, before[2][k])
    assert all(p.grad is None for p in memory.parameters())


def test_a_diverged_model_stops_the_experiment_with_one_line(tmp_path, monkeypatch, capsys):
    """The seed and the model in one line on stderr, exit status 1, no results written."""
    monkeypatch.setattr(train_module, "clipped_loss", _nan_after(3))
    code = main(
        [
            "reproduce",
            "moons",
            "--quick",
            "--seeds",
            "4",
            "--models",
            "1head",
            "--jobs",
            "1",
            "--no-progress",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mosaics: error: moons: seed 4, model 1head diverged: loss is nan at step 4"]
    assert not (tmp_path / "metrics.json").exists()
