"""`soundcheck k6-operator`: a stage as a k6-operator TestRun, checked against the operator's own CRD."""

from __future__ import annotations

import base64
import copy
import io
import json
import subprocess
import tarfile
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from infra.k6_operator import CRD_PATH, OperatorRequest, manifest, refusal, validate
from soundcheck.cli import write_k6_operator
from soundcheck.paths import venv_bin
from soundcheck.segments import Segment

K6 = venv_bin("k6")
needs_k6 = pytest.mark.skipif(K6 is None, reason="k6 binary not installed")
TARGET = "http://127.0.0.1:8080"


def _write(tmp_path: Path, scenario: str, *args: str) -> tuple[int, list[dict]]:
    out = tmp_path / f"{scenario}.yaml"
    profile = tmp_path / "p.yaml"
    if not profile.exists():
        profile.write_text("name: k8s\nscale: 0.02\ntime_scale: 0.05\n")
    opts = dict(parallelism=None, base_url=TARGET, name=None, namespace=None, image=None, out=None)
    for a in args:
        k, v = a.split("=", 1)
        opts[k] = int(v) if k == "parallelism" else v
    rc = write_k6_operator(scenario, profile, output=out, **opts)  # type: ignore[arg-type]
    return rc, (list(yaml.safe_load_all(out.read_text())) if out.exists() else [])


def _operator_fragments(index: int, total: int) -> list[str]:
    """grafana/k6-operator pkg/segmentation.NewCommandFragments (runner `index` is 1-based), as written there."""
    parts = ["0", *[f"{i}/{total}" for i in range(1, total)], "1"]

    def part(i: int) -> str:
        return "0" if i == 0 else "1" if i == total else f"{i}/{total}"

    return [f"--execution-segment={part(index - 1)}:{part(index)}", f"--execution-segment-sequence={','.join(parts)}"]


def _fractions(flags: list[str]) -> tuple[list[Fraction], list[Fraction]]:
    """(segment bounds, sequence) of `--execution-segment=a:b --execution-segment-sequence=…` as numbers."""
    seg, seq = (f.split("=", 1)[1] for f in flags)
    return [Fraction(x) for x in seg.split(":")], [Fraction(x) for x in seq.split(",")]


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6])
def test_the_operators_runners_get_the_segments_our_generators_run(n: int) -> None:
    for i in range(n):
        ours = Segment(i, n).k6_args()  # k6 reads 2/4 and 1/2 as the same point
        assert _fractions([f"{ours[0]}={ours[1]}", f"{ours[2]}={ours[3]}"]) == _fractions(_operator_fragments(i + 1, n))


@needs_k6
def test_a_split_spike_is_a_testrun_the_crd_accepts(tmp_path: Path) -> None:
    rc, docs = _write(tmp_path, "spike", "parallelism=2", "namespace=load")
    assert rc == 0
    configmap, testrun = docs
    assert validate(testrun) == []
    spec = testrun["spec"]
    assert spec["parallelism"] == 2 and testrun["metadata"]["namespace"] == "load"
    assert spec["script"]["configMap"] == {"name": configmap["metadata"]["name"], "file": "archive.tar"}
    assert spec["runner"]["image"].startswith("grafana/k6:")
    args = spec["args"]
    env = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "-e")
    assert env["BASE_URL"] == TARGET and env["SCALE"] == "0.02" and env["USER_OFFSET"] == "1601"


@needs_k6
def test_the_validator_refuses_what_the_operator_would_not_take(tmp_path: Path) -> None:
    _, (_, testrun) = _write(tmp_path, "spike", "parallelism=2")
    typo = copy.deepcopy(testrun)
    typo["spec"]["paralelism"] = typo["spec"].pop("parallelism")
    assert any("paralelism" in p for p in validate(typo))
    wrong = copy.deepcopy(testrun)
    wrong["spec"]["parallelism"] = "two"
    assert any("parallelism" in p for p in validate(wrong))
    bad_cleanup = copy.deepcopy(testrun)
    bad_cleanup["spec"]["cleanup"] = "always"
    assert any("cleanup" in p for p in validate(bad_cleanup))


@needs_k6
def test_the_archive_carries_the_script_its_modules_and_the_stages_variables(tmp_path: Path) -> None:
    _, (configmap, _) = _write(tmp_path, "spike", "parallelism=2")
    blob = base64.b64decode(configmap["binaryData"]["archive.tar"])
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        names = tar.getnames()
        meta = json.load(tar.extractfile("metadata.json"))  # type: ignore[arg-type]
    assert any(n.endswith("scenarios/lib/common.js") for n in names)
    assert any(n.endswith(".json") and "dialects" in n for n in names)  # the API dialect the script opens
    assert meta["env"]["SCALE"] == "0.02"
    # it runs anywhere: k6 reads it in an empty folder, with the plan's VUs at this scale
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    (empty / "archive.tar").write_bytes(blob)
    r = subprocess.run(
        [K6, "inspect", "--execution-requirements", "archive.tar"], cwd=empty, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["maxVUs"] == 200  # 10,000 users × 0.02


@needs_k6
def test_a_stage_whose_setup_must_be_shared_is_not_split(tmp_path: Path, capsys) -> None:
    rc, docs = _write(tmp_path, "race", "parallelism=2")
    assert rc == 2 and docs == []
    err = capsys.readouterr().err
    assert "grafana/k6-operator#223" in err and "--parallelism 1" in err
    rc, (_, testrun) = _write(tmp_path, "race", "parallelism=1")
    assert rc == 0 and testrun["spec"]["parallelism"] == 1 and validate(testrun) == []


def test_only_soak_with_private_targets_splits_despite_its_setup() -> None:
    assert refusal("soak", 2, "private_targets") is None
    assert refusal("soak", 2, "queue") is not None
    assert refusal("spike", 4) is None
    assert "unknown scenario" in (refusal("nope", 1) or "")


@needs_k6
def test_a_target_off_the_allowlist_is_refused_and_nothing_is_written(tmp_path: Path, capsys) -> None:
    rc, docs = _write(tmp_path, "spike", "base_url=http://10.0.0.5:8080")
    assert rc == 2 and docs == []
    assert "not on the allowlist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="BASE_URL"):
        manifest(OperatorRequest("spike", {"SCALE": "1"}), K6)  # type: ignore[arg-type]


def test_the_crd_in_the_repository_is_the_operators() -> None:
    head = CRD_PATH.read_text().splitlines()[0]
    assert "grafana/k6-operator@" in head
    crd = next(d for d in yaml.safe_load_all(CRD_PATH.read_text()) if d)
    assert crd["metadata"]["name"] == "testruns.k6.io"
