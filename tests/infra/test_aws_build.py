"""A team's build on the staging stack: user data, the registry's latest build, the deploy and its rollout,
the one-build fleet, the rollback to the last approved build, and the cost print with its flag.

moto (server mode) creates the stack, ECR, S3 and the auto-scaling group, but it has no instance refresh
(covered against botocore's Stubber in test_aws_stack.py) and its instances answer nothing over the
network: which build an instance serves is read from a stub info endpoint on loopback, one path per
instance address, through the real HTTP probe.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from infra.aws_build import http_probe, latest_build, render_user_data
from infra.aws_stack import AwsStack, BillableRefused, FleetError, load_template
from soundcheck import store
from tasks.provision import last_approved_build
from tasks.runs import RunContext, note_environment
from tasks.safety import rollback_steps_for
from tests.moto_fixture import moto_profile, moto_url, release_route_tables, session  # noqa: F401 - fixture

ACCOUNT = "123456789012"
REPO = f"{ACCOUNT}.dkr.ecr.ap-northeast-2.amazonaws.com/concert"


def _profile(url: str, name: str, tmp_path, **aws):
    aws = {"allow_billable": False, "app": {"image": REPO}, **aws}
    return moto_profile(url, name, top={"store_url": f"sqlite:///{tmp_path / 'results.db'}"}, **aws)


class InfoStub:
    """Spring Boot's /actuator/info for each instance, on loopback: ``/<ip>/actuator/info``."""

    def __init__(self) -> None:
        self.versions: dict[str, str] = {}
        self.default: str | None = None
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                ip = self.path.strip("/").split("/", 1)[0]
                version = stub.versions.get(ip, stub.default)
                body = json.dumps({"app": {"version": version}} if version else {}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def probe_for(self, stack: AwsStack):
        port = self.server.server_address[1]
        app = stack.env.app

        def probe(ip: str) -> str | None:  # the real probe, pointed at this instance's path on loopback
            real = http_probe(app.model_copy(update={"version_path": f"/{ip}/actuator/info"}), port, ["127.0.0.0/8"])
            return real("127.0.0.1")

        return probe


@pytest.fixture
def info():
    stub = InfoStub()
    yield stub
    stub.server.shutdown()


MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def _push(ecr, tag: str, repo: str = "concert") -> None:
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": {"digest": f"sha256:{tag}"}, "layers": []}
    ecr.put_image(repositoryName=repo, imageManifest=json.dumps(manifest), imageTag=tag)


def _user_data(stack: AwsStack) -> str:
    ec2 = stack.ec2
    group = stack.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[stack.group_name()])["AutoScalingGroups"][0]
    lt = group["LaunchTemplate"]
    data = ec2.describe_launch_template_versions(LaunchTemplateId=lt["LaunchTemplateId"], Versions=["$Latest"])
    return base64.b64decode(data["LaunchTemplateVersions"][0]["LaunchTemplateData"]["UserData"]).decode()


def _release(stack: AwsStack) -> None:
    release_route_tables(stack)
    stack.delete()


