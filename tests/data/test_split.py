import pytest

from rayrec.data.prepare import leave_one_out


def test_leave_one_out_roles():
    train, (valid_history, valid_target), (test_history, test_target) = leave_one_out([5, 6, 7, 8, 9])

    assert train == [5, 6, 7]
    assert valid_history == [5, 6, 7]
    assert valid_target == 8
    assert test_history == [5, 6, 7, 8]
    assert test_target == 9


def test_leave_one_out_no_leakage():
    sequence = list(range(1, 21))
    train, (valid_history, valid_target), (test_history, test_target) = leave_one_out(sequence)

    assert valid_target not in train
    assert test_target not in train
    assert test_target not in valid_history
    assert valid_target not in valid_history


def test_leave_one_out_minimum_length():
    assert leave_one_out([1, 2, 3])[0] == [1]
    with pytest.raises(ValueError, match="at least 3 events"):
        leave_one_out([1, 2])
