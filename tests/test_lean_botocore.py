"""The S3 store's botocore session (app.lean_botocore): endpoint data for the services it
can call only, and a client built from it that still talks to S3."""

from __future__ import annotations

from typing import Any

from aiobotocore.config import AioConfig

from app.dev.s3server import DEV_ACCESS_KEY, DEV_SECRET_KEY, LocalS3Server
from app.lean_botocore import ENDPOINT_SERVICES, get_session


async def test_the_client_works_and_the_session_keeps_only_its_services_endpoints(
    s3_server: LocalS3Server, bucket: str
) -> None:
    session = get_session()
    async with session.create_client(
        "s3",
        region_name="eu-west-1",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=DEV_ACCESS_KEY,
        aws_secret_access_key=DEV_SECRET_KEY,
        config=AioConfig(signature_version="s3v4"),
    ) as client:
        await client.put_object(Bucket=bucket, Key="probe.bin", Body=b"lean")
        got = await client.get_object(Bucket=bucket, Key="probe.bin")
        assert await got["Body"].read() == b"lean"
        # The model as loaded: plain dicts, no documentation in operations and shapes.
        model = client.meta.service_model
        assert model.operation_model("PutObject").documentation == ""
        assert model.shape_for("PutObjectRequest").documentation == ""
        raw = session.get_component("data_loader").load_service_model("s3", "service-2")
        assert type(raw) is dict and type(raw["shapes"]) is dict

    resolver: Any = session._get_internal_component("endpoint_resolver")
    partitions = resolver._endpoint_data["partitions"]
    assert {partition["partition"] for partition in partitions} >= {"aws", "aws-cn"}
    services = {name for partition in partitions for name in partition["services"]}
    assert services == ENDPOINT_SERVICES
    # Regions and the kept services still resolve as botocore's full data resolves them.
    assert "eu-west-1" in resolver.get_available_endpoints("s3", "aws")
    assert resolver.construct_endpoint("sts", "eu-west-1")["hostname"] == (
        "sts.eu-west-1.amazonaws.com"
    )