# ------------------------------------------------------------------------------------------ user data
@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="no shellcheck on PATH (Debian package shellcheck)")
@pytest.mark.parametrize("artifact", ["image", "jar"])
def test_the_user_data_renders_from_the_template_and_passes_shellcheck(artifact, tmp_path):
    values = {
        "AWS::Region": "ap-northeast-2",
        "AppVersion": "1.4.2",
        "CampaignName": "staging",
        "AppImage": REPO if artifact == "image" else "",
        "AppJarS3": "s3://builds/concert-1.4.2.jar" if artifact == "jar" else "",
        "JvmOptions": "-Xmx6g",
        "SpringProfile": "staging",
        "AppPort": "8080",
        "Database": "sc-db-1",
        "DbHost": "sc-db-1.abc.ap-northeast-2.rds.amazonaws.com",
        "DbPort": "3306",
        "DbName": "concert",
        "DbMasterUsername": "soundcheck",
        "CacheHost": "sc-cache.abc.cache.amazonaws.com",
        "KafkaArn": "arn:aws:kafka:ap-northeast-2:123456789012:cluster/sc/1",
    }
    script = render_user_data(load_template("infra/aws/stack.yaml"), values)
    path = tmp_path / "user-data.sh"
    path.write_text(script)
    res = subprocess.run(["shellcheck", "--severity=style", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout
    # the wiring the plan asks for, and no password anywhere in the script
    assert "INFO_APP_VERSION=$version" in script and "JAVA_TOOL_OPTIONS=-Xmx6g" in script
    assert "secretsmanager get-secret-value" in script and "SPRING_DATASOURCE_PASSWORD=$password" in script
    assert "MANAGEMENT_ENDPOINTS_WEB_EXPOSURE_INCLUDE=health,info,prometheus" in script
    assert "Restart=always" in script
    assert ("docker pull" in script) and ("aws s3 cp" in script)  # both paths present, chosen at boot


def test_the_health_check_and_the_instances_follow_the_service():
    t = load_template("infra/aws/stack.yaml")
    p, r = t["Parameters"], t["Resources"]
    assert p["HealthCheckPath"]["Default"] == "/actuator/health" and p["JvmOptions"]["Default"] == "-Xmx6g"
    assert "AppUserData" not in p
    tags = r["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["TagSpecifications"][0]["Tags"]
    assert {"Key": "soundcheck:campaign", "Value": {"Ref": "CampaignName"}} in tags


# ---------------------------------------------------------------------------------------- cost, flag
def test_without_the_flag_nothing_is_created_and_the_cost_is_said(moto_url, tmp_path):  # noqa: F811
    stack = AwsStack(_profile(moto_url, "sc-bill-refused", tmp_path), poll_s=0.2, session=session())
    with pytest.raises(BillableRefused, match=r"allow_billable is false.*costs about \$[0-9.]+/hour.*t3\.large"):
        stack.deploy()
    assert stack.status() is None  # nothing was created

    said: list[str] = []
    stack = AwsStack(
        _profile(moto_url, "sc-bill-allowed", tmp_path, allow_billable=True, app=None), poll_s=0.2, session=session()
    )
    stack.say = said.append
    stack.deploy()
    assert stack.status() == "CREATE_COMPLETE"
    # printed before creating: 2 × t3.large + Multi-AZ db.r5.large + ALB + NAT (cache and MSK off here)
    assert said and said[0].startswith("stack sc-bill-allowed costs about $0.87/hour")
    tags = stack.cfn.describe_stacks(StackName="sc-bill-allowed")["Stacks"][0]["Tags"]
    assert {"Key": "soundcheck:campaign", "Value": "staging-test"} in tags
    _release(stack)


# ------------------------------------------------------------------------------------- latest build
def test_latest_is_the_newest_tag_in_ecr_or_the_newest_jar_in_s3(moto_url, tmp_path):  # noqa: F811
    ecr = session().client("ecr", endpoint_url=moto_url)
    ecr.create_repository(repositoryName="concert")
    app = _profile(moto_url, "x", tmp_path).environment.aws.app

    def client(name):
        return session().client(name, endpoint_url=moto_url)

    with pytest.raises(LookupError, match="no tagged image"):
        latest_build(app, client)
    for tag in ("1.4.0", "1.4.1"):
        _push(ecr, tag)
        time.sleep(1.1)  # pushed-at has one-second resolution
    assert latest_build(app, client) == "1.4.1"

    s3 = client("s3")
    s3.create_bucket(Bucket="builds", CreateBucketConfiguration={"LocationConstraint": "ap-northeast-2"})
    for b in ("2.0.0", "2.0.1"):
        s3.put_object(Bucket="builds", Key=f"concert/concert-{b}.jar", Body=b"jar")
        time.sleep(1.1)
    s3.put_object(Bucket="builds", Key="concert/notes.txt", Body=b"not a build")
    jar = app.model_copy(update={"image": None, "jar_s3": "s3://builds/concert/concert-{build}.jar"})
    assert latest_build(jar, client) == "2.0.1"


# --------------------------------------------------------------------------- deploy, rollout, fleet
def test_a_build_is_deployed_rolled_out_and_the_fleet_must_serve_it(moto_url, tmp_path, info, monkeypatch):  # noqa: F811
    ecr = session().client("ecr", endpoint_url=moto_url)
    ecr.create_repository(repositoryName="concert-deploy")
    repo = REPO.replace("/concert", "/concert-deploy")
    for tag in ("1.4.1", "1.4.2"):
        _push(ecr, tag, "concert-deploy")
        time.sleep(1.1)
    profile = _profile(moto_url, "sc-deploy", tmp_path, allow_billable=True, app={"image": repo})
    stack = AwsStack(profile, poll_s=0.1, session=session())
    stack.say = lambda _text: None
    stack.version_probe = info.probe_for(stack)
    info.default = "1.4.2"

    ep = stack.start(build="latest")  # the nightly default: the newest tag in the registry
    assert stack.build == "1.4.2" and ep.extra["build"] == "1.4.2"
    # the run records the build deployed, not "latest"
    engine = store.open_store(profile.store_url)
    store.start_run(engine, "nightly", "staging-test", scale=1, time_scale=1, scenarios=[], target=None, build="latest")
    run = RunContext(
        run_id="nightly", profile_name="staging-test", store_url=profile.store_url, run_dir=".", started_at=""
    )
    note_environment(run, ep)
    with engine.connect() as c:
        assert c.execute(select(store.runs.c.build)).scalar_one() == "1.4.2"
    params = {
        p["ParameterKey"]: p["ParameterValue"]
        for p in stack.cfn.describe_stacks(StackName="sc-deploy")["Stacks"][0]["Parameters"]
    }
    assert params["AppImage"] == repo and params["AppVersion"] == "1.4.2" and params["JvmOptions"] == "-Xmx6g"
    assert "build 1.4.2 of the service" in _user_data(stack)

    # a new build: the stack update gives the launch template a new version, then the group is rolled
    rolled: list[tuple[int, float]] = []

    def refresh(min_healthy: int, timeout_s: float) -> str:  # moto has no instance refresh: replace instead
        rolled.append((min_healthy, timeout_s))
        return stack.restart("replace", timeout_s=30)

    monkeypatch.setattr(stack, "refresh_instances", refresh)
    old = set(stack.group_instances())
    assert stack.deploy_build("1.4.3") == "1.4.3"
    assert rolled == [(50, 1800.0)]
    assert "build 1.4.3 of the service" in _user_data(stack)
    assert not (set(stack.group_instances()) & old)

    # one instance still answers with the old build: the fleet is refused, naming it
    info.default = "1.4.3"
    ips = stack.ec2.describe_instances(InstanceIds=stack.group_instances())["Reservations"]
    first = sorted((i["InstanceId"], i["PrivateIpAddress"]) for r in ips for i in r["Instances"])[0]
    info.versions[first[1]] = "1.4.2"
    refused = rf"mixed fleet: the build under test is 1\.4\.3, but {first[0]} serves 1\.4\.2"
    with pytest.raises(FleetError, match=refused):
        stack.wait_version("1.4.3", timeout_s=0.5)
    info.versions.clear()
    assert set(stack.wait_version("1.4.3", timeout_s=5).values()) == {"1.4.3"}
    _release(stack)


def test_rollback_redeploys_the_last_approved_build(moto_url, tmp_path, info):  # noqa: F811
    profile = _profile(moto_url, "sc-rollback-build", tmp_path, allow_billable=True)
    engine = store.open_store(profile.store_url)
    t0 = datetime.now(UTC) - timedelta(days=3)
    for i, (build, verdict, status) in enumerate(
        [
            ("1.4.0", "APPROVE", "COMPLETED"),
            ("1.4.1", "APPROVE_WITH_TUNING", "COMPLETED"),  # newest approved
            ("1.4.2", "BLOCK", "COMPLETED"),
            ("1.4.3", "APPROVE", "INCOMPLETE"),
        ]
    ):
        store.start_run(engine, f"r{i}", "staging-test", scale=1, time_scale=1, scenarios=[], target=None, build=build)
        with engine.begin() as c:
            c.execute(
                store.runs.update()
                .where(store.runs.c.run_id == f"r{i}")
                .values(started_at=t0 + timedelta(hours=i), status=status, verdict=verdict)
            )
    assert store.last_approved_build(engine, "staging-test") == "1.4.1"
    assert store.last_approved_build(engine, "another-profile") is None
    assert last_approved_build(profile) == "1.4.1"  # what the provisioner hands the stack

    stack = AwsStack(profile, poll_s=0.1, session=session())
    stack.say = lambda _text: None
    stack.version_probe = info.probe_for(stack)
    info.default = "1.4.2"
    stack.start(build="1.4.2")
    stack.approved_build = "1.4.1"  # what tasks.provision reads from the store
    stack.refresh_instances = lambda _pct, _t: stack.restart("replace", timeout_s=30)  # type: ignore[method-assign]
    info.default = "1.4.1"
    steps = rollback_steps_for(profile, stack, since=datetime.now(UTC))
    assert steps["restart"]() == "redeployed build 1.4.1, the last one approved"
    assert stack.outputs()["AppVersion"] == "1.4.1"
    _release(stack)
