"""The docs stay true: the configuration reference and every snippet of configuration."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from traitlets.config import Config

from gateway_backend.backend import ElasticBackend
from gateway_backend.profiles import check_references, parse_profiles

from ..docs_snippets import analyst_blocks, config_blocks


def test_configuration_reference_matches_the_code():
    path = Path(__file__).parents[2] / "docs" / "gen_config_reference.py"
    spec = importlib.util.spec_from_file_location("gen_config_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.TARGET.read_text() == module.render(), (
        "docs/configuration.md is out of date: run python docs/gen_config_reference.py"
    )


@pytest.mark.parametrize(("where", "code"), config_blocks(), ids=[w for w, _ in config_blocks()])
def test_every_config_snippet_in_the_docs_is_accepted_as_written(where, code):
    # Loaded like a config file, then every pool's launcher built: a misspelled key or a
    # bad value fails here with the message an admin would see.
    config = Config()
    exec(compile(code, where, "exec"), {"c": config})
    backend = ElasticBackend(config=config)
    backend._load_launchers()
    assert backend.pools.pools
    # Profiles name pools and VOs that exist (their interpreters are the site's).
    vos = list(backend.vos)
    check_references(parse_profiles(backend.profiles), [p.name for p in backend.pools.pools], vos)


def test_the_docs_have_config_and_notebook_snippets_to_check():
    assert len(config_blocks()) >= 5 and len(analyst_blocks()) >= 2
