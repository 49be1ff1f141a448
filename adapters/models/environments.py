"""Family environments: one Python environment per model family whose own code needs another stack than
ours (transformers 4.x, monai 1.3, Python >= 3.12, ...). The runner drives such a model through a worker
process in that environment (adapters/models/worker.py).

- What goes in: `adapters/models/envs/<family>.txt`, requirements format. Header comments `# python: SPEC`
  (the interpreter versions the family needs) and `# import: a, b` (modules that must import once built).
  The first requirement names torch and is installed first, alone: with no torch present pip would resolve
  a multi-GB CUDA build for any range; the rest is then installed with torch held at what was installed.
- Where it lives: `$CTSVQA_ENVS/<family>`, default `~/.cache/ctsvqa/envs/<family>`: a plain venv.
- Ready means built to the end: `ctsvqa-env.json` (the marker, with the installed distributions
  pip-freeze style, also written to `requirements.lock`) is written last, after the imports succeeded, and
  removed before any change; a half-built env is never ready and `create` again repairs it in place.
  A marker whose requirements file hash differs from the file's current hash is stale (not ready).
- Identity: `fingerprint()` = sha256 over the env's installed distributions (name==version, sorted), read
  from its site-packages without starting its interpreter; the run identity carries it.

Installer: pip inside the new venv, which honours this machine's pip configuration (local wheel indexes,
constraints); uv (when on PATH) is used only to find an interpreter of the version a family needs
(`uv python find`), since uv ignores pip's configuration and would download torch again."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

ENV_FILES = Path(__file__).resolve().parent / "envs"
MARKER = "ctsvqa-env.json"
LOCK = "requirements.lock"
KEY_PACKAGES = ("torch", "torchvision", "transformers", "monai", "numpy", "merlin-vlm")


class EnvError(RuntimeError):
    """A family environment cannot be found, made or used; the message says what to do."""


# -- the specification ---------------------------------------------------------------------------

@dataclass(frozen=True)
class EnvSpec:
    family: str
    file: Path
    python: str | None                      # a version specifier, e.g. '>=3.12'
    imports: tuple[str, ...]
    torch: tuple[str, ...]                  # installed first
    rest: tuple[str, ...]
    sha256: str                             # of the requirements file's bytes

    def with_torch(self, torch: str | None) -> "EnvSpec":
        """`--torch 'torch==2.13.0 torchvision==0.28.0'`: replace the first line; a package named there is
        dropped from the rest (a torchvision pin belongs with its torch)."""
        if not torch:
            return self
        first = tuple(torch.split())
        names = {_req_name(r) for r in first}
        return EnvSpec(self.family, self.file, self.python, self.imports, first,
                       tuple(r for r in self.rest if _req_name(r) not in names), self.sha256)


def _req_name(requirement: str) -> str:
    return _canon(re.split(r"[\s<>=!~;\[@]", requirement.strip(), maxsplit=1)[0])


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def families() -> list[str]:
    return sorted(p.stem for p in ENV_FILES.glob("*.txt"))


def canonical_family(family: str) -> str:
    return family.replace("_", "-")


def spec(family: str, requirements: str | Path | None = None) -> EnvSpec:
    """The family's requirements file parsed (or `requirements`, a file of the same format: tests)."""
    fam = canonical_family(family)
    path = Path(requirements) if requirements else ENV_FILES / f"{fam}.txt"
    if not path.is_file():
        raise EnvError(f"unknown family environment {family!r}: no {path}; known: {', '.join(families())}")
    data = path.read_bytes()
    python = None
    imports: list[str] = []
    reqs: list[str] = []
    for lineno, raw in enumerate(data.decode().splitlines(), 1):
        line = raw.strip()
        if m := re.match(r"#\s*python:\s*(\S.*)$", line):
            python = m.group(1).strip()
        elif m := re.match(r"#\s*import:\s*(\S.*)$", line):
            imports += [x.strip() for x in m.group(1).split(",") if x.strip()]
        elif line and not line.startswith("#"):
            reqs.append(line.split(" #")[0].strip())
    torch = (reqs[0],) if reqs and _req_name(reqs[0]) == "torch" else ()
    rest = tuple(reqs[len(torch):])
    if any(_req_name(r) == "torch" for r in rest):
        raise EnvError(f"{path}: torch must be the first requirement (it is installed first, alone)")
    if python:
        _specifier(python, path)
    return EnvSpec(fam, path, python, tuple(imports), torch, rest, hashlib.sha256(data).hexdigest())


