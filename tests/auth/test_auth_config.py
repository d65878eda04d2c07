"""Auth plugins at config load: `fastgate check` names the bad key, and unused plugins import nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from click.testing import CliRunner

from fastgate.cli import main


def test_fastgate_check_exits_2_naming_the_bad_auth_option(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        textwrap.dedent(
            """
            upstreams: {api: {url: "http://127.0.0.1:9"}}
            routes:
              - prefix: /
                upstream: api
                plugins:
                  - {use: jwt, options: {jwks_url: "http://127.0.0.1:9/jwks", algorithms: [RS256, none]}}
            """
        )
    )
    result = CliRunner().invoke(main, ["check", str(config)])
    assert result.exit_code == 2
    assert "routes[0].plugins[0].options" in result.output and "algorithms: 'none' is not allowed" in result.output


def test_a_gateway_without_auth_plugins_never_imports_pyjwt_or_bcrypt() -> None:
    code = textwrap.dedent(
        """
        import sys
        from fastgate import Gateway
        from fastgate.config import build_config
        config = build_config({
            "upstreams": {"api": {"url": "http://127.0.0.1:9"}},
            "routes": [{"upstream": "api", "plugins": [{"use": "rewrite", "options": {"path": "/x"}}]}],
        })
        Gateway(config)
        loaded = sorted(name for name in ("jwt", "bcrypt", "fastgate.plugins.auth.jwt_auth") if name in sys.modules)
        print(",".join(loaded) or "none")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "none"
