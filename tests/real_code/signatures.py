"""Which public classes, functions and signatures of a stand-in tree differ from the real checkout's
(tests/real_code/test_fakes_match.py). Standard library only, so it can run under any Python:
Med3DVLM's code needs Python >= 3.12 even to be parsed.

    python -m tests.real_code.signatures FAKE_ROOT REAL_ROOT      # prints a JSON list of problems
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

# deliberate differences of the stand-ins, each with why (file: qualified name -> reason)
ALLOWED = {
    "LaMed/src/model/language_model/lamed_phi3.py: LamedPhi3ForCausalLM.forward":
        "also takes transformers 5's `cache`/`logits_to_keep`, so the in-process tests run on our stack",
    "src/model/llm/qwen.py: VLMQwenForCausalLM.forward":
        "also takes transformers 5.24's `cache`, which the real one would swallow in **kwargs (the adapter "
        "refuses that pairing; the stand-in decodes with it so the in-process tests run on our stack)",
    "llava/model/language_model/llava_llama.py: LlavaLlamaForCausalLM.forward":
        "takes **kwargs: transformers 5's generate passes arguments CT-CHAT's 4.44-era forward never saw",
    "llava/model/language_model/llava_llama.py: LlavaLlamaModel.forward":
        "takes **kwargs: transformers 5's generate passes arguments VILA's 4.37-era forward never saw",
}


def signature(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple:
    a = fn.args
    positional = a.posonlyargs + a.args
    n_defaults = len(a.defaults)
    return (tuple((p.arg, i >= len(positional) - n_defaults) for i, p in enumerate(positional)),
            a.vararg is not None,
            tuple((p.arg, d is not None) for p, d in zip(a.kwonlyargs, a.kw_defaults)),
            a.kwarg is not None)


def public_defs(tree: ast.Module) -> dict[str, ast.AST]:
    out: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            out[node.name] = node
    return out


def methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and (not n.name.startswith("_") or n.name in ("__init__", "__call__"))}


def mismatches(fake_root: Path, real_root: Path) -> list[str]:
    problems = []
    for fake_file in sorted(fake_root.rglob("*.py")):
        rel = fake_file.relative_to(fake_root)
        if rel.name.startswith("_fake") or rel.name == "setup.py":
            continue
        real_file = real_root / rel
        if not real_file.is_file():
            problems.append(f"{rel}: no such file upstream")
            continue
        fake_defs = public_defs(ast.parse(fake_file.read_text()))
        real_tree = ast.parse(real_file.read_text(), filename=str(real_file))
        real_defs = public_defs(real_tree)
        # names the real module binds some other way (imports, assignments) also count as present
        bound = {alias.asname or alias.name.split(".")[0] for node in ast.walk(real_tree)
                 if isinstance(node, (ast.Import, ast.ImportFrom)) for alias in node.names}
        bound |= {t.id for node in real_tree.body if isinstance(node, ast.Assign) for t in node.targets
                  if isinstance(t, ast.Name)}
        star = any(isinstance(n, ast.ImportFrom) and any(a.name == "*" for a in n.names) for n in real_tree.body)
        for name, node in fake_defs.items():
            real = real_defs.get(name)
            if real is None:
                if name not in bound and not star:
                    problems.append(f"{rel}: {name} is not defined upstream")
                continue
            if isinstance(node, ast.ClassDef) != isinstance(real, ast.ClassDef):
                problems.append(f"{rel}: {name} is a {type(real).__name__} upstream")
                continue
            pairs = ([(name, node, real)] if not isinstance(node, ast.ClassDef) else
                     [(f"{name}.{m}", fn, methods(real).get(m)) for m, fn in methods(node).items()])
            for label, fn, real_fn in pairs:
                if real_fn is not None and signature(fn) != signature(real_fn) \
                        and f"{rel}: {label}" not in ALLOWED:
                    problems.append(f"{rel}: {label}{ast.unparse(fn.args)!r} upstream takes "
                                    f"({ast.unparse(real_fn.args)})")
    return problems




if __name__ == "__main__":
    try:
        print(json.dumps(mismatches(Path(sys.argv[1]), Path(sys.argv[2]))))
    except SyntaxError as exc:
        print(json.dumps({"syntax_error": f"{exc.filename}:{exc.lineno}: {exc.msg}"}))