def _specifier(text: str, where: Path | str):
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    try:
        return SpecifierSet(text)
    except InvalidSpecifier as exc:
        raise EnvError(f"{where}: bad '# python:' specifier {text!r}: {exc}") from exc


# -- where envs are and what is in them ----------------------------------------------------------

def root() -> Path:
    return Path(os.environ.get("CTSVQA_ENVS") or Path.home() / ".cache" / "ctsvqa" / "envs").expanduser()


def env_dir(family: str) -> Path:
    return root() / canonical_family(family)


def _env_python(path: Path) -> Path:
    return path / "bin" / "python"


def site_packages(prefix: Path) -> list[Path]:
    return sorted(prefix.glob("lib/python3*/site-packages"))


def installed(prefix: Path) -> dict[str, str]:
    """Distribution name -> version, from the dist-info folders of a venv's site-packages (no interpreter
    started: fast enough to run for every run identity)."""
    found: dict[str, str] = {}
    for sp in site_packages(prefix):
        for d in sp.glob("*.dist-info"):
            meta = d / "METADATA"
            name = version = None
            try:
                with meta.open(encoding="utf-8", errors="replace") as f:
                    for line in f:
                        if line.startswith("Name:"):
                            name = line[5:].strip()
                        elif line.startswith("Version:"):
                            version = line[8:].strip()
                        if (name and version) or not line.strip():
                            break
            except OSError:
                continue
            if name and version:
                found[_canon(name)] = version
    return dict(sorted(found.items()))


def interpreter_distributions(python: str | Path) -> dict[str, str]:
    """The same for any interpreter (a user's conda env): asked of the interpreter itself."""
    code = ("import json, importlib.metadata as m; print(json.dumps({d.metadata['Name']: d.version "
            "for d in m.distributions() if d.metadata['Name']}))")
    try:
        # -I: what the interpreter has installed, not what the current folder or PYTHONPATH adds
        # (a checkout's own *.egg-info would otherwise change the fingerprint with the cwd)
        out = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, timeout=120)
    except OSError as exc:
        raise EnvError(f"--env {python}: cannot run it: {exc.strerror or exc}") from exc
    if out.returncode != 0:
        raise EnvError(f"--env {python}: it cannot list its packages: {out.stderr.strip().splitlines()[-1:]}")
    return dict(sorted((_canon(k), v) for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()))


def fingerprint_of(dists: dict[str, str]) -> str:
    return hashlib.sha256("\n".join(f"{k}=={v}" for k, v in sorted(dists.items())).encode()).hexdigest()


def fingerprint(family: str) -> str:
    return fingerprint_of(installed(env_dir(family)))


def python_version(python: str | Path) -> str | None:
    try:
        out = subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@dataclass
class EnvStatus:
    family: str
    path: Path
    ready: bool
    reason: str | None = None                # why not ready
    python_version: str | None = None
    packages: dict[str, str] = field(default_factory=dict)     # the key packages' versions
    fingerprint: str | None = None
    marker: dict[str, Any] | None = None

    @property
    def python(self) -> Path:
        return _env_python(self.path)


