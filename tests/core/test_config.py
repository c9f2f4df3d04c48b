"""Config validation: every bad config exits 2 naming the key path, before anything is built."""

from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass

import pytest

from marble import BackboneSpec, RewardSpec, hookimpl
from marble.cli import main
from marble.config import load_config
from marble.errors import ConfigError
from marble.testing import marble_plugin  # noqa: F401

BUILT: list[str] = []


@dataclass
class FakeBackboneArgs:
    resolution: int = 64
    model: str = "x"


@dataclass
class FakeRewardArgs:
    scale: float = 1.0


def _never(*a, **k):  # a dry run must never build anything
    BUILT.append("built")
    raise AssertionError("built during a dry run")


class FakePlugin:
    @hookimpl
    def marble_register_backbones(self):
        return [BackboneSpec("fakebone", _never, FakeBackboneArgs, "test backbone")]

    @hookimpl
    def marble_register_rewards(self):
        return [RewardSpec("fakereward", _never, FakeRewardArgs, "test reward"),
                RewardSpec("other", _never, None, "test reward, raw args")]


GOOD = """
output_dir: {tmp}/run
backbone: {{name: fakebone, args: {{resolution: 32}}}}
rewards:
  - {{name: fakereward, weight: 2.0, args: {{scale: 0.5}}}}
  - {{name: other, weight: 1}}
balancer: {{name: marble, args: {{refresh_every: 5}}}}
prompts:
  - {{texts: ["a cat", "a dog"], weight: 1.0}}
train: {{iterations: 3}}
"""


def good(tmp_path) -> str:
    return GOOD.format(tmp=tmp_path)


@pytest.fixture
def plugin(marble_plugin):
    BUILT.clear()
    marble_plugin(FakePlugin(), name="fake")
    yield
    assert not BUILT


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_good_config_dry_run(plugin, tmp_path, capsys):
    code, out, err = run(capsys, "train", write(tmp_path, good(tmp_path)), "--dry-run")
    assert code == 0, err
    assert "valid" in out and "fakebone" in out


def test_overrides_apply(plugin, tmp_path):
    cfg = load_config(write(tmp_path, good(tmp_path)), ["train.iterations=7", "balancer.name=weighted_sum"])
    assert cfg.train.iterations == 7 and cfg.balancer.name == "weighted_sum"
    assert cfg.rewards[0].weight == 2.0 and cfg.train.beta == 1.0  # defaults filled


@pytest.mark.parametrize("mutate, key, words", [
    (lambda s: s.replace("train: {iterations: 3}", "train: {iteratons: 3}"), "train.iteratons", ["did you mean 'iterations'"]),
    (lambda s: s.replace("name: other", "name: notinstalled"), "rewards[1].name", ["unknown reward 'notinstalled'", "fakereward"]),
    (lambda s: s.replace("weight: 2.0", "weight: heavy"), "rewards[0].weight", ["heavy"]),
    (lambda s: s.replace("backbone: {name: fakebone, args: {resolution: 32}}\n", ""), "backbone.name", ["no backbone"]),
    (lambda s: s.replace("resolution: 32", "resolutoin: 32"), "backbone.args.resolutoin", ["did you mean 'resolution'"]),
    (lambda s: s.replace("resolution: 32", "resolution: big"), "backbone.args.resolution", ["big"]),
    (lambda s: s.replace("name: marble,", "name: marbel,"), "balancer.name", ["did you mean 'marble'"]),
    (lambda s: s.replace("refresh_every: 5", "refresh_evry: 5"), "balancer.args.refresh_evry", ["refresh_every"]),
    (lambda s: s.replace("train: {iterations: 3}", "train: {iterations: 3, sampler: heun}"), "train.sampler", ["euler", "dpm2"]),
    (lambda s: s + "\nsurprise: 1\n", "surprise", ["unknown key"]),
])
def test_bad_configs_exit_2_with_key_path(plugin, tmp_path, capsys, mutate, key, words):
    code, out, err = run(capsys, "train", write(tmp_path, mutate(good(tmp_path))), "--dry-run")
    assert code == 2, (out, err)
    assert f"'{key}'" in err, err
    for w in words:
        assert w in err, err
    assert "Traceback" not in err


def test_bad_override(plugin, tmp_path, capsys):
    code, _, err = run(capsys, "train", write(tmp_path, good(tmp_path)), "train.lr=fast", "--dry-run")
    assert code == 2 and "'train.lr'" in err and "fast" in err


def test_missing_config_file(capsys):
    code, _, err = run(capsys, "train", "/nonexistent/x.yaml", "--dry-run")
    assert code == 2 and "/nonexistent/x.yaml" in err


def test_prompt_source_errors(plugin, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "tag": 1}\n{not json}\n')
    from marble.prompts import load_sources

    for path, words in ((str(empty), ["empty", "empty.txt"]), (str(bad), ["bad.jsonl:2", "malformed"]),
                        (str(tmp_path / "missing.txt"), ["not found", "missing.txt"])):
        cfg = load_config(None, data={"backbone": {"name": "fakebone"}, "rewards": [{"name": "other"}],
                                      "prompts": [{"path": path}]})
        with pytest.raises(ConfigError) as info:
            load_sources(cfg.prompts)
        for w in words:
            assert w in str(info.value)
        assert "prompts[0].path" in str(info.value)


def test_jsonl_metadata_and_reward_lists(plugin, tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text('{"prompt": "a sign that says \\"hi\\"", "tag": "ocr"}\n')
    cfg = load_config(None, data={"backbone": {"name": "fakebone"},
                                  "rewards": [{"name": "fakereward"}, {"name": "other"}],
                                  "prompts": [{"path": str(src), "rewards": ["other"]}]})
    from marble.prompts import load_sources

    (s,) = load_sources(cfg.prompts)
    assert s.prompts[0].metadata == {"tag": "ocr"} and s.rewards == ["other"]
    with pytest.raises(ConfigError) as info:
        load_config(None, data={"backbone": {"name": "fakebone"}, "rewards": [{"name": "other"}],
                                "prompts": [{"path": str(src), "rewards": ["othr"]}]})
    assert "prompts[0].rewards[0]" in str(info.value) and "did you mean 'other'" in str(info.value)


def test_config_never_imports_module_paths(plugin, tmp_path, capsys):
    """A shared config selects components by registered name only: a module path is just an
    unknown name, and nothing is imported."""
    text = good(tmp_path).replace("name: other", "name: 'os:system'")
    code, _, err = run(capsys, "train", write(tmp_path, text), "--dry-run")
    assert code == 2 and "unknown reward 'os:system'" in err


def test_shipped_configs_validate(plugin):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for name in sorted(os.listdir(os.path.join(root, "configs"))):
        if name.endswith(".yaml") and not name.startswith("accelerate"):
            load_config(os.path.join(root, "configs", name))  # schema-level validation
