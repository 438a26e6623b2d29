"""Flower's credentials, checked before it starts (`dfscan flower` exits 2 with CONFIG_ERROR on each: one such
process is tests/integration/test_flower.py)."""

from __future__ import annotations

import pytest

from dfscan.cli.flower import flower_credential
from dfscan.exceptions import ConfigError


@pytest.mark.parametrize(
    ("user", "password", "says"),
    [
        ("admin", "", "set DFSCAN_FLOWER_PASSWORD"),
        ("admin", " ", "DFSCAN_FLOWER_PASSWORD is blank or only whitespace"),
        ("admin", "\t \n", "DFSCAN_FLOWER_PASSWORD is blank or only whitespace"),
        ("   ", "s3cret-enough", "DFSCAN_FLOWER_USER is blank or only whitespace"),
        ("ad:min", "s3cret-enough", "must not contain ':'"),
        ("admin", "pässwort-lang", "printable ASCII"),
        (" admin", "s3cret-enough", "leading or trailing spaces"),
    ],
)
def test_blank_whitespace_and_unusable_credentials_are_refused(user: str, password: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says) as info:
        flower_credential(user, password)
    assert info.value.code == "CONFIG_ERROR"


def test_a_usable_credential_is_user_colon_password() -> None:
    assert flower_credential("admin", "s3cret, with a comma") == "admin:s3cret, with a comma"
