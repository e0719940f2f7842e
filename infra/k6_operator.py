"""A k6-operator `TestRun` for one stage, for teams that run k6 on Kubernetes (issue 14, item 5).

The manifest holds two documents: a ConfigMap with the stage's `k6 archive` (the script, `lib/common.js`
and the API dialect, with the stage's variables baked in) and a `TestRun` that runs it with
`parallelism` runners. The operator gives runner i of N `--execution-segment (i-1)/N:i/N` over the
sequence `0,1/N,…,1` (pkg/segmentation), the same parts soundcheck's generators run
(`soundcheck.segments`), so the N pods add up to the single-process test.

What differs from soundcheck's own generators, and why some stages refuse to split here:
- The open-source operator runs `setup()` in every runner (grafana/k6-operator#223). A stage whose setup
  returns what every part must share (the race's release instant and idempotency key, the admitted
  users' tokens) would get N different ones, so such stages are written with parallelism 1 only.
- Each runner keeps the script's thresholds: with no campaign watching the merged figures, a part that
  crosses the profile's abort levels stops itself. Results stay in the cluster (or in the `--out`
  given); soundcheck judges only the stages it ran.

The manifest is checked against the operator's CRD (deployments/k6-operator/testruns.k6.io.yaml).
"""

from __future__ import annotations

import base64
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from soundcheck.allowlist import check_allowlist
from soundcheck.paths import ROOT
from soundcheck.plan import PLAN

CRD_PATH = ROOT / "deployments" / "k6-operator" / "testruns.k6.io.yaml"
ARCHIVE_FILE = "archive.tar"
#: A ConfigMap holds at most 1 MiB (etcd's object limit); the plan's archives are ~40 KB.
CONFIGMAP_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class OperatorRequest:
    """What `soundcheck k6-operator` writes: one stage, its variables, its parts."""

    scenario: str
    env: dict[str, str]  # every script variable, BASE_URL included (tasks.load.scenario_env)
    parallelism: int = 1
    name: str | None = None  # the TestRun's name (default soundcheck-<scenario>)
    namespace: str | None = None
    image: str | None = None  # default grafana/k6 at this k6's version
    out: tuple[str, ...] = ()  # k6 --out outputs (results leave the pods only through one)
    allowlist: tuple[str, ...] | None = None


def refusal(scenario: str, parallelism: int, admission: str | None = None) -> str | None:
    """Why this stage cannot run as `parallelism` operator runners, or None."""
    if scenario not in PLAN:
        return f"unknown scenario {scenario!r} (one of {', '.join(PLAN)})"
    if parallelism < 1:
        return "parallelism must be 1 or more"
    shared = PLAN[scenario].shared_setup and not (scenario == "soak" and admission == "private_targets")
    if parallelism > 1 and shared:
        return (
            f"{scenario} cannot be split across k6-operator runners: its setup() returns what every part must "
            "share, and the open-source operator runs setup() in every runner (grafana/k6-operator#223). "
            "Write it with --parallelism 1, or split it across soundcheck's generators (docs/generators.md)"
        )
    return None


def k6_image(k6: str) -> str:
    """grafana/k6 at the version of the k6 that built the archive (an archive is read by its own major)."""
    out = subprocess.run([k6, "version"], capture_output=True, text=True, timeout=30).stdout
    m = re.search(r"v(\d+\.\d+\.\d+)", out)
    return f"grafana/k6:{m.group(1)}" if m else "grafana/k6:latest"


def build_archive(k6: str, script: Path, env: dict[str, str]) -> bytes:
    """`k6 archive` of the script with the stage's variables: every module and file it opens travels in it."""
    with tempfile.TemporaryDirectory() as d:
        target = Path(d) / ARCHIVE_FILE
        cmd = [k6, "archive", "--quiet", "-O", str(target)]
        for k, v in sorted(env.items()):
            cmd += ["-e", f"{k}={v}"]
        r = subprocess.run([*cmd, str(script)], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"k6 archive failed for {script.name}: {(r.stderr or r.stdout).strip()[-400:]}")
        return target.read_bytes()


def manifest(req: OperatorRequest, k6: str) -> list[dict[str, Any]]:
    """The ConfigMap and the TestRun, as plain documents (raises ValueError when the stage cannot be written)."""
    why = refusal(req.scenario, req.parallelism, req.env.get("ADMISSION"))
    if why:
        raise ValueError(why)
    base_url = req.env.get("BASE_URL")
    if not base_url:
        raise ValueError("the stage has no BASE_URL: give the target's address (--base-url or target.base_url)")
    check_allowlist(base_url, list(req.allowlist) if req.allowlist is not None else None)
    archive = build_archive(k6, PLAN[req.scenario].script, req.env)
    if len(archive) > CONFIGMAP_LIMIT:
        raise ValueError(f"the {req.scenario} archive is {len(archive)} bytes, over a ConfigMap's 1 MiB")
    name = req.name or f"soundcheck-{req.scenario}"
    labels = {"app.kubernetes.io/managed-by": "soundcheck", "soundcheck/scenario": req.scenario}
    meta: dict[str, Any] = {"name": name, "labels": dict(labels)}
    cm_meta: dict[str, Any] = {"name": f"{name}-archive", "labels": dict(labels)}
    if req.namespace:
        meta["namespace"] = cm_meta["namespace"] = req.namespace
    args = ["--no-usage-report", "--tag", f"soundcheck_scenario={req.scenario}"]
    for o in req.out:
        args += ["--out", o]
    for k, v in sorted(req.env.items()):  # also in the archive; here so a reader sees what the stage is given
        args += ["-e", f"{k}={v}"]
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": cm_meta,
        "binaryData": {ARCHIVE_FILE: base64.b64encode(archive).decode()},
    }
    testrun = {
        "apiVersion": "k6.io/v1alpha1",
        "kind": "TestRun",
        "metadata": meta,
        "spec": {
            "parallelism": req.parallelism,
            "script": {"configMap": {"name": cm_meta["name"], "file": ARCHIVE_FILE}},
            "args": args,
            "runner": {"image": req.image or k6_image(k6), "metadata": {"labels": dict(labels)}},
        },
    }
    return [configmap, testrun]


def to_yaml(documents: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, width=120)


def crd_schema(path: Path = CRD_PATH) -> dict[str, Any]:
    """The TestRun's openAPIV3Schema (v1alpha1) from the operator's CRD."""
    crd = next(d for d in yaml.safe_load_all(path.read_text()) if d)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    return version["schema"]["openAPIV3Schema"]


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused (`kubectl apply --validate=strict`), where the CRD does not
    keep them (`x-kubernetes-preserve-unknown-fields`) or type them (`additionalProperties`)."""
    out = {k: v for k, v in schema.items()}
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def validate(testrun: dict[str, Any], path: Path = CRD_PATH) -> list[str]:
    """Where the TestRun breaks the CRD's schema (strictly: unknown fields too); empty when it conforms."""
    import jsonschema

    validator = jsonschema.Draft7Validator(strict(crd_schema(path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(testrun)]
