"""Fault injection (issue 9, item 6): the probes of the hostile-input campaign as parametrised tests
(exit status 2 and one line ``mosaics: error: ...``), random SIGKILLs of a tiny training resumed
bit-identically with no checkpoint ever unreadable, a full disk during checkpoint and token-cache
writes, and two trainings started at once into one ``--out``.

Trainings that must be killed run in child processes forked from a ``forkserver`` that has already
imported the package, so a child starts in a fraction of a second."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import pkgutil
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import tiny_train_config
from safetensors.torch import load_file

from memory_mosaics import cli
from memory_mosaics.data import regbench as rb
from memory_mosaics.training import checkpoint as ckpt_mod
from memory_mosaics.training.checkpoint import checkpoint_problem, load_state
from memory_mosaics.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def run_dir(corpus, tmp_path_factory):
    """A finished 10-step run of the tiny config (mosaic): ckpt-00000010 with its manifest."""
    out = tmp_path_factory.mktemp("run") / "run"
    trainer = Trainer(tiny_train_config(corpus / "c.txt", cache_dir=str(corpus / "cache")), out, log=lambda m: None)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return out


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mosaics: error: ") and "Traceback" not in err, err
    return lines[0]


def cli_fails(capsys, argv, *words, status=2) -> str:
    """Run ``mosaics ARGV`` in-process; assert ``status`` and one error line holding ``words``."""
    capsys.readouterr()
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    assert code == status
    line = one_error_line(capsys.readouterr().err)
    assert all(w in line for w in words), line
    return line


# ---------------------------------------------------------------------- probes: bad input, one line, exit 2
def _tiny_train_args(corpus, out):
    return [
        "train", "--data", corpus / "c.txt", "--separator", "blank", "--tokenizer", "bpe:300",
        "--cache-dir", corpus / "cache", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--context", "16",
        "--batch-size", "2", "--no-progress", "--no-tensorboard", "--out", out,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "argv, words",
    [
        (["reproduce", "regbench", "--quick", "--num-train", str(10**9)], ["--num-train values must be in"]),
        (["reproduce", "regbench", "--quick", "--epochs", str(10**9)], ["--epochs must be in"]),
        (["reproduce", "regbench", "--quick", "--data-seed", "-1"], ["--data-seed must be in"]),
        (["reproduce", "regbench", "--quick", "--grid-spec", "lr=nan"], ["--grid-spec lr values must be finite"]),
        (["reproduce", "regbench", "--quick", "--grid-spec", "lr=0"], ["--grid-spec lr"]),
        (["reproduce", "regbench", "--quick", "--grid-spec", "n_embd=0"], ["--grid-spec n_embd"]),
        (["reproduce", "regbench", "--quick", "--grid-spec", "dropout=1.5"], ["--grid-spec dropout"]),
        (["reproduce", "regbench", "--quick", "--preset", "paper"], ["--quick is a preset of its own"]),
        (["reproduce", "regbench", "--quick", "--seeds", str(2**64)], ["--seeds", "seeds must be in"]),
        (["reproduce", "moons", "--quick", "--seeds", "0-99999999"], ["at most 10000 seeds"]),
        (["reproduce", "language", "--quick", "--depths", "0"], ["--depths and --v2-depths must be >= 1"]),
        (["reproduce", "language", "--quick", "--eval-windows", "-1"], ["--eval-windows"]),
        (["reproduce", "language", "--quick", "--max-steps", "0"], ["--max-steps must be >= 1"]),
        (["reproduce", "language", "--quick", "--jobs", "0"], ["--jobs must be >= 1"]),
        (["train", "--lr", "abc"], ["train: argument --lr", "see mosaics train --help"]),
        (["no-such-command"], ["invalid choice"]),
    ],
)
def test_reproduce_and_usage_probes(tmp_path, capsys, argv, words):
    """Options are checked before any work: --quick never overrides an explicit option."""
    cli_fails(capsys, [*argv, *(["--out", tmp_path / "out"] if argv[0] == "reproduce" else [])], *words)


@pytest.mark.parametrize(
    "results, words",
    [
        ("{", "is not valid JSON"),
        ("[1, 2]", "is not a RegBench results file"),
        ('{"settings": {}, "runs": [{"seed": 0}]}', "run 0 has no valid model, num_train"),
        (
            '{"settings": {}, "runs": [{"model": "mosaic", "num_train": "16", "seed": 0, "hparams": {}, "epochs": 2}]}',
            "run 0 has no valid num_train",
        ),  # fmt: skip
        ('{"settings": {}, "runs": [7]}', "run 0 has no valid the record itself"),
    ],
)
def test_regbench_resume_names_a_malformed_results_file(tmp_path, capsys, results, words):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(results)
    argv = ["reproduce", "regbench", "--quick", "--resume", "--out", out]
    cli_fails(capsys, argv, str(out / "results.json"), words, "run without --resume")


def test_shared_paths_stay_inside_the_shared_folder(tmp_path, capsys, monkeypatch):
    shared = tmp_path / "shared"
    (shared / "sub").mkdir(parents=True)
    (shared / "link").symlink_to("/etc")
    monkeypatch.setenv("MOSAICS_SHARED_DATA", str(shared))
    for source in ("shared:../..", "shared:/etc/passwd", "shared:sub/../../x", "shared:link/passwd"):
        cli_fails(capsys, ["train", "--data", source, "--out", tmp_path / "o"], "leaves the shared data folder")


@pytest.mark.parametrize("ranks_path", ["/etc/passwd", "../../etc/passwd", "sub/gpt2.tiktoken", "..", 7])
def test_a_tokenizer_never_reads_outside_its_folder(tmp_path, ranks_path):
    from memory_mosaics.data.tokenizers import GPT2_FORMAT, load_tokenizer

    spec = {"format": GPT2_FORMAT, "ranks_path": ranks_path, "ranks_sha256": "0" * 64}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="must be the name of a file beside it"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(
    "ranks, words",
    [(b"", "holds no ranks"), (b"IQ== 0\nnot-a-line\n", "line 2: not a tiktoken ranks line"), (b"@@@ 1\n", "line 1")],
)
def test_a_bad_ranks_file_is_named_with_its_line(tmp_path, capsys, ranks, words):
    pytest.importorskip("tiktoken")
    ranks_file = tmp_path / "ranks.tiktoken"
    ranks_file.write_bytes(ranks)
    argv = ["train", "--data", tmp_path, "--tokenizer", f"gpt2:{ranks_file}", "--out", tmp_path / "o"]
    cli_fails(capsys, argv, str(ranks_file), words)


def test_a_corpus_of_nul_bytes_is_refused(tmp_path, capsys):
    (tmp_path / "nul.txt").write_bytes(b"\0" * 5000)
    argv = ["train", "--data", tmp_path / "nul.txt", "--tokenizer", "bpe:300", "--out", tmp_path / "o"]
    cli_fails(capsys, argv, str(tmp_path / "nul.txt"), "holds NUL bytes (byte offset 0)")


# ---------------------------------------------------------------------- checkpoints that explain themselves
def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json", "state.pt"])
@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_eval_and_generate_name_the_damaged_file(run_dir, tmp_path, capsys, name, damage):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(run_dir / "last", ckpt)
    path = ckpt / name
    if damage == "flipped":
        _flip_a_byte(path)
    else:
        path.write_bytes(path.read_bytes()[:10])
    for command in (["generate", "--prompt", "the cat"], ["eval", "--data", "x", "--out", tmp_path / "r.json"]):
        cli_fails(capsys, [*command, "--checkpoint", ckpt], str(path), "the checkpoint is damaged")


def test_the_checkpoint_manifest_records_every_file(run_dir):
    ckpt = (run_dir / "last").resolve()
    manifest = json.loads((ckpt / ckpt_mod.CHECKPOINT_MANIFEST).read_text())
    files = {p.name for p in ckpt.iterdir() if p.name != ckpt_mod.CHECKPOINT_MANIFEST}
    assert set(manifest["files"]) == files and manifest["model_type"] == "mosaic" and manifest["step"] == 10
    assert manifest["config_sha256"] == manifest["files"]["config.json"]["sha256"]
    assert all(e["size"] == (ckpt / n).stat().st_size for n, e in manifest["files"].items())
    assert ckpt_mod.verify_checkpoint(ckpt) is None and checkpoint_problem(ckpt) is None


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--model", "gpt"], ["holds a 'mosaic' model where a 'gpt' one was expected"]),
        (["--n-embd", "32"], ["tensor", "has shape [", "16]", "32]"]),
        (["--vocab-multiple", "1"], ["has shape [320, 16], this model expects [294, 16]"]),
    ],
)
def test_resume_with_another_model_names_the_checkpoint_and_the_mismatch(
    run_dir, corpus, tmp_path, capsys, extra, words
):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out, symlinks=True)
    before = sorted(p.name for p in out.iterdir())
    argv = [*_tiny_train_args(corpus, out), "--max-steps", "12", "--resume", *extra]
    cli_fails(capsys, argv, "ckpt-00000010", *words)
    assert sorted(p.name for p in out.iterdir()) == before and checkpoint_problem(out / "last") is None


def test_a_wrong_typed_state_falls_back_to_an_older_checkpoint(run_dir, corpus, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out, symlinks=True)
    older = tmp_path / "older"
    trainer = Trainer(tiny_train_config(corpus / "c.txt", cache_dir=str(corpus / "cache"), max_steps=5), older)
    trainer.fit()
    trainer.close()
    shutil.copytree(older / "ckpt-00000005", out / "ckpt-00000005")
    torch.save({"step": "ten"}, out / "ckpt-00000010" / "state.pt")
    ckpt_mod.write_checkpoint_manifest(out / "ckpt-00000010", 10, "mosaic")  # files consistent, content wrong
    assert "holds no valid 'step'" in checkpoint_problem(out / "ckpt-00000010")
    logs = []
    trainer = Trainer(
        tiny_train_config(corpus / "c.txt", cache_dir=str(corpus / "cache"), max_steps=7), out, True, logs.append
    )
    trainer.fit()
    trainer.close()
    assert any("fell back to the newest intact checkpoint" in m and "ckpt-00000005" in m for m in logs), logs
    assert load_state(out / "last")["step"] == 7


# ---------------------------------------------------------------------- the RegBench JSONL reader
def _record(**changes):
    env = rb.make_splits(1, seed=0, num_test=1, num_val=0)["test"][0].to_json()
    for key, value in changes.items():
        if key.startswith("automaton."):
            env["automaton"][key.split(".")[1]] = value
        else:
            env[key] = value
    return json.dumps(env)


@pytest.mark.parametrize(
    "line, words",
    [
        ("{", "line 2"),
        ("[1]", "a record must be a JSON object"),
        (_record(split="dev"), "split must be one of"),
        (_record(tokens=[1, -1, 2]), "tokens must be letter ids"),
        (_record(tokens=[1, 20]), "tokens must be letter ids"),
        (_record(tokens=[1]), "tokens must be a list of 2"),
        (_record(**{"automaton.num_states": 10**9}), "num_states must be an integer in [1, 12]"),
        (_record(**{"automaton.num_states": -1}), "num_states"),
        (_record(**{"automaton.start": 99}), "start must be a state"),
        (_record(**{"automaton.transitions": [[0, -1, 0]]}), "out of range"),
        (_record(**{"automaton.transitions": [[0, 1, 57]]}), "out of range"),
        (_record(**{"automaton.transitions": [[0, 1, 0], [0, 1, 0]]}), "defined twice"),
        (_record(**{"automaton.transitions": [["a", 1, 0]]}), "[state, letter, state] integers"),
        (_record(**{"automaton.transitions": []}), "is not accepted by the record's automaton"),
    ],
)
def test_the_regbench_reader_names_the_file_and_line(tmp_path, line, words):
    path = tmp_path / "envs.jsonl"
    path.write_text(_record() + "\n" + line + "\n")
    with pytest.raises(ValueError) as err:
        rb.read_jsonl(path)
    message = str(err.value)
    assert f"{path}, line 2" in message and words in message and "\n" not in message, message


def test_the_regbench_reader_reads_what_it_wrote(tmp_path):
    splits = rb.make_splits(3, seed=1, num_test=2, num_val=2)
    rb.write_jsonl(tmp_path / "e.jsonl", splits)
    back = rb.read_jsonl(tmp_path / "e.jsonl")
    assert {k: [e.to_json() for e in v] for k, v in back.items()} == {
        k: [e.to_json() for e in v] for k, v in splits.items()
    }


def test_the_regbench_reader_refuses_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_bytes(_record().encode() + b"\n\xff\xfe\n")
    with pytest.raises(ValueError, match="line 2: not UTF-8"):
        rb.read_jsonl(path)


# ---------------------------------------------------------------------- long inputs
def test_a_prompt_over_the_limit_or_the_memory_is_refused_with_the_estimate(run_dir, tmp_path, capsys, monkeypatch):
    argv = ["generate", "--checkpoint", run_dir, "--prompt", "the cat sat " * 50, "--max-new-tokens", "2"]
    cli_fails(capsys, [*argv, "--max-prompt-tokens", "20"], "more than --max-prompt-tokens 20")
    monkeypatch.setattr("memory_mosaics.training.config.memory_bytes", lambda: 1 << 16)  # a 64 KiB machine
    cli_fails(capsys, argv, "needs ~", "GiB of activations", "the machine has 0.0 GiB")
    argv = ["eval", "--checkpoint", run_dir, "--data", "x", "--out", tmp_path / "r.json", "--context", "100000"]
    cli_fails(capsys, argv, "a batch of 8 windows of 100000 tokens", "use a smaller --batch-size or --context")


def test_a_long_prompt_is_announced_with_its_reading_time(run_dir, capsys, monkeypatch):
    from memory_mosaics.commands import generate

    monkeypatch.setattr(generate, "PROGRESS_TOKENS", 10)
    argv = ["generate", "--checkpoint", run_dir, "--prompt", "the cat sat " * 20, "--max-new-tokens", "2"]
    assert cli.main([str(a) for a in argv]) == 0
    err = capsys.readouterr().err
    assert "reading a prompt of" in err and "prompt read in" in err, err


# ---------------------------------------------------------------------- full disk (a real, small tmpfs)
@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MiB tmpfs (root only: skipped elsewhere; the patched-write tests of test_no_data_loss.py
    cover the same paths there)."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(mount: Path, leave: int) -> Path:
    """Fill ``mount`` up to ``leave`` free bytes with one file."""
    filler = mount / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as err:
            assert err.errno == errno.ENOSPC
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(corpus, small_tmpfs, capsys):
    out = small_tmpfs / "run"
    args = [*_tiny_train_args(corpus, out), "--checkpoint-interval", "2", "--eval-interval", "0"]
    assert cli.main([str(a) for a in [*args, "--max-steps", "4"]]) == 0
    filler = fill(small_tmpfs, leave=40_000)  # room for metrics rows, not for a checkpoint
    cli_fails(capsys, [*args, "--max-steps", "8", "--resume"], "no space left on the device", "free some space")
    assert os.readlink(out / "last") == "ckpt-00000004" and checkpoint_problem(out / "last") is None
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no partial folder or file left
    filler.unlink()
    assert cli.main([str(a) for a in [*args, "--max-steps", "8", "--resume"]]) == 0
    assert load_state(out / "last")["step"] == 8


def test_a_full_disk_during_the_token_cache_leaves_no_temporary(corpus, small_tmpfs, capsys, tmp_path):
    cache = small_tmpfs / "cache"
    cache.mkdir()
    fill(small_tmpfs, leave=0)
    args = _tiny_train_args(corpus, tmp_path / "run")
    args[args.index("--cache-dir") + 1] = cache
    cli_fails(capsys, [*args, "--max-steps", "2"], "no space left on the device")
    left = [str(p.relative_to(cache)) for p in cache.rglob("*") if p.name.startswith(".")]
    assert not left, left


# ---------------------------------------------------------------------- random SIGKILLs and concurrent runs
def _cli_child(argv: list[str], log: str) -> None:
    """A child process: ``mosaics ARGV`` with stdout and stderr appended to ``log``."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.exit(cli.main(argv))


