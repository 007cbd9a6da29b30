"""Sharded training (FSDP2 over 2 gloo processes on the CPU), sharded checkpoints and activation checkpointing.

The reference is always one plain process: FSDP must follow its loss curve and weights, and a sharded
checkpoint written by 2 processes must resume in 1 and in 2 processes to the same continuation.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import data, read_metrics, run_process_group, subprocess_env, train_args  # noqa: F401 (fixtures)

from memory_mosaics import cli, configs
from memory_mosaics.models import lookup
from memory_mosaics.training import sharding
from memory_mosaics.training.checkpoint import (
    SHARDED_DIR,
    checkpoint_problem,
    load_state,
    resolve_checkpoint,
    save_checkpoint,
    staging_folder,
    verify_checkpoint,
)
from memory_mosaics.training.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)

# 2 layers (so that there are several FSDP groups), accumulation 2 (FSDP's gradient sync skipped on
# the first micro-step), no dropout (the streams differ per process), clipping active (gradient norms
# 0.3-0.4 > 0.2: the norm of sharded gradients, reduced over the processes, scales them); a
# constant learning rate (lr = min_lr) so that a run of 3 steps is the first half of a run of 6
RUN = [
    "--n-layer",
    "2",
    "--grad-accum",
    "2",
    "--dropout",
    "0",
    "--grad-clip",
    "0.2",
    "--min-lr",
    "1e-2",
    "--warmup",
    "0",
    "--log-interval",
    "1",
    "--checkpoint-interval",
    "3",
    "--threads",
    "1",
]
TOL = 1e-5  # fp32; FSDP reduces gradients in another order than one process sums them


def torchrun(data, out, *extra):  # noqa: F811
    """``mosaics train`` in 2 gloo processes (one retry: torchrun's rendezvous can fail transiently; a
    new run starts again from nothing, a resumed one resumes again)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "memory_mosaics.cli", *train_args(data, out, *RUN, "--parallel", "fsdp", *extra)]
    fresh = not Path(out).exists()
    for _ in range(2):
        if fresh:
            shutil.rmtree(out, ignore_errors=True)
        done = run_process_group(cmd, timeout=300)
        if done.returncode == 0:
            return done
    raise AssertionError(done.stderr[-3000:])


def assert_same_weights(a_dir, b_dir, atol=TOL):
    a, b = load_file(Path(a_dir) / "model.safetensors"), load_file(Path(b_dir) / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def train_losses(run_dir):
    return {r["step"]: r["loss"] for r in read_metrics(run_dir)}  # the last row of each step


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):  # noqa: F811
    """One process, 6 steps (the reference); 2 FSDP processes with activation checkpointing, 3 steps
    (a sharded checkpoint)."""
    root = tmp_path_factory.mktemp("fsdp")
    common = ["--valid", data["valid"], "--eval-interval", "3", "--eval-windows", "16"]
    assert cli.main(train_args(data, root / "single", *RUN, *common, "--max-steps", "6")) == 0
    torchrun(data, root / "fsdp", *common, "--max-steps", "3", "--activation-checkpointing")
    return root


