"""Checkpoints are data: hostile checkpoints given to every reader run no code and import no
foreign module; bad checkpoints given to genmod-train are one line, exit 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from genmod.cli import train as train_cli
from genmod.cli._common import EXIT_USER_ERROR
from genmod.training import train
from tests.cli.test_cli import run_command
from tests.training.conftest import TINY, TINY_DATA, compose_train

SENTINEL = "genmod_hostile_sentinel"
"""A module that records its own import: if any reader imports it, code from a checkpoint ran."""


def _pickle_calling(module: str, name: str) -> bytes:
    """Pickle bytes whose loading imports ``module`` and calls ``module.name()``."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n)R."


@pytest.fixture(scope="module")
def trusted(tmp_path_factory) -> Path:
    """A genuine genmod run (a KDE on two moons) whose checkpoint the attacks start from."""
    root = tmp_path_factory.mktemp("trusted")
    quick = (*TINY, "~callbacks.density_figures")
    train(compose_train(root / "run", *quick))
    return root / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture
def sentinel(tmp_path) -> tuple[Path, Path]:
    """``(directory holding the sentinel module, file it writes when imported)``."""
    marker = tmp_path / "imported.txt"
    package = tmp_path / "pkgs"
    package.mkdir()
    (package / f"{SENTINEL}.py").write_text(
        f"open({str(marker)!r}, 'a').write('imported\\n')\n"
        "def boom(*args, **kwargs):\n"
        f"    open({str(marker)!r}, 'a').write('called\\n')\n"
        "class Model:\n"
        "    pass\n"
    )
    return package, marker


ATTACKS = {
    # The chain of the report: torch.load of pickle bytes with weights_only=False.
    "torch.load chain": lambda: {
        "_target_": "torch.load",
        "f": {"_target_": "io.BytesIO", "_args_": [_pickle_calling(SENTINEL, "boom")]},
        "weights_only": False,
    },
    "foreign target": lambda: {"_target_": f"{SENTINEL}.boom", "name": "moons"},
    "nested target": lambda: {
        "_target_": "genmod.data.DensityDataModule",
        "name": "moons",
        "noise": {"_target_": f"{SENTINEL}.boom"},
    },
    "hydra keys": lambda: {
        "_target_": "genmod.data.DensityDataModule",
        "_args_": [{"_target_": f"{SENTINEL}.boom"}],
    },
}


def _hostile(trusted: Path, out: Path, *, data=None, model_class=None) -> Path:
    checkpoint = torch.load(trusted, weights_only=True)
    if data is not None:
        checkpoint["genmod"]["data"] = data
    if model_class is not None:
        checkpoint["genmod"]["model_class"] = model_class
    torch.save(checkpoint, out)
    torch.load(out, weights_only=True)  # the premise: it passes torch's safe loader
    return out


def _run(name: str, *args: str, cwd: Path, package: Path):
    """A console script with the sentinel importable (as a downloaded package would be)."""
    import os

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(package), old) if p)
    try:
        return run_command(name, *args, cwd=cwd)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = old


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_no_reader_runs_code_from_a_hostile_data_config(attack, trusted, sentinel, tmp_path):
    package, marker = sentinel
    bad = _hostile(trusted, tmp_path / "bad.ckpt", data=ATTACKS[attack]())
    commands = {
        "genmod-eval": (f"ckpt_path={bad}",),
        "genmod-compare": (f"runs=[{bad},{trusted}]",),
        "genmod-sample": (f"ckpt_path={bad}", "n=10"),
    }
    for name, args in commands.items():
        out = tmp_path / name
        result = _run(name, *args, f"hydra.run.dir={out}", cwd=tmp_path, package=package)
        assert not marker.exists(), f"{name} ran code from the checkpoint ({attack})"
        if name == "genmod-sample":  # samples need no data: it only declines to show them
            assert result.returncode == 0, result.stderr
            assert "data not shown" in result.stdout + result.stderr
            continue
        assert result.returncode == EXIT_USER_ERROR, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert "stored data config" in line, line
        assert not out.exists(), f"{name} left a run directory behind"


