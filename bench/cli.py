"""The CLI as a user times it: `dstack-ray ps -a` against `ray job list` on the same head,
`apply -d` of a one-node task, and what the dashboard's Jobs tab holds afterwards.

    python bench/cli.py [--reps 7]

Starts its own local head (`dstack-ray server start`, token auth on, in a temporary HOME),
submits one run with `apply -d`, makes five more CLI calls, then times each command `--reps`
times as fresh processes (what a user pays: interpreter, imports, the call). The baseline is
Ray's own CLI listing jobs over HTTP from the same head's dashboard. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, List

from common import report, summary

CLI = [sys.executable, "-m", "dstack_ray_cli.main"]
RAY_CLI = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"]
TASK = "type: task\nname: bench-cli-{i}\ncommands:\n  - echo hello\nresources:\n  cpu: 1\n  memory: 0..\n"


def timed(argv: List[str], env: Dict[str, str], cwd: str) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stdout + result.stderr
    return elapsed


def jobs_tab(head: Dict, token: str) -> List[Dict]:
    request = urllib.request.Request(head["dashboard_url"] + "/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="dstack-ray-bench-cli-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), DSTACK_RAY_STATE_DIR=str(home / ".dstack-ray"), RAY_USAGE_STATS_ENABLED="0", COLUMNS="200")
    cwd = str(home)
    subprocess.run([*CLI, "server", "start", "--num-cpus", "2"], env=env, check=True, capture_output=True, timeout=300)
    try:
        head = json.loads((home / ".dstack-ray" / "local-head.json").read_text())
        token = (home / ".ray" / "auth_token").read_text().strip()
        (home / "t0.dstack.yml").write_text(TASK.format(i=0))
        timed([*CLI, "apply", "-f", "t0.dstack.yml", "-y", "-d"], env, cwd)
        for call in (["ps"], ["ps", "-a"], ["logs", "bench-cli-0"], ["events", "bench-cli-0"], ["ps", "-a", "--json"]):
            timed([*CLI, *call], env, cwd)
        tab = jobs_tab(head, token)
        ray_env = {**env, "RAY_AUTH_MODE": "token"}
        ray_list = [timed([*RAY_CLI, "job", "list", "--address", head["dashboard_url"]], ray_env, cwd) for _ in range(args.reps)]
        ps_all = [timed([*CLI, "ps", "-a"], env, cwd) for _ in range(args.reps)]
        applies = []
        for i in range(1, args.reps + 1):
            (home / f"t{i}.dstack.yml").write_text(TASK.format(i=i))
            applies.append(timed([*CLI, "apply", "-f", f"t{i}.dstack.yml", "-y", "-d"], env, cwd))
        ps, ray = summary(ps_all), summary(ray_list)
        report(
            "cli",
            {
                "ps_all_s": ps,
                "ray_job_list_s": ray,
                "ps_all_vs_ray_job_list": round(ps["median"] / ray["median"], 3),
                "apply_detach_s": summary(applies),
                "jobs_tab_after_one_run_and_five_calls": [f"{j.get('submission_id') or j.get('job_id')} {j['status']}" for j in tab],
            },
        )
    finally:
        subprocess.run([*CLI, "server", "stop"], env=env, capture_output=True, timeout=120)


if __name__ == "__main__":
    main()
