"""Test-time augmentation: the views of a crop and how network outputs are averaged over them."""

from __future__ import annotations

import numpy as np

from fabsight.die.views import average_views, dihedral_views


def _key(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def test_square_batches_get_the_eight_symmetries_of_the_square():
    x = np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5)  # no symmetry of its own
    views = dihedral_views(x)
    assert len(views) == 8 and len({_key(v) for v in views}) == 8
    np.testing.assert_array_equal(views[0], x)
    # a group: the views of any view are the same eight arrays
    assert {_key(w) for w in dihedral_views(views[5])} == {_key(v) for v in views}
    # each view moves pixels within an image and channel, never across them
    for v in views:
        assert v.shape == x.shape and v.flags.c_contiguous
        np.testing.assert_array_equal(np.sort(v.reshape(2, 3, -1), axis=-1), x.reshape(2, 3, -1))


def test_non_square_batches_get_the_four_shape_preserving_symmetries():
    x = np.arange(1 * 1 * 3 * 4, dtype=np.float32).reshape(1, 1, 3, 4)
    views = dihedral_views(x)
    assert len(views) == 4 and len({_key(v) for v in views}) == 4
    assert all(v.shape == x.shape for v in views)
    np.testing.assert_array_equal(views[3][0, 0], x[0, 0, ::-1, ::-1])


def test_average_views_averages_logits_and_keeps_the_identity_embedding():
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)
    x[0, 0, 0, 0] = 8.0  # one bright corner: each view moves it to one of the four corners

    def forward(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        corners = v[:, 0, [0, 0, -1, -1], [0, -1, 0, -1]]  # logits = the four corner values
        return corners, v.reshape(len(v), -1)

    logits, emb = forward(x)
    np.testing.assert_array_equal(logits, [[8, 0, 0, 0]])
    logits, emb = average_views(forward, x)
    np.testing.assert_allclose(logits, [[2, 2, 2, 2]])  # 8 views, each corner twice: 8 · 2 / 8
    np.testing.assert_array_equal(emb, x.reshape(1, -1))  # the OOD gate sees the image as it is
