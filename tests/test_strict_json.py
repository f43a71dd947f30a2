"""Every JSON writer of the service is strict (issue 12, item 5): NaN and Infinity are
refused where the JSON is written, on real SQLite and PostgreSQL, in webhook bodies and
in responses; audio metadata never spells them."""

from __future__ import annotations

import math
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import StatementError
from starlette.responses import JSONResponse

from app.notify.signing import encode_body
from app.storage.database import create_engine
from app.uploads.audio import AudioFacts

NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", NON_FINITE)
async def test_json_columns_refuse_non_finite_numbers(
    value: float, database: dict[str, Any]
) -> None:
    schema = database.get("database_schema")
    engine = create_engine(database["database_url"], schema=schema)
    table = sa.Table("strict_json_probe", sa.MetaData(), sa.Column("doc", sa.JSON))
    try:
        async with engine.begin() as connection:
            if schema:
                await connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            await connection.run_sync(table.metadata.create_all)
            await connection.execute(table.insert(), {"doc": {"fine": 1.5}})
            with pytest.raises(StatementError, match="Out of range float values"):
                await connection.execute(table.insert(), {"doc": {"duration": value}})
        async with engine.connect() as connection:
            rows = (await connection.execute(sa.select(table.c.doc))).scalars().all()
        assert rows == [{"fine": 1.5}]
    finally:
        await engine.dispose()


@pytest.mark.parametrize("value", NON_FINITE)
def test_webhook_bodies_and_responses_refuse_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError, match="Out of range float values"):
        encode_body({"audio": {"duration_seconds": value}})
    with pytest.raises(ValueError, match="Out of range float values"):
        JSONResponse({"duration_seconds": value})
    assert encode_body({"duration_seconds": 1.5}) == b'{"duration_seconds":1.5}'


@pytest.mark.parametrize("value", NON_FINITE)
def test_audio_metadata_never_spells_non_finite_numbers(value: float) -> None:
    facts = AudioFacts("webm", "audio/webm", "opus", value, 48000, 2, None)
    metadata = facts.as_metadata()
    assert "audio-duration-seconds" not in metadata
    assert metadata["audio-channels"] == "2"
