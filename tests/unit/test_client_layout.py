"""``client_ext`` runs in notebooks without the server package (its cycles: unit/test_layout)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_client_ext_imports_nothing_of_the_server():
    code = (
        "import sys, client_ext.gateway\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'gateway_backend'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
