"""The console scripts: from another directory, sweeps, eval / sample / compare, and one
line on stderr with a non-zero exit for each kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from genmod.cli import compare, eval, sample, train  # noqa: A004
from genmod.cli._common import EXIT_USER_ERROR
from genmod.training import train as train_run
from genmod.training.evaluate import find_runs
from tests.training.conftest import TINY, TINY_DATA, compose_train

REPO = Path(__file__).resolve().parents[2]
QUICK = (*TINY, *TINY_DATA)


def command(name: str) -> list[str]:
    """The installed console script beside this Python, else ``python -m genmod.cli.X``."""
    script = Path(sys.executable).parent / name
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", f"genmod.cli.{name.removeprefix('genmod-')}"]


def run_command(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [*command(name), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A Gaussian and a KDE with a learned bandwidth, trained on the same two moons."""
    root = tmp_path_factory.mktemp("runs")
    train_run(compose_train(root / "gaussian", "model=gaussian"))
    train_run(compose_train(root / "kde", "trainer.max_epochs=2"))
    return {"gaussian": root / "gaussian", "kde": root / "kde"}


def test_console_script_trains_from_another_directory(tmp_path):
    result = run_command("genmod-train", *QUICK, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "KDE" and metrics["estimator"] == "exact"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "train.log").is_file() and (run / ".hydra" / "config.yaml").is_file()
    last = [line for line in result.stdout.splitlines() if line.strip()][-1]
    assert f"tensorboard --logdir {run.resolve() / 'tensorboard'}" in last
    assert "Traceback" not in result.stderr


def test_sweep_makes_one_run_per_value_and_compare_ranks_them(tmp_path, cli):
    sweep = tmp_path / "sweep"
    result = run_command(
        "genmod-train", "-m", "model=gaussian,kde", f"hydra.sweep.dir={sweep}", *QUICK, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = find_runs(sweep)  # each job's directory names the override that varies
    assert [job.name for job in jobs] == ["0_model=gaussian", "1_model=kde"]
    models = [json.loads((job / "metrics.json").read_text())["model"] for job in jobs]
    assert models == ["Gaussian", "KDE"]

    status, out, _ = cli(compare, f"runs=[{sweep}]", f"hydra.run.dir={tmp_path / 'cmp'}")
    assert status == 0
    ranking = json.loads((tmp_path / "cmp" / "compare.json").read_text())["ranking"]
    assert [row["label"] for row in ranking] == ["model=kde", "model=gaussian"]
    assert ranking[0]["nll"] < ranking[1]["nll"]


def test_train_main_returns_val_nll_best_for_sweepers(tmp_path):
    cfg = compose_train(tmp_path / "run", "model=gaussian")
    best = train.main(cfg)
    assert best == pytest.approx(
        json.loads((tmp_path / "run" / "metrics.json").read_text())["val/nll_best"]
    )


def test_eval_scores_any_split_and_data(runs, cli, tmp_path):
    run = runs["kde"]
    metrics = json.loads((run / "metrics.json").read_text())
    status, _, err = cli(eval, f"ckpt_path={run}", f"hydra.run.dir={tmp_path / 'test'}")
    assert status == 0, err
    result = json.loads((tmp_path / "test" / "eval.json").read_text())
    assert result["test/nll"] == pytest.approx(metrics["test/nll"], rel=1e-5)
    assert result["estimator"] == "exact" and result["n"] == 40

    status, _, err = cli(
        eval, f"ckpt_path={run}", "split=val", "data=circles", "data.n_samples=500",
        f"hydra.run.dir={tmp_path / 'circles'}",
    )  # fmt: skip
    assert status == 0, err
    result = json.loads((tmp_path / "circles" / "eval.json").read_text())
    assert result["n"] == 50 and np.isfinite(result["val/nll"])
    assert result["val/nll"] > metrics["test/nll"]  # the moons model fits circles worse


def test_sample_writes_npy_and_picture_repeatably(runs, cli, tmp_path):
    for name in ("a", "b"):
        status, _, err = cli(
            sample, f"ckpt_path={runs['kde']}", "n=400", f"hydra.run.dir={tmp_path / name}"
        )
        assert status == 0, err
        assert (tmp_path / name / "samples.png").stat().st_size > 0
    a, b = (np.load(tmp_path / name / "samples.npy") for name in ("a", "b"))
    assert a.shape == (400, 2) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    # In data units the two moons are centred near (0.5, 0.25), not at the origin.
    np.testing.assert_allclose(a.mean(0), [0.5, 0.25], atol=0.15)


def test_compare_picks_the_better_of_two_models_of_known_order(runs, cli, tmp_path):
    # Two moons are far from Gaussian: the KDE must win, whichever order they are given in.
    status, out, err = cli(
        compare, f"a={runs['gaussian']}", f"b={runs['kde']}", f"hydra.run.dir={tmp_path}"
    )
    assert status == 0, err
    result = json.loads((tmp_path / "compare.json").read_text())
    assert [row["model"] for row in result["ranking"]] == ["KDE", "Gaussian"]
    # The table and the verdict are plain lines on stdout (the log file keeps them too).
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("rank "))
    assert lines[head + 2].startswith("1    ") and lines[head + 3].startswith("2    ")
    assert lines[-1] == result["verdict"]
    assert result["verdict"] in (tmp_path / "compare.log").read_text()
    assert result["verdict"].startswith(f"{runs['kde']} is better than {runs['gaussian']}")
    assert "clear" in result["verdict"]
    assert result["ranking"][1]["vs_best"]["z"] > 3


