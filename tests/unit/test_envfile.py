import pytest

from aixsss_ops import envfile
from aixsss_ops.errors import UsageError


def test_parse_handles_comments_export_quotes_and_trailing_notes():
    env = envfile.parse(
        "# comment\nREDIS_URL=redis://:p@h:1\nexport AI_QUEUE_NAME='jobs'\nX=\"a b\"\nY=v # note\n\n", "t.env")
    assert env == {"REDIS_URL": "redis://:p@h:1", "AI_QUEUE_NAME": "jobs", "X": "a b", "Y": "v"}


def test_a_malformed_line_names_file_and_line_but_not_its_text():
    with pytest.raises(UsageError) as e:
        envfile.parse("A=1\nthis is secret-ish garbage\n", "/x/api.env")
    assert "/x/api.env:2" in e.value.message
    assert "garbage" not in e.value.message


def test_write_then_read_round_trips_awkward_values_with_mode_0600(tmp_path):
    values = {"A": 'quote " and backslash \\ and newline \n end', "B": "plain", "C": "with space", "D": ""}
    path = tmp_path / "svc.env"
    envfile.write(path, values, header="test")
    assert path.stat().st_mode & 0o777 == 0o600
    assert envfile.read(path) == values
