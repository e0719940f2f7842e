"""Profiles are validated on load: a bad key or value is one sentence naming the key."""

import pytest

from soundcheck.profile import ProfileError, load_profile, parse_profile


def test_defaults_are_loopback_only():
    p = parse_profile({"name": "x"})
    assert p.target.allowlist == ["127.0.0.0/8", "::1", "localhost"]
    assert p.scale == 1.0 and p.time_scale == 1.0


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"name": "x", "colour": 1}, "unknown key 'colour'"),
        ({"name": "x", "target": {"base_url": "http://a", "allow": []}}, "unknown key 'target.allow'"),
        ({}, "required key 'name' is missing"),
        ({"name": "x", "scale": "lots"}, "key 'scale' is invalid"),
        ({"name": "x", "scale": 0}, "key 'scale' is invalid"),
        ({"name": "x", "scenarios": ["spike", "stress"]}, "unknown scenario 'stress'"),
    ],
)
def test_bad_profiles_name_the_key(data, needle):
    with pytest.raises(ProfileError) as e:
        parse_profile(data, "profile p.yaml")
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_unreadable_and_bad_yaml(tmp_path):
    with pytest.raises(ProfileError, match="cannot be read"):
        load_profile(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(bad)
