"""What one forward holds, checked at create: a request that can never run is refused with what fits."""

from __future__ import annotations

import pytest

from engines.model_loader import ComponentSource
from engines.params import GenerationRequest
from serving.errors import InvalidArgument
from serving.videos.capacity import DenoiseCapacity, tokens_per_forward


@pytest.fixture(scope="module")
def geometry(tiny_config):
    return ComponentSource(tiny_config).geometry()


def test_the_longest_1080p_request_fits_the_default_budget(tiny_config, geometry):
    longest = GenerationRequest(prompt="x", width=1920, height=1088, seconds=20.0).validated(tiny_config)
    assert 240_000 < tokens_per_forward(longest, geometry) <= 262_144


def test_a_request_over_the_budget_is_refused_naming_what_fits(tiny_config, geometry):
    reported = {"value": None}
    capacity = DenoiseCapacity(tiny_config, geometry, configured=4000, reported=lambda: reported["value"])
    small = GenerationRequest(prompt="x", width=256, height=256, seconds=1.0).validated(tiny_config)
    capacity.check(small)  # 2 x (3 x 8 x 8 + 25) = 434 tokens
    big = GenerationRequest(prompt="x", width=1024, height=576, seconds=4.0).validated(tiny_config)
    with pytest.raises(InvalidArgument) as err:
        capacity.check(big)
    message = str(err.value)
    assert err.value.field == "size" and message.startswith("size: 1024x576 for 4 s needs")
    assert "at most 4000 (batching.max_tokens)" in message and "the largest that fits is 1024x576 for" in message
    fit_seconds = float(message.split("1024x576 for ")[2].split(" s")[0])
    fit_size = message.rsplit(" or ", 1)[1].split(" for ")[0]
    w, h = (int(v) for v in fit_size.split("x"))
    assert tokens_per_forward(GenerationRequest(prompt="x", width=1024, height=576, seconds=fit_seconds)
                              .validated(tiny_config), geometry) <= 4000
    assert tokens_per_forward(GenerationRequest(prompt="x", width=w, height=h, seconds=4.0).validated(tiny_config),
                              geometry) <= 4000 and w < 1024 and h < 576
    reported["value"] = 10**6  # a replica reported a bigger budget (the front door's cached figure changed)
    capacity.check(big)
