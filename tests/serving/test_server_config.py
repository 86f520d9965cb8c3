"""The server config: sections validated with the key named, environment overrides (nested too)."""

import pytest

from engines.errors import ConfigError
from serving.config import load_config


def test_environment_overrides_reach_nested_keys():
    cfg = load_config({"model": {"preset": "tiny"}, "queue": {"max_queued": 8}},
                      environ={"KINO_GRPC__PORT": "6000", "KINO_QUEUE__MAX_IN_FLIGHT": "4",
                               "KINO_MODEL__ENHANCER__ENABLED": "true",
                               "KINO_MODEL__ENHANCER__MAX_NEW_TOKENS": "32", "OTHER_VAR": "x"})
    assert cfg.grpc.port == 6000 and cfg.queue.max_in_flight == 4 and cfg.queue.max_queued == 8
    assert cfg.model.name == "tiny" and cfg.model.enhancer.enabled and cfg.model.enhancer.max_new_tokens == 32


@pytest.mark.parametrize("data, environ, key", [
    ({"colour": {}}, {}, "colour"),
    ({"queue": {"max_qeued": 1}}, {}, "queue.max_qeued"),
    ({"grpc": {"port": "six"}}, {}, "grpc.port"),
    ({"model": {"preset": "tiny"}}, {"KINO_MODEL__ENHANCER__BACKEND": "openai"}, "model.enhancer.backend"),
    ({"model": {"enhancer": "on"}}, {"KINO_MODEL__ENHANCER__ENABLED": "true"}, "model.enhancer"),
])
def test_mistakes_name_the_key(data, environ, key):
    with pytest.raises(ConfigError) as err:
        load_config(data, environ=environ)
    assert err.value.key == key
