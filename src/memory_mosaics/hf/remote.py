"""The modeling code written into a Hugging Face folder, for ``trust_remote_code=True`` loading
without this package installed.

``transformers`` loads remote code from flat ``.py`` files of the folder, following their relative
imports (``from .name import ...``). :func:`bundle_sources` therefore copies, from the installed
package, the modules that :mod:`.configuration` and :mod:`.modeling` import (followed recursively),
each as one flat file named after its dotted path (``memory_mosaics.layers.contextual`` ->
``mm_layers_contextual.py``), with its package imports rewritten to these names. Nothing is kept by
hand in two places: the folder always carries the code that wrote it.

One module is replaced: the compiled small-head kernel (``ops.small_head``, a C file compiled on
first use and registered as ``torch.library`` ops under this package's name) becomes a stand-in that
is never used, so retrieval takes the ``scaled_dot_product_attention`` path (the same function;
the kernel is a CPU speed-up only), and a copy loaded beside the installed package registers nothing twice.
The other C kernels (leaky average, unit rows, dropout masks) find no C file in the folder and
quietly leave their work to the torch code they stand beside (``ops.native.load``).
The Triton leaky average (``ops.leaky_triton``) is replaced the same way: the copy then needs no
Triton (transformers refuses remote code whose imports are not installed) and registers no op twice.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

from ..io import atomic_write_text

PACKAGE = "memory_mosaics"
ROOTS = {"configuration_mosaics": f"{PACKAGE}.hf.configuration", "modeling_mosaics": f"{PACKAGE}.hf.modeling"}
SMALL_HEAD_STAND_IN = '''"""Stand-in for the compiled small-head kernel in a trust_remote_code copy: never used, so
causal retrieval takes the scaled_dot_product_attention path (the same function)."""


def available() -> bool:
    return False


def supports(q, k, v) -> bool:
    return False


def small_head_retrieval(q, k, v, min_lag=1, max_lag=None):
    raise RuntimeError("the compiled small-head kernel is not part of a trust_remote_code copy")
'''
LEAKY_TRITON_STAND_IN = '''"""Stand-in for the Triton leaky average in a trust_remote_code copy: never used, so
the leaky average takes its torch forms (the same function)."""


def available() -> bool:
    return False


def supports(x) -> bool:
    return False


def leaky_scan(*args, **kwargs):
    raise RuntimeError("the Triton leaky average is not part of a trust_remote_code copy")


leaky_scan_grad = leaky_scan
'''
REPLACED = {f"{PACKAGE}.ops.small_head": SMALL_HEAD_STAND_IN, f"{PACKAGE}.ops.leaky_triton": LEAKY_TRITON_STAND_IN}


def flat_name(module: str) -> str:
    """The bundle file (without .py) of a package module: ``memory_mosaics.a.b`` -> ``mm_a_b``."""
    for name, root in ROOTS.items():
        if module == root:
            return name
    return "mm_" + module.removeprefix(PACKAGE + ".").replace(".", "_") if module != PACKAGE else "mm_package"


def _source(module: str) -> tuple[str, bool]:
    """(source text, is a package __init__) of an importable module of this package."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"cannot find the source of {module}")
    return Path(spec.origin).read_text(encoding="utf-8"), spec.submodule_search_locations is not None


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    """The absolute module an ImportFrom reads from, if it is inside this package."""
    if node.level == 0:
        return node.module if node.module and node.module.split(".")[0] == PACKAGE else None
    parts = module.split(".") if is_package else module.split(".")[:-1]
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _rewrite(module: str) -> tuple[str, set[str]]:
    """Module source with its package imports pointing at bundle files, and the modules it needs."""
    if module in REPLACED:
        return REPLACED[module], set()
    text, is_package = _source(module)
    lines = text.splitlines(keepends=True)
    needed: set[str] = set()
    edits = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names):
            raise ValueError(f"{module}: `import {PACKAGE}...` cannot be bundled; use a relative import")
        if not isinstance(node, ast.ImportFrom):
            continue
        target = _resolve(node, module, is_package)
        if target is None:
            continue
        statements = []
        names = []
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            if _is_module(sub):  # `from . import small_head`: a submodule, bound to its name
                needed.add(sub)
                statements.append(f"from . import {flat_name(sub)} as {alias.asname or alias.name}")
            else:
                names.append(alias.name if alias.asname is None else f"{alias.name} as {alias.asname}")
        if names:
            needed.add(target)
            statements.insert(0, f"from .{flat_name(target)} import {', '.join(names)}")
        indent = lines[node.lineno - 1][: node.col_offset]
        edits.append((node.lineno, node.end_lineno, "".join(f"{indent}{s}\n" for s in statements)))
    for start, end, new in sorted(edits, reverse=True):
        lines[start - 1 : end] = [new]
    return "".join(lines), needed


def bundle_sources() -> dict[str, str]:
    """File name -> source of the remote-code copy (the two entry files and every module they need)."""
    files: dict[str, str] = {}
    todo, done = list(ROOTS.values()), set()
    while todo:
        module = todo.pop()
        if module in done:
            continue
        done.add(module)
        text, needed = _rewrite(module)
        files[flat_name(module) + ".py"] = text
        todo.extend(sorted(needed - done))
    # transformers copies the files it finds through `from .name import` lines of the entry file it
    # loads; `from . import name as alias` lines are not found that way, so each entry file lists all.
    listing = "".join(f"    from .{name[:-3]} import *  # noqa: F401,F403\n" for name in sorted(files))
    for root in ROOTS:
        files[root + ".py"] += f"\n\nif False:  # every file of this copy, for transformers to find\n{listing}"
    return files


def auto_map(model_type: str) -> dict[str, str]:
    """The ``auto_map`` entry of config.json for a kind's remote code."""
    from .configuration import HF_CONFIGS
    from .modeling import HF_MODELS

    config, model = HF_CONFIGS[model_type].__name__, HF_MODELS[model_type].__name__
    return {
        "AutoConfig": f"configuration_mosaics.{config}",
        "AutoModel": f"modeling_mosaics.{model}",
        "AutoModelForCausalLM": f"modeling_mosaics.{model}",
    }


def write_remote_code(directory: str | Path) -> None:
    """Write the bundle into a saved HF folder and point its config.json's ``auto_map`` at it."""
    d = Path(directory)
    for name, text in bundle_sources().items():
        atomic_write_text(d / name, text)
    config_path = d / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["auto_map"] = auto_map(config["model_type"])
    atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True) + "\n")
