"""The conda environment and pyproject describe the same environment; the Makefile is what CI runs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r): r for r in py["dependencies"] + py["optional-dependencies"]["dev"]}
    pip = re.findall(r"^\s+- ([^#\n]+?)\s*$", (ROOT / "environment.yml").read_text(), flags=re.M)
    env = {_name(r): r for r in pip if not r.startswith("-e") and "=" in r or r.startswith(("torch",))}
    env = {k: v for k, v in env.items() if k not in ("python", "pip")}
    assert set(env) == set(wanted), set(env) ^ set(wanted)
    for name, req in wanted.items():
        if name == "torch":  # pyproject allows a range; the environment pins the tested build
            assert env[name] == "torch==" + re.search(r"TORCH_VERSION \?= (\S+)", (ROOT / "Makefile").read_text())[1]
        else:
            assert env[name] == req, (name, env[name], req)


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci and "make test" in readme and "make run" in readme


def test_pins_and_no_deps_wheels_are_declared_where_the_environment_is():
    make = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in make and "--no-deps -r requirements-nodeps.txt" in make
    assert "requirements-nodeps.txt" in (ROOT / "environment.yml").read_text()
    pins = {_name(r.split("==")[0]): r.split("==")[1] for r in (ROOT / "constraints.txt").read_text().splitlines()
            if "==" in r and not r.startswith("#")}
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in py["dependencies"] + py["optional-dependencies"]["dev"]:
        assert _name(req) in pins, f"{req} has no exact pin in constraints.txt (run make lock)"
    for line in (ROOT / "requirements-nodeps.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            assert pins.get(_name(name)) == version, f"{name} pinned differently in constraints.txt"


def test_ci_lints_and_notebooks_are_stripped_on_commit():
    assert "make lint" in (ROOT / ".ci" / "run").read_text()
    assert "filter=nbstripout" in (ROOT / ".gitattributes").read_text()
