#!/usr/bin/env python3
"""Build the AWS Lambda artifact (a zip) for ``costwatch.handler.handle``.

Lambda allows 250 MB unzipped, and costwatch's dependencies alone are close to that (pandas, numpy, matplotlib,
statsmodels + scipy, boto3).  So the artifact is built from Linux wheels for the target runtime, with what a
scheduled run never imports left out:

* the CLI-only dependencies (click, rich) and statsmodels (+ scipy, patsy): only ``detection.band_method:
  stl`` imports it, lazily, and with it the zip would be ~295 MB (``--with-stl`` keeps it, for a container
  image build; the zip check then fails);
* fontTools' compiled accelerators: matplotlib imports fontTools at startup but uses it only for PDF/PS
  fonts, and every accelerator has a pure-Python twin next to it;
* test suites, type stubs, console scripts, bytecode compiled for the wrong interpreter, sample data;
* with ``--runtime-boto3``, boto3/botocore/s3transfer/jmespath/urllib3 (the Lambda runtime ships its own).
  The default bundles them: the runtime's version changes under you, and it is the version tests ran against.

What is kept is then compiled to bytecode by an interpreter of the target version (``pythonX.Y`` on PATH, or
``--compile-with``), in ``unchecked-hash`` mode, next to the sources: Lambda's code directory is read-only, so
without it every cold start compiles every module it imports (see ``compile_bytecode``).

A config given with ``--config`` is checked against what is packaged (``band_method: stl`` without
statsmodels, a provider or notifier whose extra is missing) and packaged as ``costwatch.yaml`` at the root,
where the handler finds it when ``COSTWATCH_CONFIG_SSM`` is unset.

    python deploy/lambda/build.py                        # -> build/lambda/costwatch.zip (Python 3.12, x86_64)
    python deploy/lambda/build.py --python-version 3.11 --out /tmp/x --no-zip   # what the import test runs

Only the standard library is used, plus ``pip`` (run as ``<this python> -m pip``) and, for ``--config``, PyYAML.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# what the wheel is built from (pyproject's package-dir mapping lives in pyproject.toml; it is not repeated here)
SOURCES = ("pyproject.toml", "README.md", "costwatch", "providers", "notifiers")
DEFAULT_PYTHON = "3.12"                   # serverless.yml: runtime python3.12
DEFAULT_PLATFORM = "manylinux2014_x86_64"  # serverless.yml: architecture x86_64
LAMBDA_LIMIT_MB = 250.0   # unzipped code + layers, a hard Lambda limit
MARGIN_MB = 200.0         # above this a new dependency release can break the deploy: say so
CLI_ONLY = {"click", "rich"}
STL_ONLY = {"statsmodels"}
# extras each config feature needs (notify.email with transport ses and the dynamodb state need boto3 too)
PROVIDER_EXTRAS = {"aws": "aws", "gcp": "gcp", "azure": "azure"}
# top-level names pruned after install: (names, why)
PRUNE_ALWAYS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("bin", "share"), "console scripts and man pages"),
)
PRUNE_RUNTIME_BOTO3 = (("boto3", "boto3-*.dist-info", "botocore", "botocore-*.dist-info", "s3transfer",
                        "s3transfer-*.dist-info", "jmespath", "jmespath-*.dist-info", "urllib3",
                        "urllib3-*.dist-info"), "the Lambda runtime's boto3 is used")
PRUNE_DIRS = {"tests", "test", "__pycache__"}          # anywhere below a package
PRUNE_SUFFIXES = (".pyi", ".pyc", ".pyx", ".pxd", ".c", ".cpp", ".h")
PRUNE_PATHS = ("matplotlib/mpl-data/sample_data", "numpy/_core/include", "numpy/_core/lib/pkgconfig")


class BuildError(Exception):
    """A build that must not produce an artifact; the message says what to change."""


@dataclass
class Plan:
    python_version: str
    platform: str
    extras: list[str]
    with_stl: bool
    runtime_boto3: bool
    config: Path | None
    out: Path
    zip_path: Path | None
    constraint: Path | None = None
    bytecode: bool = True
    compile_with: str | None = None
    removed: dict[str, float] = field(default_factory=dict)   # why -> MB
    added: dict[str, float] = field(default_factory=dict)     # what -> MB


def mb(n: float) -> float:
    return round(n / 1e6, 1)


def tree_size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def needed_extras(config: Path) -> tuple[set[str], bool]:
    """Extras the config needs, and whether it asks for STL bands.  Read as plain YAML (``${VAR}`` stays
    unexpanded) so the build needs neither the secrets nor the package installed."""
    try:
        import yaml
    except ImportError:
        raise BuildError("--config needs PyYAML in the Python running this script") from None
    try:
        doc = yaml.safe_load(config.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise BuildError(f"--config {config}: {e}") from None
    if not isinstance(doc, dict):
        raise BuildError(f"--config {config}: not a YAML mapping")
    need: set[str] = set()
    for p in doc.get("providers") or []:
        if isinstance(p, dict) and p.get("type") in PROVIDER_EXTRAS:
            need.add(PROVIDER_EXTRAS[str(p["type"])])
    notify = doc.get("notify") or {}
    if notify.get("slack"):
        need.add("slack")
    if (notify.get("email") or {}).get("transport") == "ses":
        need.add("aws")
    if (doc.get("state") or {}).get("backend") == "dynamodb":
        need.add("aws")
    if (doc.get("kubernetes") or {}).get("clusters"):
        need.add("k8s")
    stl = (doc.get("detection") or {}).get("band_method") == "stl"
    return need, stl


def check_config(plan: Plan) -> None:
    """Fail before downloading anything when the config asks for what the artifact leaves out."""
    if plan.config is None:
        return
    need, stl = needed_extras(plan.config)
    if stl and not plan.with_stl:
        raise BuildError(f"{plan.config} sets detection.band_method: stl, which needs statsmodels + scipy (~120 MB); "
                         "they do not fit in a Lambda zip next to pandas and matplotlib: use band_method: weekday "
                         "on Lambda (or build a container image, with --with-stl)")
    missing = sorted(need - set(plan.extras))
    if missing:
        raise BuildError(f"{plan.config} needs the extra(s) {', '.join(missing)}: build with "
                         f"--extras {','.join(sorted(set(plan.extras) | need))}")


def run(cmd: list[str], *, quiet: bool = False) -> None:
    """Run a build step; a quiet one shows its output only when it fails (setuptools is chatty)."""
    print("+", " ".join(cmd), flush=True)
    if not quiet:
        subprocess.run(cmd, check=True)
        return
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stdout + done.stderr)
        raise subprocess.CalledProcessError(done.returncode, cmd)


def build_wheel(work: Path) -> Path:
    """The costwatch wheel, built from a copy of the sources so the checkout gets no build/ or egg-info."""
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(p, src / name)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(work / "wheel"), str(src)],
        quiet=True)
    wheels = list((work / "wheel").glob("costwatch-*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one costwatch wheel, found {wheels}")
    return wheels[0]


def requirements(wheel: Path, plan: Plan) -> list[str]:
    """The wheel's Requires-Dist for the chosen extras, minus what the Lambda never imports."""
    with zipfile.ZipFile(wheel) as z:
        meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(meta_name).decode())
    drop = CLI_ONLY | (set() if plan.with_stl else STL_ONLY)
    out: list[str] = []
    for req in meta.get_all("Requires-Dist") or []:
        spec, _, marker = req.partition(";")
        extra = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", marker)
        if extra and extra.group(1) not in plan.extras:
            continue
        name = re.match(r"[A-Za-z0-9._-]+", spec.strip())
        if name is None or norm(name.group(0)) in drop:
            continue
        rest = re.sub(r"""(and\s+)?extra\s*==\s*['"][^'"]+['"](\s+and)?""", "", marker).strip()
        out.append(spec.strip() + (f"; {rest}" if rest else ""))
    return out


