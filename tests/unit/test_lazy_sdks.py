"""Start-up does not pay for the vendor SDKs when no role calls them.

Importing anthropic and openai took 3-5 s of every `splitpin run` start-up on the reference
box (bench/README.md, whole_path.py). They are imported only when a remote provider is
built or an endpoint is checked; a flow answered by the local fleet never loads them.
A fresh interpreter is needed: another test may have imported them already.
"""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import sys
from splitpin.core.settings import load_settings
from splitpin.flows.routing_flow import build_flow
from splitpin.providers.registry import ProviderRegistry

governance = load_settings().governance.model_copy(
    update={"providers": load_settings().governance.providers.model_copy(update={"mode": "local"})}
)
ProviderRegistry.build(governance, env={}, local=lambda name, role: object())
print(sorted(m for m in ("anthropic", "openai", "httpx2") if m in sys.modules))
"""

REMOTE = """
import sys
from splitpin.core.settings import load_settings
from splitpin.providers.registry import ProviderRegistry

governance = load_settings().governance
registry = ProviderRegistry.build(
    governance,
    env={"ANTHROPIC_API_KEY": "sk-ant-test", "OPENAI_API_KEY": "sk-test"},
    local=lambda name, role: object(),
)
print(sorted(m for m in ("anthropic", "openai") if m in sys.modules))
"""


def _run(script: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_a_local_fleet_flow_never_imports_the_sdks() -> None:
    assert _run(SCRIPT) == "[]"


def test_remote_roles_still_get_their_sdks() -> None:
    assert _run(REMOTE) == "['anthropic', 'openai']"
