"""The AWS staging environment (plan §4) through boto3: CloudFormation stack, capacity, targets, teardown.

``AwsStack(profile).start()`` creates or updates the stack from ``infra/aws/stack.yaml`` and waits for
it, sets the auto-scaling group's desired capacity, waits until that many targets are healthy in the
ALB target group and returns the `Endpoints` read from the stack outputs. For R-SAFE it can take the
test servers out of the target group (`deregister_targets`, which also suspends the group's
AddToLoadBalancer process so replacements do not come back in) and restart them (`restart`: an
instance refresh, or a rolling replacement). `stop()` deletes the stack when the profile asks for it.

The template is written in YAML with CloudFormation's short tags and submitted as JSON: the loader
below turns ``!GetAtt A.B.C`` into ``["A", "B.C"]`` as CloudFormation does (moto's own YAML loader
splits on every dot). Every call takes an ``endpoint_url`` so the tests run against moto's server.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from string import Template
from typing import Any, Literal

import yaml

from infra.aws_build import FleetError, app_parameters, fleet_sentence, http_probe, latest_build
from infra.aws_cost import estimate
from infra.endpoints import Endpoints
from soundcheck.paths import ROOT
from soundcheck.profile import AwsEnv, Profile

log = logging.getLogger(__name__)

_DONE = {"CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "IMPORT_COMPLETE"}
_FAILED = {"CREATE_FAILED", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_FAILED", "UPDATE_ROLLBACK_FAILED"}


class BillableRefused(RuntimeError):
    """The profile did not allow billable resources (environment.aws.allow_billable); one sentence."""


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation short-form intrinsics (!Ref, !GetAtt, !Sub, !If …)."""


