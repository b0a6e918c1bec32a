"""Write docs/configuration.md from the traits' own ``help=`` texts.

python docs/gen_config_reference.py          # rewrite the file
python docs/gen_config_reference.py --check  # exit 1 if it is out of date (the tests do this)
"""

from __future__ import annotations

import inspect
import sys
import textwrap
from pathlib import Path

from gateway_backend.backend import ElasticBackend
from gateway_backend.cluster_config import ElasticClusterConfig
from gateway_backend.jupyterhub_auth import ElasticJupyterHubAuthenticator
from gateway_backend.launchers.local import LocalLauncher

CLASSES = [ElasticBackend, ElasticClusterConfig, LocalLauncher, ElasticJupyterHubAuthenticator]
OPTIONAL = [
    ("gateway_backend.launchers.htcondor", "HTCondorLauncher"),
    ("gateway_backend.launchers.kubernetes", "KubernetesLauncher"),
    ("gateway_backend.launchers.slurm", "SlurmLauncher"),
]
TARGET = Path(__file__).with_name("configuration.md")

HEADER = """# Configuration reference

Generated from the code by `python docs/gen_config_reference.py`; do not edit by hand.
Each setting goes in the gateway's config file as `c.<Class>.<name> = value`. Only settings
Elastic Gateway adds or changes are listed; upstream's (database, proxy, timeouts,
authenticators) are in the dask-gateway-server documentation.
"""


def _classes() -> list[type]:
    out = list(CLASSES)
    for module, name in OPTIONAL:
        try:
            out.append(getattr(__import__(module, fromlist=[name]), name))
        except ImportError:
            pass
    return out


def _own_traits(cls: type) -> dict:
    """Traits defined (or redefined) on this class, not inherited unchanged."""
    own = {}
    for name, trait in sorted(cls.class_traits(config=True).items()):
        if any(
            name in vars(klass)
            for klass in cls.__mro__
            if klass.__module__.startswith(("gateway_backend",))
        ):
            own[name] = trait
    return own


def render() -> str:
    parts = [HEADER]
    for cls in _classes():
        parts.append(f"\n## `{cls.__name__}`\n\n{inspect.cleandoc(cls.__doc__ or '')}\n")
        for name, trait in _own_traits(cls).items():
            default = trait.default_value_repr()
            kind = type(trait).__name__
            helptext = textwrap.dedent(trait.help or "").strip()
            parts.append(f"\n### `c.{cls.__name__}.{name}`\n\n{kind}, default `{default}`\n\n")
            parts.append(helptext + "\n")
    return "".join(parts)


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python docs/gen_config_reference.py")
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
