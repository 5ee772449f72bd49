from __future__ import annotations

import pytest

from wmplan.platform.world_model import LinearModel


@pytest.fixture
def linear_model():
    return LinearModel.rotation(dim=2, radius=1.0, angle=0.3)
