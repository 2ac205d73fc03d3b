"""Shared fixtures: the synthetic body models are generated once per test session."""

from __future__ import annotations

import numpy as np
import pytest

from hsmr_model import skel_constants as C


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """One temporary Prefect API for the session, its home (and so any result storage) in a temp dir:
    the harness alone keeps ~/.prefect, where a later session would find earlier results."""
    from prefect.settings import PREFECT_HOME, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("prefect-home")
    with temporary_settings(updates={PREFECT_HOME: str(home), PREFECT_SERVER_ANALYTICS_ENABLED: False}):
        with prefect_test_harness(server_startup_timeout=120):
            yield


@pytest.fixture(scope="session")
def model_paths(tmp_path_factory):
    from hsmr_data.synthetic.body_models import write_synthetic_models

    return write_synthetic_models(tmp_path_factory.mktemp("models"), seed=0)


def random_poses_in_limits(rng: np.random.Generator, count: int) -> np.ndarray:
    """q uniform inside every DoF's limits; the unlimited pelvis within ±π."""
    lower, upper = C.dof_limits()
    lower = np.where(np.isfinite(lower), lower, -np.pi)
    upper = np.where(np.isfinite(upper), upper, np.pi)
    return rng.uniform(lower, upper, size=(count, C.NUM_DOFS))