def pip_install(target: Path, reqs: Iterable[str], plan: Plan, *, no_deps: bool = False) -> None:
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--target", str(target),
         "--platform", plan.platform, "--implementation", "cp", "--python-version", plan.python_version,
         "--only-binary=:all:", "--upgrade", *(["--no-deps"] if no_deps else []),
         *(["--constraint", str(plan.constraint)] if plan.constraint else []), *reqs])


def _remove(path: Path, why: str, plan: Plan) -> None:
    plan.removed[why] = plan.removed.get(why, 0.0) + tree_size(path) / 1e6
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def prune(root: Path, plan: Plan) -> None:
    groups = list(PRUNE_ALWAYS) + ([PRUNE_RUNTIME_BOTO3] if plan.runtime_boto3 else [])
    for names, why in groups:
        for pattern in names:
            for p in root.glob(pattern):
                _remove(p, why, plan)
    for so in root.glob("fontTools/**/*.so"):
        if so.with_name(so.name.split(".", 1)[0] + ".py").exists():
            _remove(so, "fontTools accelerators (pure-Python twins stay)", plan)
    for rel in PRUNE_PATHS:
        if (root / rel).exists():
            _remove(root / rel, "headers and sample data", plan)
    for dirpath, dirnames, filenames in os.walk(root, topdown=True):
        here = Path(dirpath)
        if here == root:
            continue  # top-level names are packages, not test dirs
        for d in [d for d in dirnames if d in PRUNE_DIRS]:
            _remove(here / d, "test suites and bytecode", plan)
            dirnames.remove(d)
        for f in filenames:
            if f.endswith(PRUNE_SUFFIXES):
                _remove(here / f, "stubs and sources of compiled modules", plan)


