"""The build a campaign judges on AWS: which one ("latest" from the registry), the template parameters that
deploy it, the user data the template renders for it, and which build each healthy instance serves.

The instances say their build through the service's info endpoint (``environment.aws.app.version_path``,
Spring Boot's /actuator/info, whose ``app.version`` the user data sets). A fleet where any healthy
target serves another build is refused: a verdict must be about one build.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from soundcheck.profile import AwsApp


class FleetError(RuntimeError):
    """The healthy targets do not all serve the build under test (one sentence, names them)."""


def app_parameters(app: AwsApp, build: str) -> dict[str, str]:
    """The template parameters that deploy `build` of `app`."""
    return {
        "AppImage": app.image or "",
        "AppJarS3": app.jar_s3.replace("{build}", build) if app.jar_s3 else "",
        "AppVersion": build,
        "JvmOptions": app.jvm_options,
        "SpringProfile": app.spring_profile,
    }


def latest_build(app: AwsApp, client: Callable[[str], Any]) -> str:
    """The newest build in the registry: the most recently pushed tag of the ECR repository, or for a JAR
    the newest object matching ``jar_s3``. `client(name)` gives a boto3 client."""
    if app.image:
        repo = app.image.split("/", 1)[1] if "/" in app.image else app.image
        newest: tuple[Any, str] | None = None
        for page in client("ecr").get_paginator("describe_images").paginate(repositoryName=repo):
            for image in page["imageDetails"]:
                for tag in image.get("imageTags") or []:
                    if newest is None or image["imagePushedAt"] > newest[0]:
                        newest = (image["imagePushedAt"], tag)
        if newest is None:
            raise LookupError(f"ECR repository {repo} has no tagged image: give the build explicitly")
        return newest[1]
    assert app.jar_s3
    bucket, key = app.jar_s3[len("s3://") :].split("/", 1)
    prefix = key.split("{build}", 1)[0]
    pattern = re.compile(re.escape(key).replace(re.escape("{build}"), "(?P<build>[A-Za-z0-9._+-]+)") + "$")
    found: tuple[Any, str] | None = None
    for page in client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            m = pattern.match(obj["Key"])
            if m and (found is None or obj["LastModified"] > found[0]):
                found = (obj["LastModified"], m.group("build"))
    if found is None:
        raise LookupError(f"no object matches {app.jar_s3} in s3://{bucket}/{prefix}: give the build explicitly")
    return found[1]


def field(doc: Any, dotted: str) -> str | None:
    """``doc["app"]["version"]`` for ``"app.version"``; None when any part is missing."""
    for part in dotted.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return None if doc is None else str(doc)


def http_probe(app: AwsApp, port: int, allowlist: list[str], timeout_s: float = 5.0) -> Callable[[str], str | None]:
    """Reads the build an instance serves from its info endpoint (only on the profile's allowlist)."""
    from soundcheck.allowlist import guarded_client

    client = guarded_client(allowlist, timeout=timeout_s, trust_env=False)

    def probe(ip: str) -> str | None:
        try:
            r = client.get(f"http://{ip}:{port}{app.version_path}")
            return field(r.json(), app.version_field) if r.status_code == 200 else None
        except Exception:  # noqa: BLE001 - an instance that cannot say is "unknown", not a crash
            return None

    return probe


def fleet_sentence(build: str, versions: dict[str, str | None]) -> str:
    others = ", ".join(f"{i} serves {v or 'an unknown build'}" for i, v in sorted(versions.items()) if v != build)
    return f"refusing to load a mixed fleet: the build under test is {build}, but {others}"


def render_user_data(template: dict[str, Any], values: dict[str, str]) -> str:
    """The launch template's user-data script as an instance would get it: CloudFormation's ``Fn::Sub``
    with `values` for every ``${Name}`` (parameters, resources, pseudo parameters, the map's entries);
    ``${!x}`` becomes ``${x}``. For checking the script (shellcheck), not for deploying."""
    sub = template["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
    text = sub["Fn::Sub"][0] if isinstance(sub["Fn::Sub"], list) else sub["Fn::Sub"]

    def one(m: re.Match) -> str:
        name = m.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        if name not in values:
            raise KeyError(f"user data names ${{{name}}}, which has no value")
        return values[name]

    return re.sub(r"\$\{([^}]+)\}", one, text)
