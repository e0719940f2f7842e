"""A moto server (server mode, loopback, free port) for the AWS tests; boto3 reaches it by endpoint_url."""

from __future__ import annotations

from typing import Any

import boto3
import pytest

from soundcheck.profile import Profile, parse_profile

REGION = "ap-northeast-2"
#: What moto cannot create through CloudFormation is switched off (docs/environments.md).
MOTO_PARAMS = {"CreateCache": "false", "CreateKafka": "false", "CreateDbParameterGroup": "false"}


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def session() -> boto3.session.Session:
    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION)


def moto_profile(
    url: str, stack_name: str, *, name: str = "staging-test", top: dict | None = None, **aws: Any
) -> Profile:
    """A profile whose AWS environment is a stack of `stack_name` on the moto server at `url`; `aws` adds
    or overrides `environment.aws` keys, `top` adds top-level keys (target, store_url …)."""
    env = {"stack_name": stack_name, "endpoint_url": url, "parameters": MOTO_PARAMS, "allow_billable": True, **aws}
    return parse_profile({"name": name, **(top or {}), "environment": {"kind": "aws", "aws": env}})


def release_route_tables(stack: Any) -> None:
    """moto does not delete AWS::EC2::RouteTable resources with their stack (CloudFormation does), so
    its VPC deletion fails on them; release them as CloudFormation would before deleting the stack."""
    ec2 = session().client("ec2", endpoint_url=stack.env.endpoint_url)
    res = stack.cfn.list_stack_resources(StackName=stack.env.stack_name)["StackResourceSummaries"]
    vpc = next(r["PhysicalResourceId"] for r in res if r["LogicalResourceId"] == "Vpc")
    for rt in ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["RouteTables"]:
        if any(a.get("Main") for a in rt["Associations"]):
            continue
        for a in rt["Associations"]:
            ec2.disassociate_route_table(AssociationId=a["RouteTableAssociationId"])
        ec2.delete_route_table(RouteTableId=rt["RouteTableId"])