def _intrinsic(loader: _CfnLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


_CfnLoader.add_multi_constructor("!", _intrinsic)


def load_template(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_absolute():
        p = ROOT / p
    return yaml.load(p.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


def template_body(path: str | Path) -> str:
    body = json.dumps(load_template(path), separators=(",", ":"))
    if len(body) > 51_200:
        raise ValueError(f"template is {len(body)} bytes; TemplateBody allows 51,200 (upload it to S3)")
    return body


def cloudwatch_dimensions(outputs: dict[str, str]) -> dict[str, str]:
    """CloudWatch dimension values derived from ARNs (the ALB's is the part after ``loadbalancer/``)."""
    out = {}
    lb = outputs.get("LoadBalancerArn", "")
    if ":loadbalancer/" in lb:
        out["LoadBalancer"] = lb.split(":loadbalancer/", 1)[1]
    tg = outputs.get("TargetGroupArn", "")
    if ":targetgroup/" in tg:
        out["TargetGroup"] = "targetgroup/" + tg.split(":targetgroup/", 1)[1]
    return out


class AwsStack:
    """One CloudFormation stack of the staging environment, and the operations a campaign needs."""

    def __init__(
        self, profile: Profile | AwsEnv, *, database_url: str | None = None, poll_s: float = 15.0, session: Any = None
    ):
        import boto3

        if isinstance(profile, Profile):
            self.env = profile.environment.aws
            database_url = database_url or self.env.database_url or profile.target.database_url
            self.campaign, self.allowlist = profile.name, list(profile.target.allowlist)
        else:
            self.env = profile
            database_url = database_url or self.env.database_url
            self.campaign, self.allowlist = self.env.stack_name, []
        #: Read-only DSN template for the plan's SQL checks: ${Output} from the stack, then ${VAR} from the
        #: environment (no secrets in files); resolved in `endpoints()`.
        self.database_url_template = database_url
        self.poll_s = poll_s
        self.session = session or boto3.session.Session(region_name=self.env.region)
        kw = {"region_name": self.env.region, "endpoint_url": self.env.endpoint_url}
        self.cfn = self.session.client("cloudformation", **kw)
        self.asg = self.session.client("autoscaling", **kw)
        self.elb = self.session.client("elbv2", **kw)
        self.kafka = self.session.client("kafka", **kw)
        self.ec2 = self.session.client("ec2", **kw)
        self._client_kw = kw
        self._outputs: dict[str, str] | None = None
        self.admin_token: str | None = None
        #: The build deployed by this campaign (`deploy_build`), and the last one a verdict approved (the
        #: rollback redeploys it); both None when the profile deploys no app.
        self.build: str | None = None
        self.approved_build: str | None = None
        #: How the build an instance serves is read: ip → build (default: its info endpoint over HTTP).
        self.version_probe: Callable[[str], str | None] | None = None
        #: Where the cost estimate and other pre-create notices go.
        self.say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)

    # -- stack ----------------------------------------------------------------------------------------
    def status(self) -> str | None:
        from botocore.exceptions import ClientError

        try:
            stacks = self.cfn.describe_stacks(StackName=self.env.stack_name)["Stacks"]
        except ClientError as e:
            if "does not exist" in str(e):
                return None
            raise
        status = stacks[0]["StackStatus"] if stacks else None
        return None if status == "DELETE_COMPLETE" else status

    def deploy(self, parameters: dict[str, str] | None = None, timeout_s: float = 3600.0) -> dict[str, str]:
        """Create the stack, or update it in place; wait until it settles; return its outputs."""
        from botocore.exceptions import ClientError

        params = {**self.env.parameters, **(parameters or {})}
        params.setdefault("DesiredCapacity", str(self.env.desired_capacity))
        params.setdefault("CampaignName", self.campaign)
        if self.env.app and self.build:
            params = {**app_parameters(self.env.app, self.build), **params}
        cost = estimate(params, self.env.desired_capacity, self.env.hourly_prices).sentence(self.env.stack_name)
        if not self.env.allow_billable:
            raise BillableRefused(
                f"environment.aws.allow_billable is false, so stack {self.env.stack_name} is not created or "
                f"changed: {cost}; set it to true to go ahead"
            )
        self.say(cost)
        args = {
            "StackName": self.env.stack_name,
            "TemplateBody": template_body(self.env.template),
            "Parameters": [{"ParameterKey": k, "ParameterValue": str(v)} for k, v in params.items()],
            # every resource that takes tags names the campaign that created it
            "Tags": [{"Key": "soundcheck", "Value": "staging"}, {"Key": "soundcheck:campaign", "Value": self.campaign}],
        }
        status = self.status()
        if status == "ROLLBACK_COMPLETE":  # a failed first create can only be deleted
            log.warning("stack %s is ROLLBACK_COMPLETE; deleting it before creating again", self.env.stack_name)
            self.delete(timeout_s)
            status = None
        if status is None:
            self.cfn.create_stack(**args, OnFailure="ROLLBACK")
        else:
            try:
                self.cfn.update_stack(**args)
            except ClientError as e:
                if "No updates are to be performed" not in str(e):
                    raise
        final = self._wait(timeout_s)
        if final not in _DONE or final == "UPDATE_ROLLBACK_COMPLETE":
            raise RuntimeError(f"stack {self.env.stack_name} ended {final}: {self._failure_reason()}")
        self._outputs = None
        return self.outputs()

    def _wait(self, timeout_s: float) -> str | None:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status()
            if status is None or not status.endswith("_IN_PROGRESS"):
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"stack {self.env.stack_name} still {status} after {timeout_s:.0f} s")
            time.sleep(self.poll_s)

    def _failure_reason(self) -> str:
        try:
            events = self.cfn.describe_stack_events(StackName=self.env.stack_name)["StackEvents"]
        except Exception:  # noqa: BLE001 - best effort for the message
            return "no events"
        for ev in events:
            if ev.get("ResourceStatus", "").endswith("FAILED"):
                return f"{ev.get('LogicalResourceId')}: {ev.get('ResourceStatusReason', '')}"
        return "no failed resource reported"

    def outputs(self) -> dict[str, str]:
        if self._outputs is None:
            stack = self.cfn.describe_stacks(StackName=self.env.stack_name)["Stacks"][0]
            self._outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        return dict(self._outputs)

    def endpoints(self) -> Endpoints:
        out = self.outputs()
        redis = f"redis://{out['CachePrimaryEndpoint']}:6379/0" if out.get("CachePrimaryEndpoint") else None
        db = None
        if self.database_url_template:
            db = os.path.expandvars(Template(self.database_url_template).safe_substitute(out))
        extra = {**out, **cloudwatch_dimensions(out)}
        brokers = self.kafka_bootstrap_brokers()
        if brokers:
            extra["KafkaBootstrapBrokers"] = brokers
        if self.build:
            extra["build"] = self.build
        return Endpoints(
            base_url=out["BaseUrl"],
            database_url=db,
            metrics_url=None,
            redis_url=redis,
            prometheus_url=None,
            admin_token=self.admin_token,
            extra=extra,
        )

    def kafka_bootstrap_brokers(self) -> str | None:
        """MSK's bootstrap brokers (not a CloudFormation attribute): kafka:GetBootstrapBrokers, TLS first."""
        arn = self.outputs().get("KafkaClusterArn")
        if not arn:
            return None
        resp = self.kafka.get_bootstrap_brokers(ClusterArn=arn)
        return resp.get("BootstrapBrokerStringTls") or resp.get("BootstrapBrokerString")

    @property
    def base_url(self) -> str | None:
        return self.outputs().get("BaseUrl")

    # -- capacity and targets -------------------------------------------------------------------------
    def group_name(self) -> str:
        return self.outputs()["AutoScalingGroupName"]

    def target_group_arn(self) -> str:
        return self.outputs()["TargetGroupArn"]

    def set_capacity(self, desired: int) -> None:
        self.asg.set_desired_capacity(
            AutoScalingGroupName=self.group_name(), DesiredCapacity=desired, HonorCooldown=False
        )

    def group_instances(self) -> list[str]:
        group = self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group_name()])["AutoScalingGroups"][0]
        return [i["InstanceId"] for i in group["Instances"] if i["LifecycleState"] == "InService"]

    def target_states(self) -> dict[str, str]:
        desc = self.elb.describe_target_health(TargetGroupArn=self.target_group_arn())
        return {d["Target"]["Id"]: d["TargetHealth"]["State"] for d in desc["TargetHealthDescriptions"]}

    def wait_healthy(self, count: int | None = None, timeout_s: float = 900.0) -> list[str]:
        """Wait until `count` (default: desired capacity) targets are healthy; returns their ids."""
        want = count if count is not None else self.env.desired_capacity
        deadline = time.monotonic() + timeout_s
        while True:
            # Only the group's in-service instances count: an old instance still draining is not capacity.
            mine = set(self.group_instances())
            healthy = sorted(t for t, s in self.target_states().items() if s == "healthy" and t in mine)
            if len(healthy) >= want:
                return healthy
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(healthy)} of {want} targets healthy after {timeout_s:.0f} s")
            time.sleep(self.poll_s)

    def deregister_targets(self) -> list[str]:
        """R-SAFE: take every test server out of the target group and keep replacements out."""
        self.asg.suspend_processes(AutoScalingGroupName=self.group_name(), ScalingProcesses=["AddToLoadBalancer"])
        desc = self.elb.describe_target_health(TargetGroupArn=self.target_group_arn())["TargetHealthDescriptions"]
        targets = [
            {"Id": d["Target"]["Id"], **({"Port": d["Target"]["Port"]} if "Port" in d["Target"] else {})} for d in desc
        ]
        if targets:
            self.elb.deregister_targets(TargetGroupArn=self.target_group_arn(), Targets=targets)
        return [t["Id"] for t in targets]

    def register_group_instances(self) -> list[str]:
        """Undo `deregister_targets`: the group's in-service instances go back in, new ones join again."""
        ids = self.group_instances()
        if ids:
            self.elb.register_targets(TargetGroupArn=self.target_group_arn(), Targets=[{"Id": i} for i in ids])
        self.asg.resume_processes(AutoScalingGroupName=self.group_name(), ScalingProcesses=["AddToLoadBalancer"])
        return ids

    def restart(
        self, strategy: Literal["instance_refresh", "replace"] = "instance_refresh", timeout_s: float = 1800.0
    ) -> str:
        """The plan's rollback step 4, "redeploy the application": the last build a verdict approved when the
        profile deploys one (`redeploy_approved`); otherwise restart what runs — an instance refresh, or
        terminate-and-replace one instance at a time."""
        if self.env.app and self.approved_build:
            return self.redeploy_approved()
        name = self.group_name()
        if strategy == "instance_refresh":
            return self.refresh_instances(50, timeout_s)
        group = self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
        old = [i["InstanceId"] for i in group["Instances"]]
        for iid in old:
            self.asg.terminate_instance_in_auto_scaling_group(InstanceId=iid, ShouldDecrementDesiredCapacity=False)
            self._wait_replaced(name, iid, group["DesiredCapacity"], timeout_s)
        return f"replaced {len(old)} instances"

    def refresh_instances(self, min_healthy_percent: int, timeout_s: float) -> str:
        """An instance refresh of the group (onto the launch template's newest version), waited for."""
        name = self.group_name()
        rid = self.asg.start_instance_refresh(
            AutoScalingGroupName=name,
            Strategy="Rolling",
            Preferences={"MinHealthyPercentage": min_healthy_percent, "InstanceWarmup": 120},
        )["InstanceRefreshId"]
        deadline = time.monotonic() + timeout_s
        while True:
            refreshes = self.asg.describe_instance_refreshes(AutoScalingGroupName=name, InstanceRefreshIds=[rid])[
                "InstanceRefreshes"
            ]
            status = refreshes[0]["Status"] if refreshes else "Unknown"
            if status == "Successful":
                return f"instance refresh {rid} successful"
            if status in ("Failed", "Cancelled", "RollbackSuccessful", "RollbackFailed"):
                raise RuntimeError(f"instance refresh {rid} {status}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"instance refresh {rid} still {status} after {timeout_s:.0f} s")
            time.sleep(self.poll_s)

    # -- the build under test -------------------------------------------------------------------------
    def resolve_build(self, build: str | None) -> str:
        """The build to deploy: the given one, or for "latest" (or none) the newest in the registry."""
        assert self.env.app is not None
        if build and build != "latest":
            return build
        return latest_build(self.env.app, lambda name: self.session.client(name, **self._client_kw))

    def deploy_build(self, build: str | None, parameters: dict[str, str] | None = None) -> str:
        """Deploy `build` of the profile's app: a stack update that changes the launch template's version,
        then an instance refresh when the stack already ran another build. Returns the build deployed."""
        app = self.env.app
        if app is None:
            raise ValueError("environment.aws.app is not set: there is no build to deploy")
        build = self.resolve_build(build)
        before = self.outputs().get("AppVersion") if self.status() else None
        self.build = build
        self.deploy(parameters)
        if before and before != build:
            self.say(f"rolling the group from build {before} to {build} (instance refresh)")
            self.refresh_instances(app.min_healthy_percent, app.rollout_timeout_s)
        return build

    def fleet_versions(self) -> dict[str, str | None]:
        """The build each healthy in-service target serves (None: it did not say)."""
        mine = set(self.group_instances())
        healthy = sorted(t for t, st in self.target_states().items() if st == "healthy" and t in mine)
        if not healthy:
            return {}
        reservations = self.ec2.describe_instances(InstanceIds=healthy)["Reservations"]
        ips = {i["InstanceId"]: i.get("PrivateIpAddress") for r in reservations for i in r["Instances"]}
        probe = self.version_probe
        if probe is None:
            assert self.env.app is not None
            port = int({**self.env.parameters}.get("AppPort", 8080))
            probe = self.version_probe = http_probe(self.env.app, port, self.allowlist)
        return {iid: (probe(ips[iid]) if ips.get(iid) else None) for iid in healthy}

    def wait_version(self, build: str, count: int | None = None, timeout_s: float | None = None) -> dict[str, str]:
        """Wait until `count` healthy targets all serve `build`; a fleet still mixed at the deadline is
        refused (`FleetError`), so a verdict is always about one build."""
        want = count if count is not None else self.env.desired_capacity
        limit = timeout_s if timeout_s is not None else (self.env.app.rollout_timeout_s if self.env.app else 900.0)
        deadline = time.monotonic() + limit
        while True:
            versions = self.fleet_versions()
            if len(versions) >= want and all(v == build for v in versions.values()):
                return {k: v for k, v in versions.items() if v}
            if time.monotonic() > deadline:
                if any(v != build for v in versions.values()):
                    raise FleetError(fleet_sentence(build, versions))
                raise TimeoutError(f"{len(versions)} of {want} targets serve build {build} after {limit:.0f} s")
            time.sleep(self.poll_s)

    def redeploy_approved(self) -> str:
        """Rollback: the last approved build, through the same path as a campaign's deploy."""
        assert self.approved_build
        build = self.deploy_build(self.approved_build)
        self.wait_version(build)
        return f"redeployed build {build}, the last one approved"

    def _wait_replaced(self, name: str, gone: str, desired: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            group = self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]
            live = [i["InstanceId"] for i in group["Instances"] if i["LifecycleState"] == "InService"]
            if gone not in live and len(live) >= desired:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"instance {gone} not replaced after {timeout_s:.0f} s")
            time.sleep(self.poll_s)

    def apply_remediation(self, code: str) -> dict[str, str]:
        """Infrastructure remediations: ``upgrade_db_instance`` (db.r5.large → db.r5.xlarge) is a stack
        update; application settings (pool, cache, consumers, outbox) belong to the service's deployment."""
        if code != "upgrade_db_instance":
            raise ValueError(f"remediation {code!r} is not a stack change on AWS (only upgrade_db_instance is)")
        return self.deploy({"DbInstanceClass": "db.r5.xlarge"})

    # -- whole lifecycle ------------------------------------------------------------------------------
    def start(self, parameters: dict[str, str] | None = None, build: str | None = None) -> Endpoints:
        """Create or update the stack (with `build` of the profile's app, when it has one), reach the desired
        capacity, wait for healthy targets — all serving that build — and say where the stack answers."""
        if self.env.app:
            self.deploy_build(build, parameters)
        else:
            self.deploy(parameters)
        self.set_capacity(self.env.desired_capacity)
        self.wait_healthy(self.env.desired_capacity)
        if self.build:
            self.wait_version(self.build)
        return self.endpoints()

    def delete(self, timeout_s: float = 3600.0) -> None:
        if self.status() is None:
            return
        self.cfn.delete_stack(StackName=self.env.stack_name)
        final = self._wait(timeout_s)
        if final not in (None, "DELETE_COMPLETE"):
            raise RuntimeError(f"stack {self.env.stack_name} ended {final}: {self._failure_reason()}")
        self._outputs = None

    def stop(self) -> None:
        """Teardown: delete the stack when the profile says so (environment.aws.teardown), else keep it."""
        if self.env.teardown:
            self.delete()
        else:
            log.info("keeping stack %s (environment.aws.teardown is false)", self.env.stack_name)
