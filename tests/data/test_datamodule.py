import math

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal

from genmod.data import DataError, DensityDataModule, load_digits, make_toy

F64 = torch.float64


def _module(**kwargs) -> DensityDataModule:
    dm = DensityDataModule(**kwargs)
    dm.setup()
    return dm


def _id_file(tmp_path, n=101, extra=None):
    """A file whose first column is the row id, so splits can be traced to rows."""
    rng = np.random.default_rng(1)
    x = np.column_stack([np.arange(n, dtype=np.float64), rng.normal(2.0, 3.0, size=(n, 2))])
    if extra is not None:
        x = np.column_stack([x, extra])
    f = tmp_path / "ids.npy"
    np.save(f, x)
    return f, x


def test_split_sizes_disjoint_and_complete(tmp_path):
    f, x = _id_file(tmp_path)
    dm = _module(name="file", path=f, val_fraction=0.2, test_fraction=0.1)
    ids = {s: dm.raw_split(s, F64)[:, 0].long() for s in ("train", "val", "test")}
    assert [len(v) for v in ids.values()] == [71, 20, 10]
    assert sorted(torch.cat(list(ids.values())).tolist()) == list(range(101))
    for s, rows in ids.items():
        assert torch.equal(dm.raw_split(s, F64), torch.from_numpy(x)[rows])


def test_toy_rows_are_the_seeded_draw():
    dm = _module(name="circles", n_samples=500, seed=7)
    ref = make_toy("circles", 500, generator=torch.Generator().manual_seed(7))
    rows = torch.cat([dm.raw_split(s) for s in ("train", "val", "test")])
    assert torch.equal(rows[rows[:, 0].argsort()], ref[ref[:, 0].argsort()])


def test_same_seed_same_split_other_seed_differs():
    a, b = _module(name="moons", n_samples=300), _module(name="moons", n_samples=300)
    c = _module(name="moons", n_samples=300, seed=1)
    for s in ("train_data", "val_data", "test_data"):
        assert torch.equal(getattr(a, s), getattr(b, s))
    assert not torch.equal(a.train_data, c.train_data)


def test_setup_is_idempotent():
    dm = _module(name="moons", n_samples=200)
    train, mean = dm.train_data, dm.mean
    dm.setup("fit")
    dm.setup("test")
    assert dm.train_data is train and torch.equal(dm.mean, mean)


def test_standardisation_uses_train_statistics_only(tmp_path):
    f, x = _id_file(tmp_path, n=400)
    dm = _module(name="file", path=f)
    assert dm.train_data.dtype == dm.mean.dtype == dm.scale.dtype == torch.float32
    assert dm.train_data.double().mean(0).abs().max().item() < 1e-6
    assert dm.train_data.double().std(0, correction=0).tolist() == pytest.approx([1.0] * 3, 1e-5)
    train = dm.raw_split("train", F64)
    assert dm.mean.double().tolist() == pytest.approx(train.mean(0).tolist(), rel=1e-6)
    assert dm.scale.double().tolist() == pytest.approx(train.std(0, correction=0).tolist(), 1e-6)
    for s, data in (("val", dm.val_data), ("test", dm.test_data)):
        expected = (dm.raw_split(s, F64) - train.mean(0)) / train.std(0, correction=0)
        torch.testing.assert_close(data, expected.float(), rtol=1e-5, atol=1e-6)
    assert dm.val_data.double().mean(0).abs().max().item() > 1e-3  # not re-centred
    assert dm.log_scale_sum == pytest.approx(float(torch.log(train.std(0, correction=0)).sum()))


def test_without_standardisation_the_data_is_raw():
    dm = _module(name="eight_gaussians", n_samples=300, standardize=False)
    assert dm.mean.tolist() == [0.0, 0.0] and dm.scale.tolist() == [1.0, 1.0]
    assert dm.log_scale_sum == 0.0
    assert torch.equal(dm.train_data, dm.raw_split("train"))
    assert "raw values" in dm.describe()