def status(family: str) -> EnvStatus:
    fam = canonical_family(family)
    path = env_dir(fam)
    marker = _read_marker(path)
    if marker is None:
        if path.exists():
            return EnvStatus(fam, path, False, "half-built (no ready marker): `ctsvqa env create` repairs it")
        try:
            spec(fam)
        except EnvError as exc:
            return EnvStatus(fam, path, False, str(exc))
        return EnvStatus(fam, path, False, "not built")
    built_from = marker.get("requirements")
    try:    # checked against the file it was built from (tests build from their own), else the shipped one
        want = spec(fam, built_from if built_from and Path(built_from).is_file() else None)
    except EnvError as exc:
        return EnvStatus(fam, path, False, str(exc))
    if not _env_python(path).exists():
        return EnvStatus(fam, path, False, f"its interpreter {_env_python(path)} is gone", marker=marker)
    dists = installed(path)
    st = EnvStatus(fam, path, True, None, marker.get("python_version"),
                   {k: dists[k] for k in KEY_PACKAGES if k in dists}, fingerprint_of(dists), marker)
    if marker.get("requirements_sha256") != want.sha256:
        st.ready, st.reason = False, f"stale: {want.file.name} changed since it was built"
    return st


def list_envs() -> list[EnvStatus]:
    return [status(f) for f in families()]


def python_for(family: str) -> Path:
    """The interpreter of a ready family env, or an EnvError saying how to build it."""
    st = status(family)
    if not st.ready:
        raise EnvError(f"family environment {st.family!r} is not ready at {st.path} ({st.reason}): run "
                       f"`ctsvqa env create {st.family}` (or pass --env current to run in this environment, "
                       f"or --env PATH/TO/python for one of your own)")
    return st.python


def _read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("ready") is True else None


# -- making one ----------------------------------------------------------------------------------

def _candidates() -> Iterable[str]:
    """Interpreters worth asking for their version: ours, the machine's, pyenv's, uv's."""
    yield getattr(sys, "_base_executable", None) or sys.executable
    for d in ("/usr/bin", "/usr/local/bin", "/opt/conda/bin"):
        yield from sorted(str(p) for p in Path(d).glob("python3.[0-9]*") if re.fullmatch(r"python3\.\d+", p.name))
    yield from sorted(str(p) for p in Path.home().glob(".pyenv/versions/*/bin/python3"))
    if shutil.which("uv"):
        try:
            out = subprocess.run(["uv", "python", "list", "--only-installed", "--output-format", "json"],
                                 capture_output=True, text=True, timeout=60)
            for item in json.loads(out.stdout or "[]"):
                if item.get("path"):
                    yield item["path"]
        except (OSError, ValueError, subprocess.SubprocessError):
            pass


def find_python(wanted: str | None) -> tuple[str, str]:
    """(path, version) of an interpreter satisfying `wanted`, or an EnvError listing what was seen."""
    spec_set = _specifier(wanted, "requirements") if wanted else None
    seen: dict[str, str | None] = {}
    for cand in _candidates():
        real = os.path.realpath(cand)
        if real in seen or not os.access(real, os.X_OK):
            continue
        seen[real] = version = python_version(real)
        if version and (spec_set is None or spec_set.contains(version)):
            return real, version
    found = ", ".join(f"{p} ({v or '?'})" for p, v in seen.items()) or "none"
    raise EnvError(f"needs Python {wanted}; none found (looked at: {found}); install one (e.g. `uv python install "
                   f"{_lowest(wanted)}`, `apt-get install python{_lowest(wanted)}`, or conda) and pass "
                   f"--python /path/to/python{_lowest(wanted)}")


def _lowest(wanted: str | None) -> str:
    m = re.search(r">=\s*(\d+\.\d+)", wanted or "")
    return m.group(1) if m else "3"


def _check_python(python: str, wanted: str | None, family: str) -> str:
    version = python_version(python)
    if version is None:
        raise EnvError(f"--python {python}: not a working Python interpreter")
    if wanted and not _specifier(wanted, family).contains(version):
        raise EnvError(f"family {family!r} needs Python {wanted}, but {python} is {version}; pass --python with "
                       f"one that fits (e.g. `uv python install {_lowest(wanted)}`, then --python "
                       f"$(uv python find {_lowest(wanted)}))")
    return version