def _data_file(tmp_path: Path, name: str, values: np.ndarray) -> Path:
    path = tmp_path / name
    np.save(path, values)
    return path


BAD_TRAIN = {
    "missing data file": (("data=file", "data.path={tmp}/missing.npy"), "missing.npy"),
    "NaN in the data": (("data=file", "data.path={nan}"), "row 7"),
    "too few rows": (("data=file", "data.path={few}"), "needs at least"),
    "bad model value": (("model.bandwidth=-1",), "bandwidth must be finite and > 0"),
    "unknown model": (("model=flow",), "Could not find 'model/flow'"),
    "misspelled key": (("model.kernal=tophat",), "Could not override 'model.kernal'"),
    "unknown argument": (("+model.foo=1",), "model.foo is not an argument of KDE"),
    "bad trainer value": (("trainer.max_epochs=abc",), "trainer.max_epochs must be int"),
    "bad override syntax": (("model.kernel=[",), "cannot parse override"),
    "missing checkpoint": (("ckpt_path={tmp}/nope.ckpt",), "ckpt_path not found"),
    "required group left out": (("data=null",), "data=null: choose one of checkerboard"),
}


@pytest.mark.parametrize("override", ["logger=null", "scheduler=none", "scheduler=null"])
def test_optional_groups_are_left_out_with_null_or_none(override, cli, tmp_path):
    """Hydra refuses ``group=null`` with a traceback; the README offers these spellings."""
    run = tmp_path / "run"
    status, _, err = cli(train, override, *QUICK, "model=gaussian", f"hydra.run.dir={run}")
    assert status == 0, err
    assert (run / "metrics.json").is_file()
    assert (run / "tensorboard").is_dir() == (override != "logger=null")


@pytest.mark.parametrize("case", BAD_TRAIN, ids=list(BAD_TRAIN))
def test_bad_training_input_is_one_line_and_a_nonzero_exit(case, cli, tmp_path):
    overrides, expected = BAD_TRAIN[case]
    values = np.random.default_rng(0).normal(size=(100, 2))
    values[7, 1] = np.nan
    paths = {
        "tmp": tmp_path,
        "nan": _data_file(tmp_path, "nan.npy", values),
        "few": _data_file(tmp_path, "few.npy", np.zeros((3, 2))),
    }
    argv = [o.format(**paths) for o in overrides] + [f"hydra.run.dir={tmp_path / 'run'}"]
    status, _, err = cli(train, *argv, "data.batch_size=64")
    lines = err.strip().splitlines()
    assert status == EXIT_USER_ERROR
    assert len(lines) == 1 and lines[0].startswith("genmod-train: error: "), err
    assert expected in lines[0]
    assert not (tmp_path / "run").exists(), "a failed command left a run directory"


