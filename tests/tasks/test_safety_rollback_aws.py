"""The plan's rollback in AWS mode, against moto in server mode: the test servers leave the ALB target
group (and replacements are kept out), this run's rows are deleted through the profile's database URL,
the service is restarted; each step is stored as an event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, select, text

from infra.aws_stack import AwsStack
from soundcheck import store
from tasks.safety import rollback, rollback_steps_for
from tests.moto_fixture import moto_profile, moto_url, session  # noqa: F401 - fixture


class _ReplaceRestart:
    """moto has no StartInstanceRefresh: restart by rolling replacement, everything else as the stack does."""

    def __init__(self, stack: AwsStack) -> None:
        self.stack = stack

    def deregister_targets(self):
        return self.stack.deregister_targets()

    def restart(self):
        return self.stack.restart("replace", timeout_s=30)


def test_aws_rollback(moto_url, tmp_path):  # noqa: F811
    db = tmp_path / "app.db"
    eng = create_engine(f"sqlite:///{db}")
    start = datetime.now(UTC).replace(tzinfo=None)
    with eng.begin() as c:
        c.execute(text("CREATE TABLE reservation (id INTEGER PRIMARY KEY, created_at DATETIME)"))
        c.execute(
            text("INSERT INTO reservation VALUES (1, :old), (2, :new)"),
            {
                "old": (start - timedelta(hours=1)).isoformat(sep=" "),
                "new": (start + timedelta(seconds=1)).isoformat(sep=" "),
            },
        )
    profile = moto_profile(
        moto_url, "sc-safety-rollback", name="staging-rollback", top={"target": {"database_url": f"sqlite:///{db}"}}
    )
    stack = AwsStack(profile, poll_s=0.2, session=session())
    stack.start()
    members = set(stack.target_states())
    assert len(members) == 2

    results = store.open_store(f"sqlite:///{tmp_path / 'store.db'}")
    store.start_run(results, "aws-rb", "staging-rollback", scale=1, time_scale=1, scenarios=[], target=None)
    steps = rollback_steps_for(profile, _ReplaceRestart(stack), start.replace(tzinfo=UTC))
    res = rollback(results, "aws-rb", **steps)
    assert [(r.step, r.outcome) for r in res] == [
        ("deregister_targets", "ok"),
        ("delete_test_data", "ok"),
        ("restart_service", "ok"),
    ], res
    assert res[0].detail.startswith("2 done: i-")
    with eng.connect() as c:
        assert [r[0] for r in c.execute(text("SELECT id FROM reservation"))] == [1]
    group = stack.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[stack.group_name()])["AutoScalingGroups"][0]
    assert "AddToLoadBalancer" in {p["ProcessName"] for p in group["SuspendedProcesses"]}
    new = {i["InstanceId"] for i in group["Instances"] if i["LifecycleState"] == "InService"}
    assert len(new) == 2 and not (new & members)  # restarted: every instance replaced
    with results.connect() as c:
        evs = c.execute(
            select(store.events.c.kind, store.events.c.outcome, store.events.c.detail).order_by(store.events.c.id)
        ).all()
    assert [(k, o) for k, o, _ in evs] == [("rollback", "ok")] * 3
    assert evs[2][2] == "restart_service: replaced 2 instances"
    results.dispose()
    eng.dispose()
