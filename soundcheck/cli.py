"""The `soundcheck` command: run a campaign, start the reference service, list and re-judge runs.

Each command is a thin shell over plain functions elsewhere; exit codes follow the verdict
(0 APPROVE, 10 APPROVE_WITH_TUNING, 20 BLOCK, 30 INCONCLUSIVE, 2 bad usage or configuration).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from soundcheck.paths import DEFAULT_PROFILE

app = typer.Typer(
    help="soundcheck: the pre-release load campaign for the concert-ticket reservation service.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def run(
    profile: Annotated[Path, typer.Option(help="Campaign profile (YAML).")] = DEFAULT_PROFILE,
    scenario: Annotated[list[str] | None, typer.Option(
        help="Scenario to run (repeatable): spike, race, saga, soak, points. Default: the profile's list.")] = None,
    scale: Annotated[float | None, typer.Option(
        help="Multiplies users and rates; 1.0 is the plan. Default: the profile's.")] = None,
    time_scale: Annotated[float | None, typer.Option(
        help="Multiplies durations; 1.0 is the plan. Default: the profile's.")] = None,
    target: Annotated[str | None, typer.Option(
        help="Base URL of the system under test (must be on the profile's allowlist).")] = None,
    output: Annotated[Path | None, typer.Option(help="Folder for verdict.json, the report and k6 output.")] = None,
    no_notify: Annotated[bool, typer.Option("--no-notify", help="Do not post the verdict to Slack.")] = False,
) -> None:
    """Run a campaign: provision, load every scenario, evaluate, decide, report, notify."""
    from flows.campaign import run_from_cli

    raise typer.Exit(run_from_cli(profile=profile, scenarios=scenario or None, scale=scale,
                                  time_scale=time_scale, target=target, output=output, notify=not no_notify))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             add_help_option=False)
def sut(ctx: typer.Context) -> None:
    """Start the reference reservation service (every option: `soundcheck sut --help`)."""
    from infra.sut.server import main

    main(list(ctx.args))


@app.command()
def history(
    profile: Annotated[Path, typer.Option(help="Profile (YAML) whose result store to list.")] = DEFAULT_PROFILE,
    limit: Annotated[int, typer.Option(help="How many runs, newest first.")] = 20,
    all_profiles: Annotated[bool, typer.Option("--all", help="Runs of every profile in that store.")] = False,
) -> None:
    """List past runs: when, which scenarios at which scale, status and verdict."""
    from tasks.verdict_stage import print_history

    raise typer.Exit(print_history(profile, limit, all_profiles))


@app.command()
def report(
    run_id: Annotated[str, typer.Argument(help="Run to re-judge (see `soundcheck history`).")],
    profile: Annotated[Path, typer.Option(help="Profile whose bands and result store to use.")] = DEFAULT_PROFILE,
    output: Annotated[Path | None, typer.Option(help="Folder for the new report and verdict.json. "
                                                     "Default: the profile's output folder / RUN_ID.")] = None,
) -> None:
    """Re-judge a stored run with the current expectations, bands and tree (no new load); rewrite its report."""
    from tasks.verdict_stage import rejudge

    raise typer.Exit(rejudge(profile, run_id, output))
