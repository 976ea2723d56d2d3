"""The chaos suite's table, for the report: run ``tests/chaos`` and keep what it printed.

``tests/chaos`` prints one table in pytest's terminal summary ("chaos: what each fault
cost": events in, verdicts, lost, duplicated, recovery seconds per case). Three lengths:

- ``full``: ``bash scripts/chaos.sh`` (60 s broker outage, twice the events per case);
- ``short``: the suite as ``scripts/test.sh`` runs it (20 s outage, ``CHAOS_SCALE=1``);
- ``smoke``: one case at half length, to prove the machinery.

The suite starts brokers of its own (it kills and restarts them); it does not use the
benchmark's broker.

    python bench/chaos_table.py --mode short
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for bench

from bench.common import PY, ROOT, bench_env

MODES: dict[str, tuple[list[str], dict[str, str], float]] = {
    "full": (["bash", "scripts/chaos.sh"], {}, 3600.0),
    "short": (
        [PY, "-m", "pytest", "-p", "no:cacheprovider", "tests/chaos", "-q"],
        {"CHAOS_OUTAGE_S": "20", "CHAOS_SCALE": "1"},
        2400.0,
    ),
    "smoke": (
        [
            PY,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "tests/chaos/test_members.py",
            "-q",
            "-k",
            "kill_9_of_a_member",
        ],
        {"CHAOS_OUTAGE_S": "10", "CHAOS_SCALE": "0.5"},
        900.0,
    ),
}
TITLE = "chaos: what each fault cost"


def parse(output: str) -> dict[str, Any]:
    """The table's lines after its section title, and pytest's closing line."""
    lines = output.splitlines()
    table: list[str] = []
    for i, line in enumerate(lines):
        if TITLE in line:
            for row in lines[i + 1 :]:
                if not row.startswith("|"):
                    break
                table.append(row)
            break
    summary = next(
        (ln.strip("= ") for ln in reversed(lines) if re.search(r"\d+ (passed|failed)", ln)), ""
    )
    return {"table": table, "summary": summary}


def run(mode: str) -> dict[str, Any]:
    cmd, env, timeout = MODES[mode]
    started = time.monotonic()
    try:
        out = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=bench_env(**env),
            stdin=subprocess.DEVNULL,
        )
        output, code = out.stdout + out.stderr, out.returncode
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        code = -1
    res = parse(output)
    res.update(
        {
            "mode": mode,
            "command": " ".join(f"{k}={v}" for k, v in env.items()) + " " + " ".join(cmd),
            "exit_code": code,
            "seconds": round(time.monotonic() - started),
        }
    )
    if not res["table"]:
        res["tail"] = output[-2000:]
    return res


def render(res: dict[str, Any]) -> str:
    if not res.get("table"):
        return f"(no table: `{res['command']}` exited {res['exit_code']})"
    return "\n".join(res["table"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mode", choices=sorted(MODES), default="short")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.mode)
    print(json.dumps(res) if args.json else render(res) + f"\n\n{res['summary']}")
    return 0 if res["exit_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
