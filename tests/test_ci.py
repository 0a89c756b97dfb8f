"""The test set-up itself: under CI a missing real-image folder fails the run instead of skipping its tests."""

from __future__ import annotations

import conftest
import pytest


@pytest.fixture()
def no_real_data(monkeypatch, tmp_path):
    monkeypatch.setattr(conftest, "REAL_DATA", tmp_path / "no-cifar10-jpeg")
    return tmp_path / "no-cifar10-jpeg"


@pytest.mark.parametrize("value", ["true", "1", "True", "yes"])
def test_under_ci_a_missing_real_data_folder_fails(no_real_data, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="real CIFAR-10 image folder not found at .*no-cifar10-jpeg.*CI"):
        conftest.find_real_data()


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_elsewhere_a_missing_real_data_folder_skips(no_real_data, monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="real CIFAR-10 image folder not found at .*no-cifar10-jpeg"):
        conftest.find_real_data()


def test_under_ci_a_present_real_data_folder_is_used(no_real_data, monkeypatch):
    (no_real_data / "train").mkdir(parents=True)
    monkeypatch.setenv("CI", "true")
    assert conftest.find_real_data() == no_real_data
