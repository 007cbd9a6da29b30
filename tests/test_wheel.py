"""Install outside the checkout (issue 10, item 5): the wheel, installed into a fresh virtual
environment and run from a folder outside the source tree, runs every kind of command.

The fresh environment gets this package from the wheel only (``--no-deps``); torch and the other
dependencies come from the environment running the tests through a ``.pth`` line (nothing is
downloaded), and the test checks that they satisfy the wheel's declared requirements. Run by CI
through ``make test-wheel`` (it takes about a minute).
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (REPO / "pyproject.toml").is_file(), reason="needs the source tree"),
]
CORPUS = "\n\n".join(
    f"Once upon a time a {a} met a {b} by the {c}. They talked until the sun went down."
    for a in ("cat", "dog", "bird", "fox")
    for b in ("frog", "girl", "boy")
    for c in ("river", "tree", "house")
)


def _source_copy(dest: Path) -> Path:
    """The files git tracks (a fresh clone's tree, without other work in progress), else the tree."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60
        ).stdout.split(b"\0")
        files = [f.decode() for f in listed if f and (REPO / f.decode()).is_file()]
    except (OSError, subprocess.CalledProcessError):
        files = [str(p.relative_to(REPO)) for p in REPO.rglob("*") if p.is_file() and ".venv" not in p.parts]
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, dest / name)
    return dest


def _run(cmd, cwd, env, ok=True, timeout=300):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert result.returncode == 0, f"{cmd}: {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def _quick_start() -> str:
    """The README's quick-start Python block."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Quick start") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    source = _source_copy(tmp_path / "source")
    dist = tmp_path / "dist"
    build = "import setuptools.build_meta as b, sys; d = sys.argv[1]; b.build_sdist(d); b.build_wheel(d)"
    _run([sys.executable, "-c", build, str(dist)], cwd=source, env=dict(os.environ))
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")

    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"tests/conftest.py", "tests/helpers.py", "LICENSE", "src/memory_mosaics/configs/cpu-d128.toml"} <= names
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {"memory_mosaics/configs/cpu-d128.toml", "memory_mosaics/ops/csrc/small_head_retrieval.c"} <= names
    assert "License-Expression: Apache-2.0" in metadata and any(n.endswith("licenses/LICENSE") for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, env=dict(os.environ))
    python = venv / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, None)
    # torch & co. from this environment's site-packages (a plain sys.path entry: its .pth files,
    # among them this checkout's editable install, are not processed there)
    Path(purelib.stdout.strip(), "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
    _run([*install, str(wheel)], cwd=tmp_path, env=dict(os.environ))

    work = tmp_path / "work"  # outside the source tree; no shared data unless named
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MOSAICS_SHARED_DATA", "VIRTUAL_ENV")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        MOSAICS_CACHE_DIR=str(tmp_path / "cache"),
        MEMORY_MOSAICS_CACHE=str(tmp_path / "kernels"),
    )
    where = _run(["python", "-c", "import memory_mosaics; print(memory_mosaics.__file__)"], work, env)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout
    check = (
        "import importlib.metadata as m\n"
        "from packaging.requirements import Requirement\n"
        "for line in m.requires('memory-mosaics'):\n"
        "    r = Requirement(line)\n"
        "    if r.marker is None or r.marker.evaluate({'extra': ''}):\n"
        "        assert r.specifier.contains(m.version(r.name), prereleases=True), (line, m.version(r.name))\n"
        "        print(r.name, m.version(r.name))\n"
    )
    assert "torch" in _run(["python", "-c", check], work, env).stdout  # declared and satisfied

    assert "reproduce" in _run(["mosaics", "--help"], work, env).stdout
    (work / "corpus.txt").write_text(CORPUS)
    tiny = "--n-layer 1 --n-head 2 --n-embd 16 --context 16 --batch-size 2 --max-steps 3 --warmup 1"
    train = ["mosaics", "train", "--config", "cpu-d128", "--data", "corpus.txt", "--valid", "corpus.txt"]
    train += ["--separator", "blank", "--tokenizer", "bpe:300", *tiny.split(), "--eval-interval", "3"]
    train += ["--eval-windows", "2", "--no-progress", "--no-tensorboard", "--threads", "1", "--out", "run"]
    _run(train, work, env)
    _run(
        ["mosaics", "eval", "--checkpoint", "run", "--data", "corpus.txt", "--out", "eval.json", "--no-progress"],
        work,
        env,
    )
    assert '"loss"' in (work / "eval.json").read_text()
    generated = _run(
        ["mosaics", "generate", "--checkpoint", "run", "--prompt", "Once", "--max-new-tokens", "5"], work, env
    )
    assert generated.stdout.startswith("Once")

    # reproduce language: the packaged preset is found by name; without shared data, the error names
    # the file needed and how to point at it
    missing = _run(["mosaics", "reproduce", "language", "--quick", "--out", "lang"], work, env, ok=False)
    assert missing.returncode == 2, missing.stderr
    assert "tinystories/train.txt" in missing.stderr and "MOSAICS_SHARED_DATA" in missing.stderr
    assert "--shared-data" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1
    unknown = _run(["mosaics", "reproduce", "language", "--config", "nope", "--out", "x"], work, env, ok=False)
    assert unknown.returncode == 2 and "cpu-d128" in unknown.stderr

    (work / "quick_start.py").write_text(_quick_start())
    _run(["python", "quick_start.py"], work, env)
    assert (work / "ckpt" / "config.json").is_file()