def test_fsdp_follows_one_process_and_writes_a_sharded_checkpoint(runs, data, tmp_path):  # noqa: F811
    single, fsdp = train_losses(runs / "single"), train_losses(runs / "fsdp")
    assert sorted(fsdp) == [1, 2, 3]
    assert max(abs(fsdp[s] - single[s]) for s in fsdp) < TOL, (fsdp, single)
    norms = [
        (a["grad_norm"], b["grad_norm"]) for a, b in zip(read_metrics(runs / "single"), read_metrics(runs / "fsdp"))
    ]
    assert len(norms) == 3 and all(a > 0.2 and abs(a - b) < TOL for a, b in norms), norms  # the global norm
    valid_single, valid_fsdp = read_metrics(runs / "single", "valid"), read_metrics(runs / "fsdp", "valid")
    assert [r["step"] for r in valid_fsdp] == [3]
    assert valid_fsdp[0]["loss"] == pytest.approx(valid_single[0]["loss"], abs=TOL)
    ckpt = resolve_checkpoint(runs / "fsdp")
    assert ckpt.name == "ckpt-00000003" and checkpoint_problem(ckpt) is None
    state = load_state(ckpt)
    assert state["sharded"] == SHARDED_DIR and "optimizer" not in state and state["world_size"] == 2
    shards = sorted(p.name for p in (ckpt / SHARDED_DIR).iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    listed = json.loads((ckpt / "checkpoint_manifest.json").read_text())["files"]
    assert {f"{SHARDED_DIR}/{name}" for name in shards} <= set(listed)
    assert not [p for p in (runs / "fsdp").iterdir() if p.name.startswith(".")]  # the staging folder is gone
    # the consolidated weights are the trained model: mosaics eval finds the loss the training measured
    args = ["--data", data["valid"], "--cache-dir", data["cache"], "--max-windows", "16", "--no-progress"]
    assert cli.main(["eval", "--checkpoint", str(runs / "fsdp"), *args, "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["loss"] == pytest.approx(valid_fsdp[0]["loss"], abs=TOL)


def test_a_damaged_shard_is_named(runs, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(resolve_checkpoint(runs / "fsdp"), ckpt)
    shard = ckpt / SHARDED_DIR / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:-1])
    assert f"{SHARDED_DIR}/__1_0.distcp has" in checkpoint_problem(ckpt)
    shard.unlink()
    assert "__1_0.distcp is missing" in checkpoint_problem(ckpt)


def test_a_staged_save_is_completed_and_renamed_and_a_repeated_one_dropped(tmp_path):
    """What every process wrote into the staging folder ends up in the checkpoint, listed in its
    manifest; saving a step that is already saved and linked leaves it as it is and drops the staging."""

    class Tokenizer:
        def save(self, folder):
            (Path(folder) / "tokenizer.json").write_text("{}")

    def save():
        staged = staging_folder(tmp_path, 4)
        (staged / SHARDED_DIR).mkdir(parents=True)
        (staged / SHARDED_DIR / ".metadata").write_bytes(b"index")
        state = {"step": 4, "sharded": SHARDED_DIR}
        return save_checkpoint(
            tmp_path, 4, tiny_model("gpt"), Tokenizer(), TrainConfig(train="x"), state, staged=staged
        )

    ckpt = save()
    manifest = json.loads((ckpt / "checkpoint_manifest.json").read_text())
    assert (ckpt / SHARDED_DIR / ".metadata").read_bytes() == b"index" and f"{SHARDED_DIR}/.metadata" in manifest[
        "files"
    ]
    assert verify_checkpoint(ckpt) is None and (tmp_path / "last").resolve() == ckpt
    assert save() == ckpt and not staging_folder(tmp_path, 4).exists()
    assert json.loads((ckpt / "checkpoint_manifest.json").read_text()) == manifest


def test_unknown_parallel_is_one_line_exit_2(data, tmp_path, capsys):  # noqa: F811
    assert cli.main(train_args(data, tmp_path / "out", "--parallel", "zero3")) == 2
    err = capsys.readouterr().err.strip()
    assert err == "mosaics: error: unknown parallel 'zero3' (--parallel); expected one of ddp, fsdp"


def resumed(runs, name, resume):
    """A copy of the 2-process run at step 3, resumed to step 6 by ``resume(run_dir)``; compared with
    the one-process run: the losses of steps 4 to 6 and the final weights."""
    run = runs / name
    shutil.copytree(runs / "fsdp", run, symlinks=True)
    resume(run)
    single, got = train_losses(runs / "single"), train_losses(run)
    assert sorted(got) == list(range(1, 7))
    assert max(abs(got[s] - single[s]) for s in (4, 5, 6)) < TOL, (got, single)
    assert_same_weights(runs / "single" / "last", run / "last")
    return run


def test_sharded_checkpoint_resumes_in_one_process(runs, data):  # noqa: F811
    def resume(run):
        assert cli.main(train_args(data, run, *RUN, "--parallel", "fsdp", "--max-steps", "6", "--resume")) == 0

    run = resumed(runs, "resumed1", resume)
    assert load_state(run / "last")["world_size"] == 1 and checkpoint_problem(run / "last") is None


@pytest.mark.slow
def test_sharded_checkpoint_resumes_in_two_processes(runs, data):  # noqa: F811
    run = resumed(runs, "resumed2", lambda run: torchrun(data, run, "--max-steps", "6", "--resume"))
    assert load_state(run / "last")["world_size"] == 2


@pytest.mark.slow
def test_unsharded_checkpoint_continues_sharded(runs, data):  # noqa: F811
    """A one-process checkpoint (its optimiser in state.pt, unsharded) continued by 2 FSDP processes."""

    def resume(run):
        shutil.rmtree(run)
        assert cli.main(train_args(data, run, *RUN, "--max-steps", "3")) == 0
        assert "optimizer" in load_state(run / "last")
        torchrun(data, run, "--max-steps", "6", "--resume")

    run = resumed(runs, "continued2", resume)
    assert load_state(run / "last")["sharded"] == SHARDED_DIR


@pytest.mark.slow
def test_fsdp_gpt_follows_one_process(data, tmp_path):  # noqa: F811
    """The GPT baseline sharded the same way (its tied embedding in the root group)."""
    args = ["--model", "gpt", "--max-steps", "3"]
    assert cli.main(train_args(data, tmp_path / "single", *RUN, *args)) == 0
    torchrun(data, tmp_path / "fsdp", *args)
    single, fsdp = train_losses(tmp_path / "single"), train_losses(tmp_path / "fsdp")
    assert sorted(fsdp) == [1, 2, 3] and max(abs(fsdp[s] - single[s]) for s in fsdp) < TOL, (fsdp, single)
    assert_same_weights(tmp_path / "single" / "last", tmp_path / "fsdp" / "last")


# ---------------------------------------------------------------------- activation checkpointing
def tiny_model(kind: str, seed: int = 0):
    config_class, model_class = lookup(kind)
    sizes = dict(vocab_size=64, n_layer=3, n_head=2, n_embd=32, dropout=0.1)
    torch.manual_seed(seed)
    return model_class(config_class(**sizes, **({"block_size": 64} if kind == "gpt" else {"attn_dropout": 0.1})))


def saved_bytes(model, x, y) -> tuple[int, dict[str, torch.Tensor]]:
    """Bytes of the distinct storages the forward saves for backward (seen by saved-tensor hooks),
    and the gradients after backward."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    torch.manual_seed(1)  # the same dropout masks in both runs
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x, y)[1]
    loss.backward()
    return sum(storages.values()), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["mosaic", "gpt"])
def test_activation_checkpointing_same_gradients_fewer_saved_activations(kind):
    """Each block checkpointed (dropout on: the recomputation replays the RNG): the gradients equal
    the plain run's, and what the forward saves drops to below a third even when the block inputs
    the checkpoints keep (n_layer x B x T x d floats, not seen by the hooks) are added to it."""
    x = torch.randint(0, 64, (2, 64))
    y = torch.roll(x, -1, 1)
    plain, checkpointed = tiny_model(kind), tiny_model(kind)
    sharding.checkpoint_activations(checkpointed)
    plain_bytes, plain_grads = saved_bytes(plain, x, y)
    ckpt_bytes, ckpt_grads = saved_bytes(checkpointed, x, y)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=0, atol=0, msg=name)
    assert plain.state_dict().keys() == checkpointed.state_dict().keys()  # names unchanged
    block_inputs = 3 * x.numel() * 32 * 4
    assert ckpt_bytes + block_inputs < plain_bytes / 3, (ckpt_bytes, block_inputs, plain_bytes)


def test_1b_preset_has_the_parameters_its_comment_states():
    cfg = TrainConfig.from_file("mosaic-1b")
    assert (cfg.parallel, cfg.activation_checkpointing, cfg.n_embd, cfg.n_layer) == ("fsdp", True, 2048, 18)
    with torch.device("meta"):  # no memory: shapes only
        model = lookup(cfg.model)[1](cfg.model_config(50257))
    assert model.num_params() == 1_009_070_048
    text = (Path(configs.__file__).parent / "mosaic-1b.toml").read_text()
    assert "= 1,009,070,048" in text