@pytest.mark.parametrize("name", ["pinwheel", "digits"])
def test_nll_in_data_units_is_standardised_nll_plus_log_scale_sum(name):
    dm = _module(name=name, n_samples=2000)
    train, x_test = dm.raw_split("train", F64), dm.raw_split("test", F64)
    m, s = train.mean(0), train.std(0, correction=0)  # float64, independent of the module
    torch.testing.assert_close(dm.scale, s.float())
    # a full-covariance Gaussian fitted (MLE) in standardised space, in float64
    z_train = (train - m) / s
    mu = z_train.mean(0)
    cov = torch.cov(z_train.T, correction=0) + 1e-6 * torch.eye(dm.dim, dtype=F64)
    nll_std = -MultivariateNormal(mu, cov).log_prob((x_test - m) / s).mean()
    # the same model mapped to data units: x = m + s * z
    p = MultivariateNormal(m + s * mu, covariance_matrix=s[:, None] * cov * s[None, :])
    nll_data = -p.log_prob(x_test).mean()
    assert (nll_std + dm.log_scale_sum).item() == pytest.approx(nll_data.item(), rel=1e-12)
    assert abs(dm.log_scale_sum) > 0.1  # the correction is not trivially zero


def test_data_unit_maps_round_trip_and_check_shape():
    dm = _module(name="two_spirals", n_samples=300)
    x = dm.raw_split("val", F64)
    z = dm.from_data_units(x)
    torch.testing.assert_close(dm.to_data_units(z), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(z.float(), dm.val_data)
    batch = torch.randn(4, 5, 2)
    assert dm.to_data_units(batch).shape == (4, 5, 2)
    with pytest.raises(ValueError, match="D=2"):
        dm.to_data_units(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="x must"):
        dm.from_data_units(torch.zeros(3, 2, dtype=torch.long))


def test_zero_variance_column_stays_finite(tmp_path):
    f, _ = _id_file(tmp_path, n=60, extra=np.full(60, 3.25))
    dm = _module(name="file", path=f)
    assert dm.scale[3].item() == 1.0 and dm.mean[3].item() == 3.25
    assert math.isfinite(dm.log_scale_sum)
    for data in (dm.train_data, dm.val_data, dm.test_data):
        assert torch.isfinite(data).all() and (data[:, 3] == 0).all()


def test_all_constant_integer_file_without_dequantisation(tmp_path):
    f = tmp_path / "flat.csv"
    f.write_text("a,b\n" + "1,2\n" * 20)
    dm = _module(name="file", path=f, dequantize=False)
    assert dm.log_scale_sum == 0.0 and not dm.dequantized
    assert (dm.train_data == 0).all()


def test_digits_are_dequantised_images():
    dm = _module(name="digits")
    assert dm.dim == 64 and dm.image_shape == (8, 8) and dm.dequantized
    raw = torch.cat([dm.raw_split(s, F64) for s in ("train", "val", "test")])
    assert raw.shape == (1797, 64)
    assert (raw >= 0).all() and (raw < 17).all()
    assert not (raw == raw.round()).any()
    # each value is its integer pixel plus U[0, 1)
    ref = load_digits(dtype=F64)
    assert torch.equal(raw.floor().sum(0), ref.sum(0))
    u = raw - raw.floor()
    assert u.mean().item() == pytest.approx(0.5, abs=0.01)
    assert torch.equal(_module(name="digits").test_data, dm.test_data)  # fixed noise
    plain = _module(name="digits", dequantize=False)
    assert not plain.dequantized
    assert torch.equal(plain.raw_split("train"), plain.raw_split("train").round())
    assert "images 8x8" in dm.describe() and "dequantised" in dm.describe()


def test_integer_files_are_dequantised_and_real_files_are_not(tmp_path):
    ints, reals = tmp_path / "ints.npy", tmp_path / "reals.npy"
    np.save(ints, np.arange(40).reshape(20, 2))
    np.save(reals, np.arange(40).reshape(20, 2) + 0.5)
    assert _module(name="file", path=ints).dequantized
    dm = _module(name="file", path=reals)
    assert not dm.dequantized
    assert torch.equal(dm.raw_split("train"), dm.raw_split("train").floor() + 0.5)


def test_image_shape_override_for_files(tmp_path):
    f = tmp_path / "img.npy"
    np.save(f, np.random.default_rng(0).normal(size=(30, 12)))
    assert _module(name="file", path=f, image_shape=[3, 4]).image_shape == (3, 4)
    assert _module(name="file", path=f).image_shape is None
    with pytest.raises(DataError, match=r"image_shape \[5, 5\] has 25 pixels.*D=12"):
        _module(name="file", path=f, image_shape=[5, 5])


def test_dataloaders_yield_rows_with_their_index():
    dm = _module(name="checkerboard", n_samples=1000, batch_size=64, eval_batch_size=70)
    seen = []
    for batch in dm.train_dataloader():
        assert isinstance(batch, tuple) and len(batch) == 2
        x, index = batch
        assert x.dtype == torch.float32 and index.dtype == torch.int64
        assert torch.equal(x, dm.train_data[index])
        seen.append(index)
    order = torch.cat(seen)
    assert sorted(order.tolist()) == list(range(800))
    assert not torch.equal(order, torch.arange(800))  # shuffled
    for loader, data in ((dm.val_dataloader(), dm.val_data), (dm.test_dataloader(), dm.test_data)):
        batches = list(loader)
        assert [len(b[0]) for b in batches] == [70, 30]
        assert torch.equal(torch.cat([b[1] for b in batches]), torch.arange(100))
        assert torch.equal(torch.cat([b[0] for b in batches]), data)


def test_loaders_fetch_a_batch_with_one_gather(monkeypatch):
    """The loaders call ``__getitems__`` once per batch (never ``__getitem__`` per row), and
    give what per-row fetching and :func:`collate_indexed` would."""
    from genmod.data.batches import BatchedIndexedDataset, IndexedTensorDataset, collate_indexed

    dm = _module(name="moons", n_samples=500, batch_size=64)
    loader = dm.train_dataloader()
    assert isinstance(loader.dataset, BatchedIndexedDataset)
    loader.sampler.set_epoch(2)
    indices = list(loader.sampler)
    per_row = [
        collate_indexed([IndexedTensorDataset(dm.train_data)[i] for i in indices[k : k + 64]])
        for k in range(0, len(indices), 64)
    ]

    def refuse(self, index):
        raise AssertionError("a row fetched alone")

    monkeypatch.setattr(BatchedIndexedDataset, "__getitem__", refuse)
    batched = list(loader)
    assert len(batched) == len(per_row) == 7
    for (x, i), (x_ref, i_ref) in zip(batched, per_row, strict=True):
        assert torch.equal(x, x_ref) and torch.equal(i, i_ref)


def test_train_order_is_a_function_of_seed_and_epoch():
    def order(dm, epoch):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return torch.cat([index for _, index in loader])

    a, b = _module(name="moons", n_samples=500), _module(name="moons", n_samples=500)
    assert torch.equal(order(a, 0), order(b, 0))
    assert not torch.equal(order(a, 0), order(a, 1))
    assert torch.equal(order(a, 3), order(b, 3))  # a resumed run replays epoch 3 exactly


def test_describe_is_one_line():
    line = _module(name="moons", n_samples=1000).describe()
    assert "\n" not in line
    assert "moons: 1000 rows x 2 dims" in line and "train 800 / val 100 / test 100" in line


def test_hparams_rebuild_the_same_data(tmp_path):
    f, _ = _id_file(tmp_path)
    dm = _module(name="file", path=f, seed=None, image_shape=(1, 3))
    assert dm.hparams.seed == 0 and dm.hparams.path == str(f)
    assert dm.hparams.image_shape == [1, 3]
    again = _module(**dict(dm.hparams))
    assert torch.equal(again.test_data, dm.test_data)


def test_results_need_setup():
    dm = DensityDataModule()
    with pytest.raises(RuntimeError, match=r"setup\(\)"):
        _ = dm.train_data
    assert not hasattr(dm, "dim")
    dm.setup()
    assert hasattr(dm, "dim")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "mnist"}, "name must be one of"),
        ({"name": "file"}, "path is required"),
        ({"name": "moons", "path": "x.npy"}, "path is only used"),
        ({"name": "digits", "noise": 0.1}, "noise applies"),
        ({"noise": -1.0}, "noise must"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 0.6, "test_fraction": 0.5}, "below 1"),
        ({"n_samples": 0}, "n_samples"),
        ({"batch_size": 0}, "batch_size"),
        ({"eval_batch_size": 2.5}, "eval_batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"seed": "a"}, "seed"),
        ({"standardize": 1}, "standardize"),
        ({"image_shape": [8, 8]}, "image_shape applies"),
        ({"name": "digits", "image_shape": [8, 0]}, "image_shape must be positive"),
    ],
)
def test_bad_arguments_raise_data_error(kwargs, match):
    with pytest.raises(DataError, match=match) as info:
        DensityDataModule(**kwargs)
    assert "\n" not in str(info.value)