def test_load_model_never_imports_a_foreign_model_class(trusted, sentinel, tmp_path):
    package, marker = sentinel
    for name in (f"{SENTINEL}:Model", "this:s", f"{SENTINEL}.boom"):
        bad = _hostile(trusted, tmp_path / "bad.ckpt", model_class=name)
        script = (
            "import sys, genmod\n"
            f"try:\n    genmod.load_model({str(bad)!r})\n"
            "except ValueError as err:\n    print('refused:', err)\n"
            f"assert {SENTINEL!r} not in sys.modules and 'this' not in sys.modules\n"
        )
        result = _run("python", "-c", script, cwd=tmp_path, package=package)
        assert result.returncode == 0, result.stderr
        assert "refused: checkpoint: " in result.stdout, result.stdout
        assert not marker.exists()
        evaluated = _run("genmod-eval", f"ckpt_path={bad}", f"hydra.run.dir={tmp_path / 'e'}",
                         cwd=tmp_path, package=package)  # fmt: skip
        assert evaluated.returncode == EXIT_USER_ERROR and not marker.exists()


def test_resume_refuses_a_hostile_checkpoint_without_running_it(trusted, sentinel, tmp_path):
    package, marker = sentinel
    raw = tmp_path / "pickle.ckpt"
    raw.write_bytes(_pickle_calling(SENTINEL, "boom"))
    foreign = _hostile(trusted, tmp_path / "foreign.ckpt", model_class=f"{SENTINEL}:Model")
    for bad in (raw, foreign):
        argv = (*TINY, *TINY_DATA, f"ckpt_path={bad}", f"hydra.run.dir={tmp_path / 'run'}")
        result = _run("genmod-train", *argv, cwd=tmp_path, package=package)
        assert result.returncode == EXIT_USER_ERROR, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("genmod-train: error: ") and str(bad) in line, line
        assert "weights_only=False" not in result.stderr + result.stdout
        assert not marker.exists() and not (tmp_path / "run").exists()


def _bad_checkpoints(trusted: Path, tmp: Path) -> dict[str, Path]:
    data = trusted.read_bytes()
    files = {
        "truncated": data[: len(data) // 3],
        "empty": b"",
        "random bytes": torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes(),
    }
    paths = {}
    for name, content in files.items():
        paths[name] = tmp / f"{name.replace(' ', '_')}.ckpt"
        paths[name].write_bytes(content)
    paths["not genmod's"] = tmp / "foreign.ckpt"
    torch.save({"state_dict": {"weight": torch.zeros(3)}}, paths["not genmod's"])
    return paths


EXPECTED = {
    "truncated": "is not a readable checkpoint",
    "empty": "is not a readable checkpoint",
    "random bytes": "is not a readable checkpoint",
    "not genmod's": "no 'genmod' entry",
    "another model": "holds a KDE, but this run builds a Gaussian",
    "another dimension": "does not fit this run: model.data has shape [320, 2] there",
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_a_bad_resume_checkpoint_is_one_line_and_writes_nothing(case, trusted, cli, tmp_path):
    paths = _bad_checkpoints(trusted, tmp_path)
    overrides = {"another model": ("model=gaussian",)}
    path = paths.get(case, trusted)
    run = trusted.parent.parent
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    data = ("data=digits",) if case == "another dimension" else TINY_DATA
    argv = (*TINY, *data, *overrides.get(case, ()), f"ckpt_path={path}")
    status, out, err = cli(train_cli, *argv, f"hydra.run.dir={tmp_path / 'new'}")
    assert status == EXIT_USER_ERROR
    (line,) = err.strip().splitlines()
    assert line.startswith("genmod-train: error: ") and EXPECTED[case] in line, line
    assert "weights_only=False" not in out + err
    assert not (tmp_path / "new").exists()
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before  # untouched


def test_stored_data_config_is_checked_as_data():
    from genmod.data.options import check_stored_config

    good = {"_target_": "genmod.data.DensityDataModule", "name": "moons", "image_shape": None}
    assert check_stored_config(good, "c.ckpt") == {"name": "moons", "image_shape": None}
    for attack in ATTACKS.values():
        with pytest.raises(ValueError, match="c.ckpt"):
            check_stored_config(attack(), "c.ckpt")
    with pytest.raises(ValueError, match="not a mapping"):
        check_stored_config(["moons"], "c.ckpt")
