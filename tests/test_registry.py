"""The registries fill themselves on the first lookup: prunetune's own pieces, then every installed
plugin of the `prunetune.plugins` entry-point group (a third-party package adds a piece with one
module and one entry point)."""

from __future__ import annotations

import subprocess
import sys

from prunetune import registry as R


def test_every_kind_of_piece_is_registered_without_anyone_loading_builtins():
    code = ("from prunetune.registry import ALL; "
            "print({k: len(r.names()) for k, r in ALL.items()})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    counts = eval(out)  # noqa: S307 - our own printed dict
    assert set(counts) == set(R.ALL) and all(n > 0 for n in counts.values()), counts


def test_a_plugin_from_the_entry_point_group_registers_its_piece(monkeypatch):
    loaded = []

    class EntryPoint:
        def load(self):
            R.MODELS.register("plugin_model", "a model from a plugin package")(object)
            loaded.append(True)

    def entry_points(group):
        assert group == R.PLUGIN_GROUP
        return [EntryPoint()]

    monkeypatch.setattr(R, "entry_points", entry_points)
    monkeypatch.setattr(R, "_loaded", False)
    try:
        assert "plugin_model" in R.MODELS and loaded == [True]
        assert R.MODELS.describe()["plugin_model"] == "a model from a plugin package"
    finally:
        R.MODELS._items.pop("plugin_model", None)
        R.MODELS._docs.pop("plugin_model", None)
