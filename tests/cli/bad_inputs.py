"""Hostile and odd configurations through load -> plan -> apply against the embedded head.

Run as `python -m tests.cli.bad_inputs DIR` (one Ray driver for the whole table); prints one JSON
line per case: {"case", "outcome": "error"|"done"|"failed"|..., "field", "message", "line"}, and
"traceback" for anything that is neither a clear error nor a run. The test in test_cli.py holds
the expected outcomes.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Dict, List, Tuple

RES = "resources:\n  cpu: 1\n  memory: 0..\n"
TASK = "type: task\ncommands: [\"true\"]\n"

# (case, YAML body, expected outcome, expected field prefix or None)
CASES: List[Tuple[str, str, str, str]] = [
    ("memory-1e300", TASK + "resources:\n  memory: 1e300\n", "error", "resources.memory"),
    ("memory-inf", TASK + "resources:\n  memory: .inf\n", "error", "resources.memory"),
    ("memory-nan", TASK + "resources:\n  memory: .nan\n", "error", "resources.memory"),
    ("memory-1e400GB", TASK + "resources:\n  memory: 1e400GB\n", "error", "resources.memory"),
    ("cpu-400-digits", TASK + "resources:\n  cpu: " + "9" * 400 + "\n", "error", "resources.cpu"),
    ("memory-negative", TASK + "resources:\n  memory: -8GB\n", "error", "resources.memory"),
    ("cpu-negative", TASK + "resources:\n  cpu: -1\n", "error", "resources.cpu"),
    ("shm-negative", TASK + "resources:\n  shm_size: -1GB\n", "error", "resources.shm_size"),
    ("gpu-huge", TASK + "resources:\n  gpu: 1000000000000\n", "error", "resources.gpu"),
    ("disk-1e400", TASK + "resources:\n  disk: 1e400GB\n", "error", "resources.disk"),
    ("entrypoint-quote", "type: task\nimage: img\nentrypoint: python -c 'print(1)\n", "error", "entrypoint"),
    ("image-option", "type: task\nimage: --privileged\ncommands: [\"true\"]\n", "error", "image"),
    ("image-space", "type: task\nimage: \"a b\"\ncommands: [\"true\"]\n", "error", "image"),
    ("user-option", "type: task\nimage: img\nuser: --privileged\ncommands: [\"true\"]\n", "error", "user"),
    ("volume-options", "type: task\nimage: img\ncommands: [\"true\"]\nvolumes:\n  - instance_path: /data\n    path: /data:ro\n", "error", "volumes"),
    ("repo-hash-injection", TASK + "repos:\n  - url: https://example.com/r.git\n    hash: \"--upload-pack=touch /tmp/x;git-upload-pack\"\n", "error", "repos[0].hash"),
    ("repo-branch-option", TASK + "repos:\n  - url: https://example.com/r.git\n    branch: -x\n", "error", "repos[0].branch"),
    ("repo-url-option", TASK + "repos:\n  - url: --upload-pack=x\n", "error", "repos[0].url"),
    ("env-key-hash", TASK + "env:\n  \"#X\": y\n", "error", "env"),
    ("env-key-dash", TASK + "env:\n  A-B: y\n", "error", "env"),
    ("env-item-digit", TASK + "env:\n  - 1A=x\n", "error", "env"),
    ("env-null", TASK + "env:\n  A: null\n", "error", "env"),
    ("files-absolute", TASK + "files:\n  - data.txt:/proc/dstack-ray-test\n", "error", "files[0]"),  # no view can hold it
    ("files-dotdot", TASK + "files:\n  - data.txt:../x\n", "error", "files[0]"),
    ("files-home-dotdot", TASK + "files:\n  - data.txt:~/../x\n", "error", "files[0]"),
    ("files-missing", TASK + "files:\n  - nowhere.txt:x\n", "error", "files"),
    ("working-dir-absolute", TASK + "working_dir: /sys/app\n", "error", "working_dir"),
    ("working-dir-user-home", TASK + "working_dir: ~root/x\n", "error", "working_dir"),
    ("repo-path-absolute", TASK + "repos:\n  - url: https://example.com/r.git\n    path: /proc/r\n", "error", "repos[0].path"),
    ("name-bad", TASK + "name: Bad_Name\n", "error", "name"),
    ("name-too-long", TASK + "name: " + "a" * 50 + "\n", "error", "name"),
    ("priority-101", TASK + "priority: 101\n", "error", "priority"),
    ("nodes-zero", TASK + "nodes: 0\n", "error", "nodes"),
    ("port-too-large", TASK + "ports: [70000]\n", "error", "ports"),
    ("retry-negative", TASK + "retry:\n  duration: -5\n", "error", "retry"),
    ("duration-compound", TASK + "max_duration: 1h30m\n", "error", "max_duration"),
    ("cron-out-of-range", TASK + "schedule:\n  cron: \"61 * * * *\"\n", "error", "schedule"),
    ("shell-zsh", TASK + "shell: zsh\n", "error", "shell"),
    ("python-2", TASK + "python: \"2.7\"\n", "error", "python"),
    ("image-and-python", TASK + "image: img\npython: \"3.12\"\n", "error", ""),
    ("docker-and-image", TASK + "image: img\ndocker: true\n", "error", ""),
    ("registry-secrets", "type: task\nimage: img\ncommands: [\"true\"]\nregistry_auth:\n  username: u\n  password: ${{ secrets.T }}\n", "error", "registry_auth.password"),
    ("registry-missing-env", "type: task\nimage: img\ncommands: [\"true\"]\nregistry_auth:\n  username: u\n  password: pre${{ env.NOPE }}post\n", "error", "registry_auth.password"),
    ("command-bool", "type: task\ncommands: [true]\n", "error", "commands[0]"),
    ("commands-string", "type: task\ncommands: echo hi\n", "error", "commands"),
    ("no-commands", "type: task\n", "error", ""),
    ("gpu-top-level", TASK + "gpu: 1\n", "error", "gpu"),
    ("type-service", "type: service\ncommands: [\"true\"]\nport: 80\n", "error", "type"),
    ("alias-bomb", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: [*d, *d, *d, *d, *d, *d, *d, *d, *d]\ntype: task\ncommands: [\"true\"]\n", "error", ""),
    ("utilization-101", TASK + "utilization_policy:\n  min_gpu_utilization: 101\n  time_window: 5m\n", "error", "utilization_policy"),
    ("spot-cheap", TASK + "spot_policy: cheap\n", "error", "spot_policy"),
    ("stop-criteria-bad", TASK + "stop_criteria: never\n", "error", "stop_criteria"),
    ("startup-order-bad", TASK + "startup_order: random\n", "error", "startup_order"),
    ("gpu-count-conflict", TASK + "resources:\n  gpu: \"2:3\"\n", "error", "resources.gpu"),
    ("groups-duplicate", "type: task\ngroups:\n  - name: a\n    commands: [\"true\"]\n  - name: a\n    commands: [\"true\"]\n", "error", "groups"),
    ("not-a-mapping", "- just\n- a list\n", "error", ""),
    # Documented acceptances: these run.
    ("env-multiline", "type: task\nenv:\n  PEM: |\n    -----BEGIN-----\n    -----END-----\ncommands:\n  - printf '%s' \"$PEM\" | wc -l\n" + RES, "done", ""),
    ("files-home", "type: task\nfiles:\n  - data.txt:~/in/data.txt\ncommands:\n  - cat ~/in/data.txt\n" + RES, "done", ""),
    ("working-dir-relative", "type: task\nworking_dir: sub\ncommands:\n  - pwd\n" + RES, "done", ""),
    ("working-dir-home", "type: task\nworking_dir: ~/w\ncommands:\n  - pwd\n" + RES, "done", ""),
    ("dollar-dollar", "type: task\ncommands:\n  - echo $$ > /dev/null && echo pid-ok\n" + RES, "done", ""),
    ("cuda-in-env", "type: task\nenv:\n  CUDA_VISIBLE_DEVICES: \"0\"\ncommands:\n  - echo ${CUDA_VISIBLE_DEVICES:-none}\n" + RES, "done", ""),
    ("stop-duration", "type: task\nstop_duration: 5m\ncommands: [\"true\"]\n" + RES, "done", ""),
    ("unicode-env", "type: task\nenv:\n  GREETING: \"héllo ✓\"\ncommands:\n  - echo \"$GREETING\"\n" + RES, "done", ""),
    ("cpu-at-the-limit", "type: task\ncommands: [\"true\"]\nresources:\n  cpu: 1000000000\n  memory: 0..\n", "failed", ""),
]


def run_case(client, directory: Path, case: str, body: str) -> Dict:
    from dstack_ray.config import ConfigurationError
    from dstack_ray.errors import DstackRayError

    path = directory / f"{case}.dstack.yml"
    path.write_text(body)
    try:
        cfg = client.load(path)
        client.plan(client.prepare(cfg))
        run = client.apply(path)
    except ConfigurationError as e:
        issue = e.issues[0]
        return {"outcome": "error", "field": issue.path or "", "line": issue.line, "message": str(e)}
    except DstackRayError as e:
        return {"outcome": "error", "field": "", "line": None, "message": str(e)}
    except Exception:
        return {"outcome": "traceback", "message": traceback.format_exc()}
    status = run.wait(90)
    return {"outcome": status.value, "run": run.name, "logs": list(run.logs())}


def main(directory: str) -> None:
    from dstack_ray import Client

    target = Path(directory)
    (target / "data.txt").write_text("data\n")
    client = Client()
    for case, body, _, _ in CASES:
        print(json.dumps({"case": case, **run_case(client, target, case, body)}), flush=True)
    after = client.apply({"type": "task", "name": "after-the-table", "commands": ["echo admitted"], "resources": {"cpu": 1, "memory": "0.."}})
    print(json.dumps({"case": "after-the-table", "outcome": after.wait(90).value, "logs": list(after.logs())}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
