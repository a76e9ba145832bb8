"""Shared fixtures. The real models and images live in ../shared beside the checkout (CI has them too);
their absence is an error, never a skip."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
MODELS = SHARED / "models"
DATA = SHARED / "data"
IMAGENET = DATA / "imagenet-sample"

if not MODELS.is_dir():
    raise RuntimeError(f"{MODELS} is missing: the tests need the shared models beside the checkout")


def run_cli(*args, cwd=None, check=None, env=None, timeout=900):
    """Run the installed ``sqcc`` console script as a user would; returns CompletedProcess."""
    e = dict(os.environ, **(env or {}))
    exe = Path(sys.executable).with_name("sqcc")
    p = subprocess.run([str(exe), *map(str, args)], cwd=cwd, capture_output=True, text=True, env=e,
                       timeout=timeout)
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


@pytest.fixture(scope="session")
def squeezenet_pkg(tmp_path_factory):
    """SqueezeNet 1.1 compiled once for the host and exported (used by many tests)."""
    import sqcc

    pkg = sqcc.compile("squeezenet1.1", target="host")
    path = tmp_path_factory.mktemp("pkg") / "sq.tar"
    pkg.export(path)
    return pkg, path
