"""The README's "Testing your handlers" example is run as it stands, so the docs cannot rot.

The example is copied out of README.md into a scratch test file and run by a
pytest of its own, from the project root (where ``handlers/`` holds the
example handlers it uses), with the plugin loaded as the entry point would.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.e2e.harness import REPO_ROOT, clean_env


def readme_example() -> str:
    """The first python block of the README's "Testing your handlers" section."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Testing your handlers\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "the section lost its example"
    return match.group(1)


def test_the_readme_example_passes(tmp_path: Path) -> None:
    example = tmp_path / "test_readme_example.py"
    example.write_text(readme_example())

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(example),
            "-p",
            "supervisor.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(REPO_ROOT),
            "-c",
            str(REPO_ROOT / "pyproject.toml"),
            "-q",
        ],
        cwd=REPO_ROOT,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )

    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "6 passed" in done.stdout
