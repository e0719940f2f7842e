"""The AWS provisioner against moto in server mode, and cfn-lint on the template.

moto creates the VPC, subnets, security groups, ALB, target group, launch template, auto-scaling group
and RDS instance from the real template; it cannot create ElastiCache, MSK, a DB parameter group
reference or a scaling policy through CloudFormation, so those are switched off by parameters here
(see docs/environments.md, "what moto cannot emulate").
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from botocore.stub import ANY, Stubber

from infra.aws_stack import AwsStack, cloudwatch_dimensions, load_template, template_body
from soundcheck.paths import ROOT
from soundcheck.profile import CloudWatchQuery, parse_profile
from tasks.collect import CloudWatchCollector
from tests.moto_fixture import moto_profile, moto_url, release_route_tables, session  # noqa: F401 - fixture


def _stack(url: str, name: str, **aws) -> AwsStack:
    dsn = "mysql+pymysql://reader:${SC_TEST_DB_PW}@${DbEndpoint}:${DbPort}/${DbName}"
    return AwsStack(moto_profile(url, name, database_url=dsn, **aws), poll_s=0.2, session=session())


def test_cfn_lint_passes_on_the_template():
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    res = subprocess.run(
        [str(cfn_lint), str(ROOT / "infra/aws/stack.yaml")], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_template_has_the_plans_environment():
    t = load_template("infra/aws/stack.yaml")
    r, p = t["Resources"], t["Parameters"]
    assert p["InstanceType"]["Default"] == "t3.large"
    assert (p["MinSize"]["Default"], p["DesiredCapacity"]["Default"], p["MaxSize"]["Default"]) == (2, 2, 4)
    policy = r["CpuScaleOut"]["Properties"]["TargetTrackingConfiguration"]
    assert policy["PredefinedMetricSpecification"]["PredefinedMetricType"] == "ASGAverageCPUUtilization"
    assert p["ScaleOutCpuPercent"]["Default"] == 70
    db = r["Database"]["Properties"]
    assert db["Engine"] == "mysql" and p["DbEngineVersion"]["Default"].startswith("8.0.")
    assert p["DbInstanceClass"]["Default"] == "db.r5.large" and db["MultiAZ"] is True
    assert p["DbAllocatedStorage"]["Default"] == 100 and db["StorageType"] == "gp3"
    assert r["DbParameters"]["Properties"]["Parameters"]["max_connections"] == {"Ref": "DbMaxConnections"}
    assert p["DbMaxConnections"]["Default"] == 200
    cache = r["Cache"]["Properties"]
    assert cache["Engine"] == "redis" and cache["EngineVersion"] == "7.0" and cache["NumNodeGroups"] == 1
    assert p["CacheNodeType"]["Default"] == "cache.r5.large"
    kafka = r["Kafka"]["Properties"]
    assert kafka["NumberOfBrokerNodes"] == 3 and p["KafkaInstanceType"]["Default"] == "kafka.m5.large"
    props = r["KafkaConfiguration"]["Properties"]["ServerProperties"]
    assert "default.replication.factor=3" in props and "num.partitions=3" in props
    # the short form is parsed as CloudFormation does: only the first dot separates resource and attribute
    assert t["Outputs"]["DbEndpoint"]["Value"] == {"Fn::GetAtt": ["Database", "Endpoint.Address"]}
    assert len(template_body("infra/aws/stack.yaml")) < 51_200


def test_create_update_capacity_deregister_restart_teardown(moto_url, monkeypatch):  # noqa: F811
    monkeypatch.setenv("SC_TEST_DB_PW", "s3cret")
    stack = _stack(moto_url, "sc-env6-lifecycle", teardown=True)
    ep = stack.start()
    assert stack.status() == "CREATE_COMPLETE"
    assert ep.base_url.startswith("http://") and ".elb.amazonaws.com" in ep.base_url
    out = stack.outputs()
    assert ep.database_url == f"mysql+pymysql://reader:s3cret@{out['DbEndpoint']}:3306/concert"
    for key in ("TargetGroupArn", "AutoScalingGroupName", "DbInstanceId", "DbEndpoint", "LoadBalancer"):
        assert ep.extra.get(key), key
    assert ep.extra["LoadBalancer"].startswith("app/")
    assert len(stack.wait_healthy(2, timeout_s=10)) == 2

    # the outputs feed the CloudWatch collector's dimensions (RDS CPU of this stack's instance)
    cw = session().client("cloudwatch", endpoint_url=moto_url)
    minute = (int(time.time()) // 60) * 60 - 120
    cw.put_metric_data(
        Namespace="AWS/RDS",
        MetricData=[
            {
                "MetricName": "CPUUtilization",
                "Dimensions": [{"Name": "DBInstanceIdentifier", "Value": ep.extra["DbInstanceId"]}],
                "Timestamp": datetime.fromtimestamp(minute, UTC),
                "Value": 93.0,
            }
        ],
    )
    q = CloudWatchQuery(
        namespace="AWS/RDS",
        metric="CPUUtilization",
        dimensions={"DBInstanceIdentifier": "${DbInstanceId}"},
        stat="Maximum",
    )
    c = CloudWatchCollector({"db_cpu_percent": q}, region="ap-northeast-2", placeholders=ep.extra, client=cw)
    assert [(s.kpi, s.ts, s.value) for s in c.collect_range(minute - 300, minute + 120)] == [
        ("db_cpu_percent", minute, 93.0)
    ]

    # update in place: one more instance, and the group follows
    stack.deploy({"DesiredCapacity": "3"})
    assert stack.status() == "UPDATE_COMPLETE"
    stack.set_capacity(3)
    assert len(stack.wait_healthy(3, timeout_s=20)) == 3

    # R-SAFE: out of the target group, replacements kept out; then back in
    members = set(stack.group_instances())
    gone = stack.deregister_targets()
    assert members <= set(gone) and stack.target_states() == {}
    group = stack.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[stack.group_name()])["AutoScalingGroups"][0]
    assert "AddToLoadBalancer" in {p["ProcessName"] for p in group["SuspendedProcesses"]}
    assert set(stack.register_group_instances()) == members
    assert len(stack.wait_healthy(3, timeout_s=10)) == 3

    # restart by rolling replacement: every instance is new, capacity kept
    before = set(stack.target_states())
    assert stack.restart("replace", timeout_s=30) == "replaced 3 instances"
    group = stack.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[stack.group_name()])["AutoScalingGroups"][0]
    now = {i["InstanceId"] for i in group["Instances"] if i["LifecycleState"] == "InService"}
    assert len(now) == 3 and not (now & before)

    release_route_tables(stack)
    stack.stop()  # teardown: true
    assert stack.status() is None


def test_keeps_the_stack_unless_teardown_is_asked_for(moto_url):  # noqa: F811
    stack = _stack(moto_url, "sc-env6-keep")
    stack.deploy()
    assert stack.deploy() == stack.outputs()  # no change: the update is a no-op, not an error
    stack.stop()  # teardown false: kept
    assert stack.status() in ("CREATE_COMPLETE", "UPDATE_COMPLETE")
    release_route_tables(stack)
    stack.delete()
    assert stack.status() is None


def test_instance_refresh_request_and_wait():
    """moto has no StartInstanceRefresh; the request and the wait are checked against botocore's Stubber."""
    stack = AwsStack(parse_profile({"name": "x"}).environment.aws, poll_s=0.0, session=session())
    stack._outputs = {"AutoScalingGroupName": "grp", "TargetGroupArn": "arn:tg", "BaseUrl": "http://x"}
    with Stubber(stack.asg) as stub:
        stub.add_response(
            "start_instance_refresh",
            {"InstanceRefreshId": "r-1"},
            {
                "AutoScalingGroupName": "grp",
                "Strategy": "Rolling",
                "Preferences": {"MinHealthyPercentage": 50, "InstanceWarmup": 120},
            },
        )
        stub.add_response(
            "describe_instance_refreshes",
            {"InstanceRefreshes": [{"Status": "InProgress"}]},
            {"AutoScalingGroupName": "grp", "InstanceRefreshIds": ["r-1"]},
        )
        stub.add_response(
            "describe_instance_refreshes",
            {"InstanceRefreshes": [{"Status": "Successful"}]},
            {"AutoScalingGroupName": "grp", "InstanceRefreshIds": ["r-1"]},
        )
        assert stack.restart() == "instance refresh r-1 successful"
        stub.assert_no_pending_responses()


