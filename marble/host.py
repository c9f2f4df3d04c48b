"""The plugin host: finds plugins through entry points and collects their components.

Every plugin - first-party or third-party - is an installed distribution with an entry point in
the group ``marble.plugins`` naming a module of ``@hookimpl`` functions. Each entry point is
loaded on its own and each hook implementation is called on its own, so one broken plugin is
recorded (with its traceback) and never stops the others.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
import traceback
from dataclasses import dataclass, field
from typing import Any, Iterable

import pluggy

from marble import hookspecs
from marble._specs import BackboneSpec, BalancerSpec, PluginInfo, RewardSpec, _Spec
from marble.errors import ConfigError, PluginError

GROUP = "marble.plugins"

KINDS = {
    "reward": ("marble_register_rewards", RewardSpec, "rewards"),
    "backbone": ("marble_register_backbones", BackboneSpec, "backbones"),
    "balancer": ("marble_register_balancers", BalancerSpec, "balancers"),
}

# Plugins registered in-process (marble.testing.register_plugin); (name, object, distribution).
_EXTRA: list[tuple[str, Any, str]] = []
_HOST: "PluginHost | None" = None


@dataclass
class Component:
    kind: str
    spec: _Spec
    plugin: PluginInfo


@dataclass
class PluginHost:
    plugins: list[PluginInfo] = field(default_factory=list)
    components: dict[str, dict[str, Component]] = field(default_factory=lambda: {k: {} for k in KINDS})
    conflicts: list[str] = field(default_factory=list)
    _conflicting: dict[tuple[str, str], list[PluginInfo]] = field(default_factory=dict)

    # ---------------------------------------------------------------- loading
    @classmethod
    def discover(cls, entry_points: Iterable[md.EntryPoint] | None = None) -> "PluginHost":
        host = cls()
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        eps = list(md.entry_points(group=GROUP)) if entry_points is None else list(entry_points)
        seen: set[tuple[str, str]] = set()
        for ep in sorted(eps, key=lambda e: e.name):
            dist = ep.dist.name if getattr(ep, "dist", None) is not None else "?"
            version = ep.dist.version if getattr(ep, "dist", None) is not None else "?"
            if (ep.name, ep.value) in seen:  # the same distribution seen twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            info = PluginInfo(name=ep.name, distribution=dist, version=version, module=ep.value)
            try:
                module = ep.load()
            except BaseException as exc:  # noqa: BLE001 - a plugin may raise anything at import
                host._fail(info, f"import of '{ep.value}' failed: {type(exc).__name__}: {exc}")
                continue
            host._register(pm, info, module)
        for name, obj, dist in _EXTRA:
            info = PluginInfo(name=name, distribution=dist, version="(in-process)",
                              module=getattr(obj, "__name__", type(obj).__name__))
            host._register(pm, info, obj)
        return host

    def _fail(self, info: PluginInfo, message: str) -> None:
        info.status = "failed"
        info.error = info.error + "; " + message if info.error else message
        info.traceback = traceback.format_exc()
        if info not in self.plugins:
            self.plugins.append(info)

    def _register(self, pm: pluggy.PluginManager, info: PluginInfo, module: Any) -> None:
        self.plugins.append(info)
        try:
            pm.register(module, name=f"{info.distribution}:{info.name}:{len(self.plugins)}")
        except Exception as exc:  # bad hookimpl signature, unknown hook name, ...
            self._fail(info, f"registration failed: {type(exc).__name__}: {exc}")
            return
        for kind, (hook_name, spec_type, attr) in KINDS.items():
            impl = getattr(module, hook_name, None)
            if impl is None:
                continue
            try:
                specs = impl()
            except BaseException as exc:  # noqa: BLE001
                self._fail(info, f"hook {hook_name}() raised {type(exc).__name__}: {exc}")
                continue
            if specs is None:
                specs = []
            if not isinstance(specs, (list, tuple)):
                self._fail(info, f"hook {hook_name}() must return a list of {spec_type.__name__}, got {type(specs).__name__}")
                continue
            for spec in specs:
                if not isinstance(spec, spec_type):
                    self._fail(info, f"hook {hook_name}() returned {spec!r}, expected {spec_type.__name__}")
                    continue
                self._add(kind, spec, info)
                getattr(info, attr).append(spec.name)

    def _add(self, kind: str, spec: _Spec, info: PluginInfo) -> None:
        table = self.components[kind]
        if spec.name in table or (kind, spec.name) in self._conflicting:
            owners = self._conflicting.setdefault((kind, spec.name), [table.pop(spec.name).plugin] if spec.name in table else [])
            owners.append(info)
            dists = " and ".join(f"'{p.distribution}' (plugin '{p.name}')" for p in owners)
            self.conflicts = [c for c in self.conflicts if not c.startswith(f"{kind} '{spec.name}'")]
            self.conflicts.append(f"{kind} '{spec.name}' is registered by both {dists}; uninstall one of them")
            return
        table[spec.name] = Component(kind, spec, info)

    # ---------------------------------------------------------------- lookup
    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def get(self, kind: str, name: str, key: str | None = None) -> Component:
        """The component ``name`` of ``kind``; a clear error if it is unknown, clashing, or its
        plugin failed. ``key`` is the config key path that selected it (for the message)."""
        table = self.components[kind]
        if name in table:
            return table[name]
        if (kind, name) in self._conflicting:
            msg = next(c for c in self.conflicts if c.startswith(f"{kind} '{name}'"))
            raise PluginError(f"{'config key ' + repr(key) + ': ' if key else ''}{msg}")
        failed = [p for p in self.plugins if p.status == "failed"]
        for p in failed:
            if p.name == name:
                raise PluginError(
                    f"{kind} '{name}': its plugin '{p.name}' (distribution '{p.distribution}') failed to load: "
                    f"{p.error}. Run 'marble plugins' for the traceback."
                )
        allowed = self.names(kind)
        hint = difflib.get_close_matches(name, allowed, n=1)
        msg = f"unknown {kind} {name!r}"
        msg += f"; did you mean {hint[0]!r}?" if hint else "."
        msg += f" Installed {kind}s: {', '.join(allowed) or '(none)'}."
        if failed:
            msg += " Plugins that failed to load (one may provide it): " + ", ".join(
                f"'{p.name}' ({p.distribution}): {p.error}" for p in failed
            )
        else:
            msg += f" Is the plugin that provides it installed? ('marble {kind}s' lists them)"
        raise ConfigError(msg, key=key)


def get_host(refresh: bool = False) -> PluginHost:
    """The process-wide plugin host (discovered once)."""
    global _HOST
    if _HOST is None or refresh:
        _HOST = PluginHost.discover()
    return _HOST


def reset_host() -> None:
    global _HOST
    _HOST = None


def validate_args(spec: _Spec, args: Any, key: str) -> Any:
    """Validate a YAML args mapping against the spec's args dataclass.

    Returns the dataclass instance (or a plain dict when the spec declares no dataclass).
    Unknown keys and wrong types raise ConfigError naming ``key`` and the allowed fields."""
    from marble.config import structured_args  # local: config imports host

    return structured_args(spec, args, key)


def build(kind: str, name: str, args: Any = None, key: str | None = None) -> Any:
    """Validate ``args`` and build the component ``name`` of ``kind`` through its factory."""
    comp = get_host().get(kind, name, key=key)
    checked = validate_args(comp.spec, args or {}, f"{key}.args" if key else "args")
    try:
        return comp.spec.build(checked)
    except (ConfigError, PluginError):
        raise
    except ImportError as exc:
        raise PluginError(
            f"{kind} '{name}' (plugin '{comp.plugin.name}', distribution '{comp.plugin.distribution}') "
            f"needs a package that is not installed: {exc}. Install the plugin's extra for it."
        ) from exc


def build_reward(name: str, args: Any = None, key: str | None = None) -> Any:
    """Build the reward ``name`` from a YAML-style args mapping."""
    return build("reward", name, args, key)
