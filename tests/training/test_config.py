"""Every config composes, and the keys that tie config groups together resolve as documented."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from genmod.cli import config_dir
from genmod.training.build import build_model, check_arguments

CONFIGS = config_dir()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def compose_plain(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(name, overrides=["paths.output_dir=/tmp/unused", *overrides])


def test_configs_are_found_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_dir() == Path(__file__).resolve().parents[2] / "configs"
    assert {"train.yaml", "eval.yaml", "sample.yaml", "compare.yaml"} <= {
        p.name for p in config_dir().glob("*.yaml")
    }


def test_installed_configs_take_precedence_over_a_checkout(tmp_path):
    wheel = tmp_path / "site-packages" / "genmod"
    (wheel / "configs").mkdir(parents=True)
    (wheel / "configs" / "train.yaml").write_text("task_name: train\n")
    assert config_dir(wheel) == wheel / "configs"
    checkout = tmp_path / "repo" / "genmod"
    checkout.mkdir(parents=True)
    (tmp_path / "repo" / "configs").mkdir()
    (tmp_path / "repo" / "configs" / "train.yaml").write_text("task_name: train\n")
    assert config_dir(checkout) == tmp_path / "repo" / "configs"
    with pytest.raises(FileNotFoundError, match="genmod configs not found"):
        config_dir(tmp_path / "nowhere" / "genmod")


@pytest.mark.parametrize(
    "override",
    [f"model={m}" for m in options("model")]
    + ["data=digits", "data=file data.path=x.npy"]
    + [f"experiment={e}" for e in options("experiment")]
    + [f"debug={d}" for d in options("debug")]
    + [f"trainer={t}" for t in options("trainer")]
    + [f"logger={lg}" for lg in options("logger")]
    + [f"callbacks={c}" for c in options("callbacks")]
    + [f"optimizer={o}" for o in options("optimizer")]
    + [f"scheduler={s}" for s in options("scheduler")],
)
def test_every_option_composes_and_resolves(override):
    cfg = compose_plain("train", *override.split())
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["model"]["_target_"].startswith("genmod.")
    assert resolved["data"]["_target_"] == "genmod.data.DensityDataModule"
    assert resolved["optimizer"]["lr"] > 0
    if override.startswith(("trainer=", "debug=")):
        trainer = {k: v for k, v in resolved["trainer"].items() if not k.startswith("_")}
        check_arguments(L.Trainer, trainer, "trainer")


@pytest.mark.parametrize("name", ["eval", "sample", "compare"])
def test_other_commands_compose(name):
    cfg = compose_plain(name, "ckpt_path=x" if name != "compare" else "runs=[a,b]")
    assert cfg.task_name == name


@pytest.mark.parametrize(
    ("overrides", "lr"),
    [
        (("model=kde",), 0.05),
        (("model=gaussian",), 0.05),
        (("model=lvm",), 0.01),
        (("model=kde", "optimizer.lr=0.2"), 0.2),
        (("model=kde", "model.lr=0.3", "optimizer=sgd"), 0.3),
    ],
)
def test_learning_rate_defaults_to_the_model_config(overrides, lr):
    cfg = compose_plain("train", *overrides)
    assert OmegaConf.to_container(cfg.optimizer, resolve=True)["lr"] == pytest.approx(lr)


def test_training_keys_are_not_passed_to_the_model():
    class FakeData:
        dim = 3

    cfg = compose_plain("train", "model=gaussian", "model.covariance=diag")
    model, switches = build_model(cfg.model, FakeData())
    assert model.dim == 3 and model.covariance_type == "diag"
    assert switches == {"fit_closed_form": True, "fit_bandwidth": False}
