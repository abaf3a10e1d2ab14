"""`forwarder status`: reads the store read-only, while the daemon runs or after it stopped."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from forwarder.cli import main
from forwarder.cli.status import format_age
from forwarder.okta.keys import generate_signing_key
from forwarder.signals import format_ms
from tests.harness import Harness, harness, ips

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with harness(tmp_path) as h:
        yield h


def write_config(h: Harness, only: set[str] | None = None) -> Path:
    """The harness's store and providers as a TOML config file."""
    text = f"[store]\npath = {json.dumps(str(h.tmp / 'forwarder.db'))}\n"
    for p in h.providers:
        if only is None or p["name"] in only:
            text += "\n[[providers]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in p.items())
    path = h.tmp / "forwarder.toml"
    path.write_text(text)
    return path


async def run_status(*args: str) -> tuple[int, str, str]:
    """`python -m forwarder status ...` in a separate process (the daemon keeps running)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "forwarder",
        "status",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def deliver_one_and_fail_one(h: Harness) -> tuple[str, Any]:
    """`good` delivers 3 IPs; `bad` (refused key) keeps them; returns good's client id."""
    good = h.add_provider("good")
    h.add_provider("bad", registered_key=generate_signing_key("RS256"))
    daemon = await h.start()
    status, _ = await h.post(
        [{"ip": ip, "riskLevel": "HIGH"} for ip in ips(2)]
        + [{"ip": "192.0.2.9", "riskLevel": "LOW"}]
    )
    assert status == 202
    await h.until(
        lambda: len(h.delivered(good)) >= 3 and daemon.dispatchers["bad"].state.status == "failing"
    )
    return good, daemon


async def stopped_one_good_one_bad(
    h: Harness, capsys: pytest.CaptureFixture[str], only: set[str] | None = None
) -> Path:
    """:func:`deliver_one_and_fail_one`, then the daemon stopped and its logs dropped: the
    config (:func:`write_config`) to run `status` on."""
    await deliver_one_and_fail_one(h)
    await h.stop()
    config = write_config(h, only)
    capsys.readouterr()
    return config


@pytest.mark.slow
async def test_status_reads_a_running_daemons_store(h: Harness) -> None:
    """From another process, while the daemon runs: pending by level, state, last call."""
    await deliver_one_and_fail_one(h)
    config = write_config(h)
    code, out, err = await run_status("--config", str(config), "--json")
    assert code == 0, err
    doc = json.loads(out)["providers"]
    good, bad = doc["good"], doc["bad"]
    assert good["state"] == "ok"
    assert good["pending"] == {"HIGH": 0, "MEDIUM": 0, "LOW": 0}
    assert good["last_outcome"] == "accepted"
    assert good["last_call_at"] == format_ms(int(h.org.accepted[0].at * 1000))
    assert good["dead_letters"] == 0
    assert bad["state"] == "failing"
    assert bad["pending"] == {"HIGH": 2, "MEDIUM": 0, "LOW": 1}
    assert bad["pending_total"] == 3
    assert set(bad["oldest"]) == {"HIGH", "LOW"}
    assert "key" in bad["hint"]
    assert bad["last_call_at"] is None  # the token was refused: no events call was made
    status, _ = await h.post([{"ip": "192.0.2.10", "riskLevel": "LOW"}])
    assert status == 202  # the reader never blocked the writer


async def test_status_table_after_the_daemon_stopped(
    h: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table shows each provider's row and, under a failing one, its error and hint."""
    config = await stopped_one_good_one_bad(h, capsys)
    assert main(["status", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "PROVIDER",
        "STATE",
        "HIGH",
        "MEDIUM",
        "LOW",
        "DEAD",
        "LAST",
        "CALL",
        "OUTCOME",
    ]
    good = next(line for line in lines if line.startswith("good "))
    assert good.split()[1:6] == ["ok", "0", "0", "0", "0"]
    assert good.endswith("accepted")
    bad_at = next(i for i, line in enumerate(lines) if line.startswith("bad "))
    assert lines[bad_at].split()[1:3] == ["failing", "2"]
    notes = lines[bad_at + 1 :]
    assert notes[0].strip().startswith("failing until ")
    assert notes[1].strip().startswith("error: token request refused")
    assert notes[2].strip().startswith("hint: no key with kid")  # the hint, printed once
    assert sum("no key with kid" in line for line in lines) == 1


async def test_status_lists_rows_of_a_provider_no_longer_configured(
    h: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rows left by a provider removed from the config still show, marked not_configured."""
    config = await stopped_one_good_one_bad(h, capsys, only={"good"})
    assert main(["status", "--config", str(config), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)["providers"]
    assert list(doc) == ["good", "bad"]
    assert doc["bad"]["state"] == "not_configured"
    assert doc["bad"]["pending_total"] == 3


def test_status_without_a_store_says_so_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A config whose store file does not exist: exit 1 naming the path."""
    config = tmp_path / "forwarder.toml"
    config.write_text(
        '[store]\npath = "nowhere/forwarder.db"\n[[providers]]\nname = "a"\n'
        'org_url = "https://a.okta.com"\nclient_id = "0oa1"\nprivate_key_file = "k.json"\n'
    )
    assert main(["status", "--config", str(config)]) == 1
    assert "no store at" in capsys.readouterr().err


def test_status_without_config_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --config and no FORWARDER_CONFIG: exit 2 saying how to give one."""
    monkeypatch.delenv("FORWARDER_CONFIG", raising=False)
    assert main(["status"]) == 2
    assert "--config" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (65, "1m05s"), (7380, "2h03m"), (93600, "1d02h"), (-5, "0s")],
)
def test_ages_are_short(seconds: float, text: str) -> None:
    """Ages print as 45s, 3m05s, 2h03m, 1d02h (never negative)."""
    assert format_age(seconds) == text


async def test_status_filters_by_provider_and_state(
    h: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """--state failing lists only the failing org; --provider NAME only that one."""
    config = await stopped_one_good_one_bad(h, capsys)
    assert main(["status", "--config", str(config), "--json", "--state", "failing"]) == 0
    assert list(json.loads(capsys.readouterr().out)["providers"]) == ["bad"]
    assert main(["status", "--config", str(config), "--json", "--provider", "good"]) == 0
    assert list(json.loads(capsys.readouterr().out)["providers"]) == ["good"]
    assert main(["status", "--config", str(config), "--provider", "nobody"]) == 2
    assert "no provider named nobody" in capsys.readouterr().err
