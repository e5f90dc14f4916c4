"""The wheel carries every module, the config tree and the assets, and Hydra finds conf/ from the install."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(ROOT),
                    "-w", str(out)], check=True, cwd=out)
    (wheel,) = out.glob("simpletuner_pl-*.whl")
    return wheel


def test_wheel_contains_all_modules_configs_and_assets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(p.relative_to(ROOT)) for p in (ROOT / "simpletuner_pl").rglob("*.py")}
    expected |= {"simpletuner_pl/conf/" + str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")}
    expected |= {str(p.relative_to(ROOT)) for p in (ROOT / "simpletuner_pl" / "assets").rglob("*") if p.is_file()}
    assert expected - names == set()


def test_installed_wheel_composes_from_its_own_config_tree(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True)
    code = ("from simpletuner_pl.config import compose; from simpletuner_pl.paths import config_dir, demo_data_dir; "
            "import os; "
            "c = compose(['experiment=demo']); print(config_dir()); print(c.model.tiny); "
            "print(len(os.listdir(demo_data_dir())))")
    env = dict(os.environ, PYTHONPATH=str(target))
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    conf, tiny, n_assets = result.stdout.split()
    assert conf == str(target / "simpletuner_pl" / "conf")
    assert tiny == "True" and int(n_assets) >= 10
