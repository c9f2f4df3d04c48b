"""The entry point: found like a third party's, light to import, every reward well-formed."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys


NAMES = {"pickscore", "hpsv2", "aesthetic", "clipscore", "ocr", "jpeg_compressibility", "jpeg_incompressibility"}
HEAVY = ["torch", "transformers", "open_clip", "rapidocr", "onnxruntime", "numpy", "PIL", "cv2", "timm"]

LISTING = r"""
import importlib.metadata as md, json, sys, time
t = time.perf_counter()
(ep,) = [e for e in md.entry_points(group="marble.plugins") if e.name == "rewards"]
module = ep.load()
specs = module.marble_register_rewards()
elapsed = time.perf_counter() - t
print(json.dumps({"value": ep.value, "dist": ep.dist.name, "names": [s.name for s in specs],
                  "elapsed": elapsed, "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def test_entry_point_is_light_and_fast():
    out = subprocess.run([sys.executable, "-c", LISTING], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["value"] == "marble_rewards.plugin" and info["dist"] == "marble-rewards"
    assert set(info["names"]) == NAMES
    assert info["heavy"] == [], f"the entry-point module imported heavy modules: {info['heavy']}"
    assert info["elapsed"] < 1.5


def test_marble_rewards_lists_ours():
    cli = os.path.join(os.path.dirname(sys.executable), "marble")  # installed by the set-up
    out = subprocess.run([cli, "rewards", "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert all(name in out.stdout for name in NAMES)


def test_host_finds_every_reward_with_args_and_description():
    from marble.host import PluginHost

    host = PluginHost.discover()
    for name in NAMES:
        comp = host.get("reward", name)
        assert comp.plugin.distribution == "marble-rewards"
        spec = comp.spec
        assert spec.description and "\n" not in spec.description
        assert isinstance(spec.factory, str) and spec.factory.startswith("marble_rewards.")
        fields = {f.name: f for f in dataclasses.fields(spec.args)}
        assert fields["device"].default == "auto" and fields["dtype"].default == "auto"
        assert isinstance(fields["batch_size"].default, int)


def test_readme_documents_every_reward():
    readme = os.path.join(os.path.dirname(__file__), "..", "..", "rewards", "README.md")
    text = open(readme, encoding="utf-8").read()
    from marble.host import PluginHost

    host = PluginHost.discover()
    for name in NAMES:
        assert f"`{name}`" in text, name
        for f in dataclasses.fields(host.get("reward", name).spec.args):
            assert f"`{f.name}`" in text, (name, f.name)