@pytest.mark.parametrize(
    ("module", "argv", "expected"),
    [
        (eval, ("ckpt_path={tmp}/nope.ckpt",), "checkpoint not found"),
        (eval, (), "Missing mandatory value: ckpt_path"),
        (eval, ("ckpt_path={run}", "split=holdout"), "split must be one of train, val, test"),
        (eval, ("ckpt_path={tmp}/junk.ckpt",), "not a readable checkpoint"),
        (sample, ("ckpt_path={run}", "n=0"), "n must be an int >= 1"),
        (sample, ("ckpt_path={run}", "noise=false"), "noise=false applies to latent-variable"),
        (compare, ("runs=[{run}]",), "need at least two models"),
        (compare, (), "runs is empty"),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_bad_input_to_the_other_commands(module, argv, expected, runs, cli, tmp_path):
    (tmp_path / "junk.ckpt").write_text("junk")
    argv = [a.format(tmp=tmp_path, run=runs["kde"]) for a in argv]
    status, _, err = cli(module, *argv, f"hydra.run.dir={tmp_path / 'out'}")
    lines = err.strip().splitlines()
    assert status == EXIT_USER_ERROR
    assert len(lines) == 1 and lines[0].startswith(f"genmod-{module.__name__.split('.')[-1]}")
    assert expected in lines[0], lines[0]
    assert not (tmp_path / "out").exists(), "a failed command left a run directory"


def test_a_failing_process_prints_no_traceback(tmp_path):
    values = np.ones((50, 3))
    values[4, 0] = np.inf
    path = _data_file(tmp_path, "bad.npy", values)
    result = run_command("genmod-train", "data=file", f"data.path={path}", cwd=tmp_path)
    assert result.returncode == EXIT_USER_ERROR
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("genmod-train: error: ") and "bad.npy" in line and "row 4" in line


@pytest.mark.parametrize("module", [eval, sample, compare], ids=lambda m: m.__name__)
def test_help_of_the_other_commands_shows_their_own_settings(module, cli):
    """They share the config folder with genmod-train, whose groups they do not take."""
    status, out, err = cli(module, "--help")
    name = module.__name__.split(".")[-1]
    assert status == 0, err
    assert out.startswith(f"genmod-{name}: ") and f"task_name: {name}" in out
    assert "Configuration groups" not in out and "optimizer" not in out


def test_eval_data_null_is_its_default_the_stored_data(runs, cli, tmp_path):
    run = runs["kde"]
    status, _, err = cli(eval, f"ckpt_path={run}", "data=null", f"hydra.run.dir={tmp_path}")
    assert status == 0, err
    result = json.loads((tmp_path / "eval.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert result["test/nll"] == pytest.approx(metrics["test/nll"], rel=1e-5)


def test_eval_explains_an_infinite_nll_by_the_examples_of_zero_density(cli, tmp_path):
    run = tmp_path / "run"
    compact = ("model.kernel=epanechnikov", "model.bandwidth=0.05", "model.learn_bandwidth=false")
    train_run(compose_train(run, *compact, "~callbacks.density_figures"))
    out = tmp_path / "eval"
    status, _, err = cli(eval, f"ckpt_path={run}", "data=checkerboard", f"hydra.run.dir={out}")
    assert status == 0, err
    result = json.loads((out / "eval.json").read_text())
    zero = result["test/zero_density"]
    assert 0 < zero <= result["n"] and result["test/nll"] == "inf"
    log = (out / "eval.log").read_text()
    assert f"{zero} of {result['n']} examples have zero density" in log
    assert "+- nan" not in log