def test_upgrade_db_instance_is_a_stack_update_of_the_instance_class():
    """moto fails serialising an RDS instance-class update made through CloudFormation (500), so the
    update request is checked with botocore's Stubber."""
    aws = parse_profile({"name": "x", "environment": {"aws": {"allow_billable": True}}}).environment.aws
    stack = AwsStack(aws, poll_s=0.0, session=session())

    def stacks(status: str) -> dict:
        return {
            "Stacks": [
                {
                    "StackName": "soundcheck-staging",
                    "StackStatus": status,
                    "CreationTime": "2026-11-26T00:00:00Z",
                    "Outputs": [],
                }
            ]
        }

    with Stubber(stack.cfn) as stub:
        stub.add_response("describe_stacks", stacks("CREATE_COMPLETE"), {"StackName": "soundcheck-staging"})
        stub.add_response(
            "update_stack",
            {"StackId": "arn:stack"},
            {
                "StackName": "soundcheck-staging",
                "TemplateBody": ANY,
                "Tags": ANY,
                "Parameters": [
                    {"ParameterKey": "DbInstanceClass", "ParameterValue": "db.r5.xlarge"},
                    {"ParameterKey": "DesiredCapacity", "ParameterValue": "2"},
                    {"ParameterKey": "CampaignName", "ParameterValue": "soundcheck-staging"},
                ],
            },
        )
        stub.add_response("describe_stacks", stacks("UPDATE_IN_PROGRESS"), {"StackName": "soundcheck-staging"})
        stub.add_response("describe_stacks", stacks("UPDATE_COMPLETE"), {"StackName": "soundcheck-staging"})
        stub.add_response("describe_stacks", stacks("UPDATE_COMPLETE"), {"StackName": "soundcheck-staging"})
        stack.apply_remediation("upgrade_db_instance")
        stub.assert_no_pending_responses()
    with pytest.raises(ValueError, match="not a stack change"):
        stack.apply_remediation("raise_db_pool")


