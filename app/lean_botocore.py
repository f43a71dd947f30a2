"""The aiobotocore session the S3 store builds its client from (app.storage.s3), holding
botocore's endpoint data for the services this process can call instead of all of them.

Building a client makes botocore load `endpoints.json` (1.2 MB of JSON, ~7 MB of Python
objects: every partition's endpoints for ~400 services) and keep it alive, through the
client's event handlers, for as long as the client lives: about half of what the S3
client costs an idle process. Dropping it after the client is built gave back nothing
(the freed objects sit between ones that stay); dropping the other services' entries as
soon as the file is loaded, before the S3 model is parsed into the memory they free, is
what keeps the process smaller (bench/README.md, "Memory: idle and burst").

The data is still the installed botocore's own, read when the client is built, so it is
never staler than botocore; only the entries of services this session never resolves are
left out. Every partition keeps its regions, its defaults and these services' entries.
"""

from __future__ import annotations

from typing import Any

from aiobotocore.session import AioSession
from botocore.regions import EndpointResolver

# By endpoint prefix (what botocore looks endpoints up by): s3 for the store; sts,
# portal.sso (the sso client) and oidc (sso-oidc) for the credential providers that build
# their own clients on the same session (web identity and assumed roles, SSO profiles).
ENDPOINT_SERVICES = frozenset({"s3", "sts", "portal.sso", "oidc"})


def get_session() -> AioSession:
    """aiobotocore's `get_session()`, with the endpoint data trimmed (module docstring)."""
    session = AioSession()

    def endpoint_resolver() -> EndpointResolver:
        loader = session.get_component("data_loader")
        # The loader caches what it loads: trimming in place leaves no full copy behind.
        endpoints, path = loader.load_data_with_path("endpoints")
        trim_endpoint_data(endpoints)
        return EndpointResolver(endpoints, uses_builtin_data=loader.is_builtin_path(path))

    # botocore registers its own factory for this component in the same way (pinned).
    session._internal_components.lazy_register_component("endpoint_resolver", endpoint_resolver)
    return session


def trim_endpoint_data(endpoints: dict[str, Any]) -> None:
    for partition in endpoints.get("partitions", ()):
        services = partition.get("services", {})
        partition["services"] = {
            name: services[name] for name in sorted(ENDPOINT_SERVICES) if name in services
        }