def _run(cmd: list[str], log: Callable[[str], None], what: str, env: dict | None = None,
         cwd: Path | None = None) -> None:
    log("$ " + " ".join(cmd))
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.strip().splitlines()[-15:])
        raise EnvError(f"{what} failed (exit {done.returncode}); the env stays not ready, `ctsvqa env create` "
                       f"again resumes it. Last lines:\n{tail}")


def create(family: str, python: str | None = None, torch: str | None = None, requirements: str | Path | None = None,
           inherit_site_packages: bool = False, log: Callable[[str], None] = lambda s: None) -> EnvStatus:
    """Build (or repair) the family's venv. `torch` replaces the torch line (see EnvSpec.with_torch);
    `requirements` reads another file than envs/<family>.txt; `inherit_site_packages` puts this
    interpreter's site-packages behind the env's own through a .pth file (tests: an env of its own,
    without installing torch again)."""
    sp = spec(family, requirements).with_torch(torch)
    path = env_dir(sp.family)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{sp.family}.lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise EnvError(f"another `ctsvqa env create {sp.family}` is building {path} (pid "
                           f"{lock.read().strip() or '?'}); wait for it to end") from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        return _create(sp, path, python, inherit_site_packages, log)


def _create(sp: EnvSpec, path: Path, python: str | None, inherit_site_packages: bool,
            log: Callable[[str], None]) -> EnvStatus:
    if python:
        base, version = python, _check_python(python, sp.python, sp.family)
    else:
        try:
            base, version = find_python(sp.python)
        except EnvError as exc:
            raise EnvError(f"family {sp.family!r} {exc}") from None
    t0 = time.monotonic()
    (path / MARKER).unlink(missing_ok=True)                 # from here on, not ready until the end
    existing = python_version(_env_python(path)) if _env_python(path).exists() else None
    if existing != version:
        if path.exists():
            log(f"removing {path} (Python {existing or 'unusable'}, want {version})")
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _run([base, "-m", "venv", str(path)], log, f"creating the venv {path} with {base}")
    py = str(_env_python(path))
    if inherit_site_packages:
        ours = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
        for target in site_packages(path):
            (target / "_ctsvqa_inherit.pth").write_text("\n".join(ours) + "\n")
    # nothing of the caller's interpreter may leak in (an import check passing on our packages)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    pip = [py, "-m", "pip", "install", "--quiet"]
    if sp.torch:
        _run(pip + list(sp.torch), log, f"installing {' '.join(sp.torch)}", env)
    if sp.rest:
        with tempfile.TemporaryDirectory() as tmp:
            reqs = Path(tmp) / "requirements.txt"
            reqs.write_text("\n".join(sp.rest) + "\n")
            cmd = pip + ["-r", str(reqs)]
            dists = installed(path)
            if "torch" in dists:      # held where the first step put it: never a silent multi-GB replacement
                cons = Path(tmp) / "constraints.txt"
                cons.write_text(f"torch=={dists['torch']}\n")
                cmd += ["-c", str(cons)]
            _run(cmd, log, f"installing {sp.file.name}", env)
    if sp.imports:
        code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)"
        # from inside the env: a stray merlin.py in the caller's folder must not pass for the package
        _run([py, "-c", code, *sp.imports], log, f"importing {', '.join(sp.imports)} in the new env", env, cwd=path)
    dists = installed(path)
    freeze = [f"{k}=={v}" for k, v in dists.items()]
    (path / LOCK).write_text("\n".join(freeze) + "\n")
    marker = {"ready": True, "family": sp.family, "requirements": str(sp.file.resolve()), "requirements_sha256": sp.sha256,
              "torch": list(sp.torch), "python": base, "python_version": version,
              "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "seconds": round(time.monotonic() - t0, 1), "fingerprint": fingerprint_of(dists),
              "distributions": freeze}
    tmp_marker = path / (MARKER + ".tmp")
    tmp_marker.write_text(json.dumps(marker, indent=1))
    os.replace(tmp_marker, path / MARKER)
    return status(sp.family)
