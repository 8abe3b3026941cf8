import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits as sklearn_digits

from genmod.data import DIGITS_IMAGE_SHAPE, load_digits


def test_matches_scikit_learn_bundled_digits():
    x = load_digits()
    ref = sklearn_digits()
    assert x.shape == (1797, 64) and x.dtype == torch.float32
    assert ref.images.shape[1:] == DIGITS_IMAGE_SHAPE
    np.testing.assert_array_equal(x.numpy(), ref.data)
    np.testing.assert_array_equal(x[5].reshape(DIGITS_IMAGE_SHAPE).numpy(), ref.images[5])
    assert torch.equal(x, x.round()) and x.min() == 0 and x.max() == 16


def test_each_call_returns_an_independent_copy():
    a = load_digits(dtype=torch.float64)
    a[0, 0] = 99.0
    assert load_digits(dtype=torch.float64)[0, 0] == 0.0


def test_rejects_integer_dtype():
    with pytest.raises(ValueError, match="dtype"):
        load_digits(dtype=torch.int32)