def _version_of(exe: str) -> str | None:
    try:
        got = subprocess.run([exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return got.stdout.strip() if got.returncode == 0 else None


def find_python(version: str) -> str | None:
    """An interpreter of ``version``: this one, ``pythonX.Y`` on PATH, a pyenv install, or uv's."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return sys.executable
    candidates = [shutil.which(f"python{version}")]
    candidates += [str(p) for p in sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))]
    uv = shutil.which("uv")
    if uv:
        got = subprocess.run([uv, "python", "find", version], capture_output=True, text=True)
        candidates.append(got.stdout.strip() if got.returncode == 0 else None)
    return next((c for c in candidates if c and _version_of(c) == version), None)


def target_python(plan: Plan) -> str:
    """An interpreter of the target version: bytecode is per version (a 3.11 .pyc means nothing to 3.12)."""
    if plan.compile_with is not None:
        if _version_of(plan.compile_with) != plan.python_version:
            raise BuildError(f"--compile-with {plan.compile_with} is not Python {plan.python_version}")
        return plan.compile_with
    exe = find_python(plan.python_version)
    if exe is None:
        raise BuildError(f"no Python {plan.python_version} found to compile bytecode for the Lambda runtime: "
                         "install it, name one with --compile-with, or build with --no-bytecode (slower cold starts)")
    return exe


def compile_bytecode(root: Path, plan: Plan) -> None:
    """Ship ``__pycache__/*.cpython-3XY.pyc`` next to the sources.  Lambda's code directory is read-only, so
    without them every cold start compiles every module it imports (seconds), and compiles it again the
    next time.  ``unchecked-hash``: the zip's timestamps are fixed (1980), so timestamp-checked .pyc files
    would be judged stale; these are used as they are.  The sources stay, so tracebacks show the code;
    ``-s/-p`` record the path as Lambda sees it (/var/task) rather than the build directory's."""
    exe = target_python(plan)
    before = tree_size(root)
    cmd = [exe, "-m", "compileall", "-q", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash",
           "-s", str(root), "-p", "/var/task", str(root)]
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:  # a file that does not compile (a template, another version's syntax) stays source-only
        failed = [ln for ln in done.stdout.splitlines() if ln.strip()][:5]
        print(f"build.py: note: some files were left without bytecode: {failed}", file=sys.stderr)
    plan.added[f"bytecode for Python {plan.python_version} (unchecked-hash)"] = (tree_size(root) - before) / 1e6


def make_zip(root: Path, dest: Path) -> None:
    """Deterministic (sorted, fixed timestamps) so an unchanged build deploys as unchanged; every file
    world-readable, as Lambda runs the code as a different user than the one that built it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        for p in sorted(root.rglob("*")):
            if not p.is_file():
                continue
            info = zipfile.ZipInfo(p.relative_to(root).as_posix(), date_time=(1980, 1, 1, 0, 0, 0))
            mode = 0o755 if p.stat().st_mode & stat.S_IXUSR else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with p.open("rb") as f:
                z.writestr(info, f.read(), compresslevel=6)
    tmp.replace(dest)


def build(plan: Plan) -> dict[str, float]:
    """Build into ``plan.out`` (the unpacked tree) and ``plan.zip_path``; returns the measured sizes."""
    check_config(plan)
    if plan.zip_path is not None:
        plan.zip_path.unlink(missing_ok=True)  # a failed build must not leave the last one to be deployed
    if plan.out.exists():
        shutil.rmtree(plan.out)
    plan.out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="costwatch-lambda-") as tmp:
        wheel = build_wheel(Path(tmp))
        pip_install(plan.out, [str(wheel)], plan, no_deps=True)
        pip_install(plan.out, requirements(wheel, plan), plan)
    prune(plan.out, plan)
    if plan.bytecode:
        compile_bytecode(plan.out, plan)
    if plan.config is not None:
        shutil.copy2(plan.config, plan.out / "costwatch.yaml")
    sizes = {"unzipped_mb": mb(tree_size(plan.out))}
    if sizes["unzipped_mb"] > LAMBDA_LIMIT_MB:
        raise BuildError(f"{sizes['unzipped_mb']} MB unzipped is over the Lambda limit of {LAMBDA_LIMIT_MB:.0f} MB; "
                         "leave out what the function does not need (--extras, no --with-stl); no zip written")
    if plan.zip_path is not None:
        make_zip(plan.out, plan.zip_path)
        sizes["zipped_mb"] = mb(plan.zip_path.stat().st_size)
    return sizes


def parse_args(argv: list[str] | None) -> Plan:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "build" / "lambda",
                    help="build directory; the unpacked tree goes to OUT/package (default: build/lambda)")
    ap.add_argument("--zip", type=Path, default=None, help="zip path (default: OUT/costwatch.zip)")
    ap.add_argument("--no-zip", action="store_true", help="only the unpacked tree")
    ap.add_argument("--python-version", default=DEFAULT_PYTHON, help="target interpreter, as the Lambda runtime")
    ap.add_argument("--platform", default=DEFAULT_PLATFORM,
                    help="wheel platform; manylinux2014_aarch64 for architecture: arm64")
    ap.add_argument("--extras", default="aws,slack", help="costwatch extras to package (default: aws,slack)")
    ap.add_argument("--with-stl", action="store_true",
                    help="keep statsmodels for band_method: stl (too big for a zip: for container images)")
    ap.add_argument("--runtime-boto3", action="store_true",
                    help="leave boto3/botocore out and use the Lambda runtime's (saves ~23 MB)")
    ap.add_argument("--constraint", type=Path, default=None,
                    help="pip constraints file pinning dependency versions, for a reproducible artifact")
    ap.add_argument("--config", type=Path, default=None, help="config to check and package as costwatch.yaml")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="ship sources only (every cold start then compiles what it imports)")
    ap.add_argument("--compile-with", default=None,
                    help="interpreter of --python-version to compile bytecode with (default: pythonX.Y on PATH)")
    a = ap.parse_args(argv)
    out = a.out.resolve()
    return Plan(python_version=a.python_version, platform=a.platform,
                extras=[e.strip() for e in a.extras.split(",") if e.strip()], with_stl=a.with_stl,
                runtime_boto3=a.runtime_boto3, config=a.config, out=out / "package",
                constraint=a.constraint.resolve() if a.constraint else None, bytecode=not a.no_bytecode,
                compile_with=a.compile_with,
                zip_path=None if a.no_zip else (a.zip or out / "costwatch.zip").resolve())


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    try:
        sizes = build(plan)
    except BuildError as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"build.py: error: {e.cmd[:4]} failed with exit status {e.returncode}", file=sys.stderr)
        return 2
    for why, n in sorted(plan.removed.items(), key=lambda kv: -kv[1]):
        print(f"removed {n:7.1f} MB  {why}")
    for what, n in plan.added.items():
        print(f"added   {n:7.1f} MB  {what}")
    print(f"unpacked: {plan.out}")
    if plan.zip_path is not None:
        print(f"artifact: {plan.zip_path}")
    print(f"size: {sizes['unzipped_mb']} MB unzipped"
          + (f", {sizes['zipped_mb']} MB zipped" if "zipped_mb" in sizes else "")
          + f" (Lambda limit {LAMBDA_LIMIT_MB:.0f} MB unzipped)")
    if sizes["unzipped_mb"] > MARGIN_MB:
        print(f"build.py: warning: above {MARGIN_MB:.0f} MB unzipped, little room for dependency growth",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