def test_too_few_rows(tmp_path):
    f = tmp_path / "four.csv"
    f.write_text("1,2\n3,4\n5,6\n7,8\n")
    with pytest.raises(DataError, match=r"four.csv: needs at least 5 rows.*file has 4"):
        _module(name="file", path=f)
    with pytest.raises(DataError, match="needs at least 5 rows.*dataset has 3"):
        _module(name="moons", n_samples=3)


def test_bad_file_errors_surface_at_setup(tmp_path):
    f = tmp_path / "nan.csv"
    f.write_text("a,b\n1,2\n3,nan\n5,6\n")
    dm = DensityDataModule(name="file", path=f)
    with pytest.raises(DataError, match=r"nan.csv: contains NaN or Inf; first bad row 1"):
        dm.setup()
    with pytest.raises(DataError, match="file not found"):
        _module(name="file", path=tmp_path / "missing.npy")


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")
def test_lightning_reshuffles_by_epoch_through_set_epoch():
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))
            self.orders: list[list[int]] = [[]]

        def training_step(self, batch, batch_idx):
            x, index = batch
            if batch_idx == 0 and self.orders[-1]:
                self.orders.append([])
            self.orders[-1] += index.tolist()
            return ((x - self.w) ** 2).mean()

        def validation_step(self, batch, batch_idx):
            x, index = batch
            assert torch.equal(x, dm.val_data[index])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = DensityDataModule("moons", n_samples=300, batch_size=64)
    module = Recorder()
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, dm)
    sampler = dm.train_dataloader().sampler
    expected = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        expected.append(list(sampler))
    assert module.orders == expected


@pytest.mark.parametrize("standardize", [False, True])
def test_values_beyond_float32_are_named_not_called_nan(tmp_path, standardize):
    values = np.random.default_rng(0).normal(size=(200, 2))
    values[17, 1] = 1e39
    np.save(tmp_path / "big.npy", values)
    dm = DensityDataModule("file", path=str(tmp_path / "big.npy"), standardize=standardize)
    expected = r"big.npy: row 17 \(0-based\) holds 1e\+39, beyond float32"
    with pytest.raises(DataError, match=expected):
        dm.setup()


def test_loaders_take_no_draw_from_the_global_random_stream():
    """A resumed run restores torch's random state before the loaders are iterated: an
    iterator drawing its workers' seed from that stream would shift every later draw."""
    dm = DensityDataModule("moons", n_samples=400)
    dm.setup()
    state = torch.get_rng_state()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        next(iter(loader))
    assert torch.equal(torch.get_rng_state(), state)
