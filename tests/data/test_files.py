import numpy as np
import pytest
import torch

from genmod.data import DataError, load_array

REF = np.array([[0.5, -1.25, 3.0], [2.0, 0.0, -7.5], [1e-3, 4.0, 1e6], [-2.0, 2.0, 0.125]])


def _write_npy(path, x):
    np.save(path, x)


def _write_csv(path, x, header=None):
    lines = ([",".join(header)] if header else []) + [
        ",".join(repr(float(v)) for v in r) for r in x
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_npy_round_trip(tmp_path, dtype):
    f = tmp_path / "a.npy"
    _write_npy(f, REF)
    x = load_array(f, dtype=dtype)
    assert x.dtype == dtype
    assert torch.equal(x, torch.from_numpy(REF).to(dtype))
    assert torch.equal(load_array(str(f)), torch.from_numpy(REF).float())


def test_integer_arrays_become_float(tmp_path):
    f = tmp_path / "i.npy"
    np.save(f, np.arange(12, dtype=np.int16).reshape(4, 3))
    x = load_array(f)
    assert x.dtype == torch.float32
    assert torch.equal(x, torch.arange(12.0).reshape(4, 3))


@pytest.mark.parametrize(
    "arrays, expected",
    [
        ({"arr_0": REF}, REF),
        ({"other": REF[:2], "x": REF}, REF),
        ({"labels": REF[:2], "data": REF}, REF),
        ({"x": REF, "data": REF[:2]}, REF),
        ({"first": REF, "second": REF[:2]}, REF),
    ],
)
def test_npz_key_choice(tmp_path, arrays, expected):
    f = tmp_path / "a.npz"
    np.savez(f, **arrays)
    assert torch.equal(load_array(f, dtype=torch.float64), torch.from_numpy(expected))


def test_npz_compressed(tmp_path):
    f = tmp_path / "c.npz"
    np.savez_compressed(f, REF)
    assert torch.equal(load_array(f, dtype=torch.float64), torch.from_numpy(REF))


@pytest.mark.parametrize("header", [None, ["a", "b", "c"], ["x 1", "y", "label"]])
def test_csv_round_trip(tmp_path, header):
    f = tmp_path / "a.csv"
    _write_csv(f, REF, header)
    assert torch.equal(load_array(f, dtype=torch.float64), torch.from_numpy(REF))


def test_csv_matches_numpy_and_tolerates_spaces_blank_lines_bom(tmp_path):
    f = tmp_path / "b.CSV"
    f.write_text("\ufeffu, v\n\n1, 2.5\n 3 ,-4e-2\n\n")
    x = load_array(f, dtype=torch.float64)
    ref = np.loadtxt(f, delimiter=",", skiprows=1, encoding="utf-8-sig")
    assert torch.equal(x, torch.from_numpy(ref))


def test_csv_single_column_is_2d(tmp_path):
    f = tmp_path / "one.csv"
    f.write_text("v\n1\n2\n3\n")
    assert load_array(f).shape == (3, 1)


def test_pt_tensor_and_dicts(tmp_path):
    ref = torch.from_numpy(REF)
    for i, obj in enumerate(
        [ref, {"x": ref, "y": ref[:1]}, {"data": ref, "labels": ref[:, 0]}, {"points": ref}]
    ):
        f = tmp_path / f"{i}.pt"
        torch.save(obj, f)
        assert torch.equal(load_array(f, dtype=torch.float64), ref)
    f = tmp_path / "grad.pt"
    torch.save(ref.float().requires_grad_(), f)
    assert not load_array(f).requires_grad


def test_home_directory_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    _write_npy(tmp_path / "h.npy", REF)
    assert load_array("~/h.npy").shape == (4, 3)


def _bad_nan_npy(f):
    x = REF.copy()
    x[2, 1] = np.nan
    np.save(f, x)


def _bad_inf_csv(f):
    f.write_text("a,b\n1,2\n\n3,inf\n4,5\n")


def _bad_pt_nan(f):
    x = torch.ones(5, 2)
    x[3, 0] = float("-inf")
    torch.save({"x": x}, f)


BAD_FILES = {
    "nan.npy": (_bad_nan_npy, r"NaN or Inf; first bad row 2 \(0-based\)"),
    "inf.csv": (_bad_inf_csv, r"row 1 \(0-based\), line 4 of the file"),
    "inf.pt": (_bad_pt_nan, r"row 3 \(0-based\)"),
    "flat.npy": (lambda f: np.save(f, np.arange(5.0)), r"1-D .*reshape\(-1, 1\)"),
    "cube.npy": (lambda f: np.save(f, np.zeros((2, 3, 4))), r"3-D .*reshape\(len\(x\), -1\)"),
    "scalar.npy": (lambda f: np.save(f, np.float64(1.0)), "scalar"),
    "empty.npy": (lambda f: np.save(f, np.zeros((0, 3))), r"empty \(0 rows\)"),
    "nocols.npy": (lambda f: np.save(f, np.zeros((4, 0))), "0 columns"),
    "empty.csv": (lambda f: f.write_text(""), "empty"),
    "header_only.csv": (lambda f: f.write_text("a,b\n"), "empty"),
    "words.csv": (
        lambda f: f.write_text("a,b\n1,2\n3,oops\n"),
        "non-numeric value 'oops' at line 3",
    ),
    "hole.csv": (lambda f: f.write_text("1,2\n3,\n"), "empty field at line 2"),
    "ragged.csv": (lambda f: f.write_text("1,2\n3,4,5\n"), "line 2 has 3 columns, expected 2"),
    "strings.npy": (lambda f: np.save(f, np.array([["a", "b"]])), "expected real numbers"),
    "bools.npy": (lambda f: np.save(f, np.ones((3, 2), dtype=bool)), "expected real numbers"),
    "complex.npy": (lambda f: np.save(f, np.ones((3, 2), dtype=complex)), "real numbers"),
    "objects.npy": (
        lambda f: np.save(f, np.array([[1, None]], dtype=object), allow_pickle=True),
        "cannot read as .npy",
    ),
    "garbage.npz": (lambda f: f.write_bytes(b"not a zip file at all"), "not a NumPy .npz"),
    "badzip.npz": (lambda f: f.write_bytes(b"PK\x03\x04junk"), "cannot read as .npz"),
    "garbage.npy": (lambda f: f.write_bytes(b"\x00\x01garbage"), "not a NumPy .npy"),
    "garbage.pt": (lambda f: f.write_bytes(b"\x80\x02garbage"), r"torch.load\(weights_only=True\)"),
    "zipjunk.pt": (lambda f: f.write_bytes(b"PK\x03\x04junk"), "cannot read as .pt"),
    "none.npz": (lambda f: np.savez(f), "holds no arrays"),
    "list.pt": (lambda f: torch.save([torch.ones(2, 2)], f), "holds a list"),
    "two.pt": (lambda f: torch.save({"a": torch.ones(2), "b": torch.ones(2)}, f), "key 'x'"),
    "notensor.pt": (lambda f: torch.save({"a": 1}, f), "no tensors"),
    "bool.pt": (lambda f: torch.save(torch.ones(3, 2, dtype=torch.bool), f), "real numbers"),
    "data.txt": (lambda f: f.write_text("1,2\n"), "unknown extension '.txt'"),
    "noext": (lambda f: f.write_text("1,2\n"), r"unknown extension '\(none\)'"),
}


@pytest.mark.parametrize("filename", sorted(BAD_FILES))
def test_bad_file_gives_one_line_data_error_naming_it(tmp_path, filename):
    write, match = BAD_FILES[filename]
    f = tmp_path / filename
    write(f)
    with pytest.raises(DataError, match=match) as info:
        load_array(f)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith(str(f) + ": ")
    assert "\n" not in message


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="file not found") as info:
        load_array(tmp_path / "missing.npy")
    assert str(tmp_path / "missing.npy") in str(info.value)
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(DataError, match="not a regular file"):
        load_array(tmp_path / "dir.csv")


def test_non_float_dtype_argument(tmp_path):
    f = tmp_path / "a.npy"
    _write_npy(f, REF)
    with pytest.raises(ValueError, match="dtype"):
        load_array(f, dtype=torch.int64)


def test_data_error_is_one_line():
    assert str(DataError("a\n  b\tc")) == "a b c"


def test_values_beyond_float32_are_reported(tmp_path):
    f = tmp_path / "big.npy"
    np.save(f, np.array([[1.0], [1e300]]))
    assert load_array(f, dtype=torch.float64)[1, 0].item() == 1e300
    with pytest.raises(DataError, match=r"row 1 \(0-based\) overflows torch.float32"):
        load_array(f)


def test_missing_file_is_reported_before_its_extension(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_array(tmp_path / "missing.txt")
