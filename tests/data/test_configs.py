from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from genmod.data import DATASETS, TOY_NOISE, DensityDataModule

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "data"


def test_one_config_per_dataset():
    assert sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) == sorted(DATASETS)


@pytest.mark.parametrize("name", [n for n in DATASETS if n != "file"])
def test_config_instantiates_the_module_it_names(name):
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    assert cfg._target_ == "genmod.data.DensityDataModule" and cfg.name == name
    if name in TOY_NOISE:
        assert cfg.noise == TOY_NOISE[name]
        cfg.n_samples = 200
    dm = instantiate(cfg)
    assert isinstance(dm, DensityDataModule)
    dm.setup()
    assert dm.train_data.shape[1] == (64 if name == "digits" else 2)


def test_file_config_needs_a_path(tmp_path):
    cfg = OmegaConf.load(CONFIG_DIR / "file.yaml")
    with pytest.raises(MissingMandatoryValue):
        instantiate(cfg)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(50, 6)))
    overrides = OmegaConf.from_dotlist([f"path={tmp_path / 'x.npy'}", "image_shape=[2,3]"])
    dm = instantiate(OmegaConf.merge(cfg, overrides))
    dm.setup()
    assert dm.dim == 6 and dm.image_shape == (2, 3)
    assert dm.train_data.dtype == torch.float32