def test_kafka_bootstrap_brokers_join_the_endpoints():
    """moto has no GetBootstrapBrokers (nor MSK in CloudFormation): checked with botocore's Stubber."""
    stack = AwsStack(parse_profile({"name": "x"}).environment.aws, session=session())
    stack._outputs = {"BaseUrl": "http://internal-alb", "KafkaClusterArn": "arn:aws:kafka:r:1:cluster/k/1"}
    with Stubber(stack.kafka) as stub:
        stub.add_response(
            "get_bootstrap_brokers",
            {"BootstrapBrokerStringTls": "b-1:9094,b-2:9094,b-3:9094"},
            {"ClusterArn": "arn:aws:kafka:r:1:cluster/k/1"},
        )
        assert stack.endpoints().extra["KafkaBootstrapBrokers"] == "b-1:9094,b-2:9094,b-3:9094"


def test_cloudwatch_dimensions_from_arns():
    dims = cloudwatch_dimensions(
        {
            "LoadBalancerArn": "arn:aws:elasticloadbalancing:r:1:loadbalancer/app/my-alb/50dc6c495c0c9188",
            "TargetGroupArn": "arn:aws:elasticloadbalancing:r:1:targetgroup/my-tg/73e2d6bc24d8a067",
        }
    )
    assert dims == {"LoadBalancer": "app/my-alb/50dc6c495c0c9188", "TargetGroup": "targetgroup/my-tg/73e2d6bc24d8a067"}


def test_the_sizing_stages_instance_count_is_the_groups_desired_capacity(moto_url):  # noqa: F811
    """Issue 12 on AWS: an instance count of the capacity stage is the auto-scaling group's desired capacity,
    reached and healthy before the stairs start; nothing is restarted between climbs (a team's data stays)."""
    from tasks.capacity import _quota_note, fresh_state, set_instances

    stack = _stack(moto_url, "sc-sizing-counts")
    stack.start()
    for n in (3, 1):
        set_instances(stack, n, 0.25)
        group = stack.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[stack.group_name()])
        assert group["AutoScalingGroups"][0]["DesiredCapacity"] == n
        assert len(stack.wait_healthy(n, timeout_s=10)) >= n
    assert _quota_note(stack, 0.25) == (None, "AWS: an instance is one EC2 instance of the auto-scaling group")
    restarted = []
    stack.restart = lambda *a, **k: restarted.append(a)  # type: ignore[method-assign]
    fresh_state(stack)
    assert restarted == []
    release_route_tables(stack)
    stack.delete()
