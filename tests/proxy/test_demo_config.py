"""The demo's configuration: the repository's routes.yaml and the packaged copy are one file."""

from __future__ import annotations

from proxy.config import parse_config
from proxy.demo.run import demo_config_text, prepare_workdir
from tests.configs import REPO


def test_packaged_demo_config_is_the_repositorys_routes_yaml():
    """`cutover demo` installed from a wheel runs the same routes.yaml as the repository."""
    assert demo_config_text() == (REPO / "routes.yaml").read_text()


def test_demo_workdir_copy_is_valid_and_listens_where_asked(tmp_path):
    config = prepare_workdir(tmp_path / "demo", 18080)
    table = parse_config(config.read_bytes(), env={})
    assert table.spec.listen == "127.0.0.1:18080"
    assert (REPO / "routes.yaml").read_text() != config.read_text()
