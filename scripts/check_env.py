"""Which of the project's requirements a Python environment lacks. Reads metadata only: no network, no install.

    python scripts/check_env.py [--no-deps REQ]... [REQ]...

Prints one unmet requirement per line with the reason (nothing when all are met); exit code 0 when all are met,
1 otherwise. Checked: the project itself (`vtp-scaling`, installed editable by `make install`), the
`dependencies` and the `test` extra of pyproject.toml, and each REQ (the pins `scripts/install.sh` installs from
their own command line). A requirement is met when an installed distribution has a version it allows and,
recursively, so do the requirements that distribution declares (with the extras asked for); a `--no-deps`
requirement is checked alone, because it is installed without its dependencies on purpose.

It runs under the environment's own interpreter before anything is installed there, so it needs only the
standard library and `packaging` (pip's vendored copy when the environment has no other).
"""
from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a fresh venv: pip is there, packaging may not be
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> tuple[str, list[str]]:
    """(the project's distribution name, its dependencies + the `test` extra)."""
    proj = tomllib.loads(pyproject.read_text())["project"]
    return proj["name"], [*proj["dependencies"], *proj.get("optional-dependencies", {}).get("test", [])]


def unmet(reqs: list[str], no_deps: list[str] = ()) -> list[str]:
    """`name<spec>: why` for every requirement (and, for `reqs`, every dependency under it) not satisfied here."""
    problems: list[str] = []
    seen: set = set()
    todo = [(Requirement(r), True, "") for r in reqs] + [(Requirement(r), False, "") for r in no_deps]
    while todo:
        req, deep, via = todo.pop(0)
        key = (canonicalize_name(req.name), str(req.specifier), tuple(sorted(req.extras)), deep)
        if key in seen:
            continue
        seen.add(key)
        shown = f"{req.name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}{req.specifier}{via}"
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{shown}: not installed")
            continue
        if req.specifier and not req.specifier.contains(dist.version, prereleases=True):
            problems.append(f"{shown}: {dist.version} is installed")
            continue
        if not deep:
            continue
        extras = {"", *req.extras}
        for text in dist.requires or []:
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras):
                dep.marker = None
                todo.append((dep, True, f" (for {dist.metadata['Name']})"))
    return problems


def main(argv: list[str]) -> int:
    extra, no_deps = [], []
    it = iter(argv)
    for a in it:
        if a == "--no-deps":
            no_deps.append(next(it))
        else:
            extra.append(a)
    name, reqs = project_requirements()
    problems = unmet([*reqs, *extra], [name, *no_deps])
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
