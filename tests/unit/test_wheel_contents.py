"""The wheel is what the image installs: it must hold everything the flow needs at run time,
under the one import name `splitpin`, and run without the checkout.

No Docker engine is available here, so the image is guarded through its only input: the
wheel that the Dockerfile's build stage makes with the same `pip wheel` command.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from splitpin.core.settings import REPO_ROOT

pytestmark = pytest.mark.skipif(
    not (REPO_ROOT / "pyproject.toml").is_file(), reason="needs the checkout to build the wheel"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # A copy of the sources, so no stale build/ of the checkout can slip into the wheel.
    source = tmp_path_factory.mktemp("source") / "splitpin"
    shutil.copytree(
        REPO_ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
        ),
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "--wheel-dir",
            str(out),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("splitpin-*.whl")
    return built


@pytest.fixture(scope="module")
def names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def _sources() -> Iterator[Path]:
    """Every module of the package as the checkout lays it out (links followed)."""
    package = REPO_ROOT / "splitpin"
    for path in package.rglob("*.py"):
        if "__pycache__" not in path.parts:
            yield path


def test_the_only_top_level_name_is_splitpin(names: set[str]) -> None:
    tops = {name.split("/", 1)[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"splitpin"}


def test_every_module_and_data_file_the_flow_loads_is_inside(names: set[str]) -> None:
    missing = [
        str(path.relative_to(REPO_ROOT))
        for path in _sources()
        if str(path.relative_to(REPO_ROOT)) not in names
    ]
    assert not missing, f"modules missing from the wheel: {missing}"
    data = [
        "splitpin/defaults/governance.yaml",
        "splitpin/core/router/artifacts/manifest.json",
        "splitpin/core/router/artifacts/heads.npz",
        "splitpin/core/router/artifacts/vocab.json",
        "splitpin/providers/kb/banking77.jsonl",
        "splitpin/providers/kb/abcd.jsonl",
        "splitpin/providers/kb/smalltalk.jsonl",
        "splitpin/schemas/json/conversation-event.schema.json",
    ]
    assert [name for name in data if name not in names] == []


def test_the_wheel_runs_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    """A fresh environment with only the wheel (its dependencies reached through a path
    entry, never the editable checkout) runs the CLI from an unrelated directory."""
    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Dependencies only: a plain path entry does not run the editable install's .pth hook.
    Path(site, "splitpin-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "-q",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "schemas.py").write_text("raise SystemExit('the generic name was imported')\n")
    env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}

    def splitpin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(env_dir / "bin" / "splitpin"), *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    version = splitpin("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip().startswith("splitpin ")
    validated = splitpin("config", "validate")
    assert validated.returncode == 0, validated.stderr
    assert "site-packages" in validated.stdout  # the packaged default, found without a checkout
    written = splitpin("config", "init", "governance.yaml")
    assert written.returncode == 0, written.stderr
    assert (work / "governance.yaml").is_file()
    again = splitpin("config", "validate", "governance.yaml")
    assert again.returncode == 0, again.stderr
    origin = subprocess.run(
        [str(python), "-c", "import splitpin, sys; print(splitpin.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(REPO_ROOT) not in origin