@pytest.fixture(scope="module")
def forkserver():
    from memory_mosaics import commands, experiments

    ctx = multiprocessing.get_context("forkserver")
    packages = [(commands, "memory_mosaics.commands"), (experiments, "memory_mosaics.experiments")]
    preload = [f"{name}.{m.name}" for package, name in packages for m in pkgutil.iter_modules(package.__path__)]
    ctx.set_forkserver_preload(["memory_mosaics.training.trainer", "tokenizers", *preload, __name__])
    return ctx


def _start(ctx, argv, log):
    p = ctx.Process(target=_cli_child, args=([str(a) for a in argv], str(log)))
    p.start()
    return p


def _last_logged_step(out: Path) -> int:
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError):
            continue
    return 0


def _every_checkpoint_intact(out: Path) -> None:
    if os.path.lexists(out / "last"):
        assert checkpoint_problem(out / "last") is None, checkpoint_problem(out / "last")
    for p in out.iterdir():
        if p.name.startswith("ckpt-"):
            assert checkpoint_problem(p) is None, (p, checkpoint_problem(p))


def _final_state(out: Path) -> tuple[dict, dict]:
    return load_file(out / "last" / "model.safetensors"), load_state(out / "last")


def _assert_bit_identical(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            _assert_bit_identical(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_bit_identical(x, y)
    else:
        assert a == b


KILLS = 20


def _wait(child, done, timeout: float = 10.0) -> None:
    """Poll every 1 ms until ``done()``, the child's end or ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done() and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)


def test_random_sigkills_resume_bit_identical(corpus, tmp_path, forkserver):
    """SIGKILL a training 20 times at random moments (during start-up, right after a step's metrics
    row, inside a checkpoint write, just after a checkpoint's rename), resuming each time; every
    checkpoint stays readable and the final weights and optimiser state equal those of an
    uninterrupted run, bit for bit."""
    steps = 240  # a kill advances the run by a few steps at most: 20 kills never reach the end
    args = [
        *_tiny_train_args(corpus, "OUT"),
        "--max-steps",
        steps,
        "--checkpoint-interval",
        "2",
        "--eval-interval",
        "0",
    ]
    args += ["--log-interval", "1", "--threads", "1", "--warmup", "5"]
    log = tmp_path / "log.txt"
    ref, out = tmp_path / "ref", tmp_path / "run"
    reference = _start(forkserver, [str(ref if a == "OUT" else a) for a in args], log)
    reference.join()
    assert reference.exitcode == 0, log.read_text()[-2000:]
    argv = [str(out if a == "OUT" else a) for a in args] + ["--resume"]
    rng = random.Random(0)
    kills = 0
    while kills < KILLS:
        last = _last_logged_step(out)
        child = _start(forkserver, argv, log)
        moment = rng.choice(["start-up", "logged", "checkpoint write", "checkpoint renamed"])
        if moment == "start-up":  # lock, sweep, resume, data: a random time, but before any new step
            _wait(child, lambda: _last_logged_step(out) > last, rng.uniform(0.0, 0.3))
        else:  # 1-3 steps on (whatever the machine's speed, so the run never ends before 20 kills), then
            target = last + rng.randint(1, 3)  # right after the step's log row, inside its checkpoint write
            _wait(child, lambda: _last_logged_step(out) >= target)  # (a .tmp-ckpt folder exists), or just
            if moment != "logged":  # after the checkpoint's rename (links and retention under way)
                prefix = ".tmp-ckpt-" if moment == "checkpoint write" else f"ckpt-{target + target % 2:08d}"
                _wait(child, lambda: any(p.name.startswith(prefix) for p in out.iterdir()), 2.0)
            time.sleep(rng.uniform(0.0, 0.005))
        assert child.is_alive(), f"the training ended before kill {kills + 1}: {log.read_text()[-2000:]}"
        child.kill()
        child.join()
        assert child.exitcode == -9
        kills += 1
        _every_checkpoint_intact(out)
    child = _start(forkserver, argv, log)
    child.join()
    assert child.exitcode == 0, log.read_text()[-2000:]
    _every_checkpoint_intact(out)
    (weights, state), (ref_weights, ref_state) = _final_state(out), _final_state(ref)
    assert state["step"] == ref_state["step"] == steps
    _assert_bit_identical(weights, ref_weights)
    for key in ("optimizer", "data_rng", "torch_rng", "tokens_seen"):
        _assert_bit_identical(state[key], ref_state[key])


def test_two_trainings_into_one_out_the_second_refuses(corpus, tmp_path, forkserver):
    out = tmp_path / "run"
    args = [*_tiny_train_args(corpus, out), "--max-steps", "40", "--eval-interval", "0", "--threads", "1"]
    logs = [tmp_path / "a.txt", tmp_path / "b.txt"]
    children = [_start(forkserver, args, log) for log in logs]
    for child in children:
        child.join()
    codes = sorted(child.exitcode for child in children)
    assert codes == [0, 2], codes
    loser = logs[[c.exitcode for c in children].index(2)].read_text()
    line = one_error_line("\n".join(ln for ln in loser.splitlines() if ln.startswith("mosaics: error:")))
    assert "in use by another training (pid" in line or "holds a previous run" in line, line
    steps = [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "metrics of two runs interleaved"
