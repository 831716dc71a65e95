"""The one redaction: no fragment of a planted secret survives, ordinary text is left alone."""

import pytest

from helix_pipelines.core.redact import redact

PASSWORD = "p@ss/w0rd:x"
API_KEY = "sk-proj-Zx81aaQ_secret-9"

LEAKY = [
    f"postgresql://app:{PASSWORD}@db.example:5432/helix",
    f"postgresql+psycopg://app@/helix?host=/tmp/s&password={PASSWORD}&sslmode=disable",
    f"https://u:{PASSWORD}@api.example.com/v1 failed",
    f"OPENAI_API_KEY={API_KEY}\nHELIX_DB_PASSWORD={PASSWORD}",
    f"Authorization: Bearer {API_KEY}",
    f'{{"api_key": "{API_KEY}", "password": "{PASSWORD}"}}',
    f"error 401 for key {API_KEY}",
    f"dsn host=db password={PASSWORD} user=app",
    "postgresql+psycopg://app:p@ss@pw/w0rd:x%40db/helix",  # as SQLAlchemy renders it
]


@pytest.mark.parametrize("text", LEAKY)
def test_no_fragment_of_a_secret_survives(text):
    shown = redact(text)
    for fragment in ("ss/w0rd", "w0rd:x", "Zx81aaQ", "secret-9"):
        assert fragment not in shown, shown
    assert "***" in shown


def test_user_and_host_stay_readable():
    assert redact("postgresql://app:pw@db/helix") == "postgresql://app:***@db/helix"
    assert redact("postgresql://app@/helix?host=/run") == "postgresql://***@/helix?host=/run"


@pytest.mark.parametrize(
    "text",
    ["max tokens: 300000, token budget left", "a@b.com wrote 3 rows", "http://[::1]:8080/x", ""],
)
def test_ordinary_text_unchanged(text):
    assert redact(text) == text


def test_any_object_is_turned_into_text():
    assert redact(ValueError(f"at https://x:{PASSWORD}@h/")) == "at https://x:***@h/"
