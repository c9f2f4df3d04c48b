"""The plugin host through real installed distributions (dist-info + entry points on sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_dist(site: str, dist: str, module: str, source: str, ep_name: str | None = None) -> None:
    """Install a one-module distribution into ``site`` the way pip lays it out."""
    with open(os.path.join(site, f"{module}.py"), "w") as f:
        f.write(textwrap.dedent(source))
    info = os.path.join(site, f"{dist.replace('-', '_')}-1.2.3.dist-info")
    os.makedirs(info, exist_ok=True)
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        f.write(f"[marble.plugins]\n{ep_name or module} = {module}\n")


def marble(*args: str, site: str | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if site:
        env["PYTHONPATH"] = site + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "marble.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


GOOD = '''
from marble import RewardSpec, hookimpl
@hookimpl
def marble_register_rewards():
    return [RewardSpec("goodreward", "goodmod:make", description="a fine reward")]
'''
BAD_IMPORT = '''
raise RuntimeError("boom at import")
'''
BAD_HOOK = '''
from marble import hookimpl
@hookimpl
def marble_register_rewards():
    raise ValueError("boom in hook")
'''
DUP = '''
from marble import RewardSpec, hookimpl
@hookimpl
def marble_register_rewards():
    return [RewardSpec("samename", "x:y", description="dup")]
'''


@pytest.fixture
def site(tmp_path):
    s = str(tmp_path / "site")
    os.makedirs(s)
    return s


def test_broken_plugins_are_isolated_and_reported(site):
    make_dist(site, "good-plugin", "goodmod", GOOD)
    make_dist(site, "bad-import-plugin", "badimport", BAD_IMPORT)
    make_dist(site, "bad-hook-plugin", "badhook", BAD_HOOK)
    res = marble("plugins", "--json", site=site)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    by = {p["name"]: p for p in data["plugins"]}
    assert by["goodmod"]["status"] == "ok" and by["goodmod"]["rewards"] == ["goodreward"]
    assert by["goodmod"]["distribution"] == "good-plugin" and by["goodmod"]["version"] == "1.2.3"
    assert by["badimport"]["status"] == "failed" and "boom at import" in by["badimport"]["error"]
    assert by["badhook"]["status"] == "failed" and "boom in hook" in by["badhook"]["error"]
    assert "marble_register_rewards" in by["badhook"]["error"]
    # every other plugin still works: the core balancers and the good reward are listed
    assert by["core"]["status"] == "ok"
    res = marble("rewards", site=site)
    assert res.returncode == 0 and "goodreward" in res.stdout
    # the human listing shows the failures too
    res = marble("plugins", site=site)
    assert "failed" in res.stdout and "boom at import" in res.stdout
    # strict check exits non-zero
    res = marble("plugins", "check", site=site)
    assert res.returncode != 0
    assert "failed" in res.stderr


def test_plugins_check_passes_when_all_ok(site):
    make_dist(site, "good-plugin", "goodmod", GOOD)
    res = marble("plugins", "--json", site=site)
    failed = [p for p in json.loads(res.stdout)["plugins"] if p["status"] != "ok"]
    res = marble("plugins", "check", site=site)
    assert (res.returncode == 0) == (not failed), res.stdout + res.stderr


def test_duplicate_reward_names_name_both_distributions(site, tmp_path):
    make_dist(site, "dup-one", "dupone", DUP)
    make_dist(site, "dup-two", "duptwo", DUP)
    res = marble("plugins", "--json", site=site)
    conflicts = json.loads(res.stdout)["conflicts"]
    assert len(conflicts) == 1 and "dup-one" in conflicts[0] and "dup-two" in conflicts[0]
    assert marble("plugins", "check", site=site).returncode != 0
    cfg = tmp_path / "c.yaml"
    cfg.write_text("backbone: {name: nope}\nrewards: [{name: samename}]\nprompts: [{texts: [a]}]\n")
    res = marble("train", str(cfg), "--dry-run", site=site)
    assert res.returncode == 2
    # the backbone is checked first; select a reward-only failure through the in-process API
    from marble.host import PluginHost
    import importlib.metadata as md

    eps = [e for e in md.distributions(path=[site]) for e in e.entry_points if e.group == "marble.plugins"]
    host = PluginHost.discover(eps)
    with pytest.raises(Exception) as info:
        host.get("reward", "samename", key="rewards[0].name")
    assert "dup-one" in str(info.value) and "dup-two" in str(info.value)


def test_plugins_listing_is_fast_and_light():
    code = ("import sys, time; t=time.perf_counter(); from marble.cli import main; main(['plugins']); "
            "main(['rewards']); main(['backbones']); dt=time.perf_counter()-t; "
            "heavy=[m for m in ('torch','diffusers','transformers','open_clip','rapidocr','cvxpy','peft') "
            "if m in sys.modules]; print('RESULT', dt, heavy)")
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    wall = time.perf_counter() - t0
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")][0]
    assert line.endswith("[]"), f"heavy modules imported while listing plugins: {line}"
    assert wall < 1.5, f"marble plugins took {wall:.2f} s (process included)"


def test_template_plugin_real_install(tmp_path):
    """pip-install the template plugin for real, then uninstall it (remove the target)."""
    target = str(tmp_path / "inst")
    res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--target", target, os.path.join(ROOT, "plugins", "template")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    res = marble("rewards", site=target)
    assert res.returncode == 0 and "brightness" in res.stdout, res.stdout + res.stderr
    # the template's own test suite passes against the installed copy (marble_plugin comes from
    # marble-rl's pytest plugin, check_reward from marble.testing)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          os.path.join(ROOT, "plugins", "template", "tests")], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": target}, cwd=str(tmp_path), timeout=300)
    assert res.returncode == 0 and "3 passed" in res.stdout, res.stdout[-2000:] + res.stderr[-2000:]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(textwrap.dedent(f"""
        backbone: {{name: sd3-tiny}}
        rewards:
          - {{name: brightness, weight: 1.0, args: {{target: 0.3}}}}
        prompts: [{{path: {os.path.join(ROOT, 'configs', 'prompts', 'tiny.txt')}}}]
    """))
    res = marble("train", str(cfg), "--dry-run", site=target)
    assert res.returncode == 0, res.stdout + res.stderr
    # a bad arg of the plugin's own dataclass is caught with the key path
    bad = tmp_path / "bad.yaml"
    bad.write_text(cfg.read_text().replace("target: 0.3", "targte: 0.3"))
    res = marble("train", str(bad), "--dry-run", site=target)
    assert res.returncode == 2 and "rewards[0].args.targte" in res.stderr and "'target'" in res.stderr, res.stderr
    # "uninstalled": the same config now fails with a clear unknown-reward error
    res = marble("train", str(cfg), "--dry-run")
    assert res.returncode == 2
    assert "unknown reward 'brightness'" in res.stderr and "rewards[0].name" in res.stderr
    assert "Traceback" not in res.stderr
