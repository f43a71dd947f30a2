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

The JSON data files (endpoints, each service's model and endpoint rules) are also read
into plain dicts instead of botocore's OrderedDicts (ordered all the same, ~60% of the
size: S3's model 3.2 -> 2.3 MiB, its rules 1.3 -> 0.8), and the service models'
operations and shapes lose their `documentation` strings as they are loaded (another
~1 MiB for S3): botocore reads those only to write docstrings, which a service never
shows.
"""

from __future__ import annotations

import json
import os
from typing import Any

from aiobotocore.session import AioSession
from botocore.loaders import JSONFileLoader, Loader
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

    def data_loader() -> Loader:
        # As botocore's `create_loader`, with the lean loaders (module docstring).
        data_path = session.get_config_variable("data_path")
        paths = [
            os.path.expanduser(os.path.expandvars(path))
            for path in (data_path.split(os.pathsep) if data_path else ())
        ]
        return LeanLoader(extra_search_paths=paths, file_loader=PlainJSONFileLoader())

    session.lazy_register_component("data_loader", data_loader)
    # botocore registers its own factory for this component in the same way (pinned).
    session._internal_components.lazy_register_component("endpoint_resolver", endpoint_resolver)
    return session


class PlainJSONFileLoader(JSONFileLoader):  # type: ignore[misc]  # botocore is untyped
    """botocore's JSON file loader, reading into plain dicts (module docstring)."""

    def _load_file(self, full_path: str, open_method: Any) -> Any:
        if not os.path.isfile(full_path):
            return None
        with open_method(full_path, "rb") as fp:
            return json.loads(fp.read().decode("utf-8"))


class LeanLoader(Loader):  # type: ignore[misc]  # botocore is untyped
    """botocore's data loader, dropping a service model's documentation as it loads it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._undocumented: set[tuple[str, str | None]] = set()

    def load_service_model(
        self, service_name: str, type_name: str, api_version: str | None = None
    ) -> Any:
        # The base caches the model it returns: dropping in place leaves no full copy,
        # and a model it returns again was walked already.
        model = super().load_service_model(service_name, type_name, api_version)
        if type_name == "service-2" and (service_name, api_version) not in self._undocumented:
            self._undocumented.add((service_name, api_version))
            # Not elsewhere: botocore requires it of a client context parameter.
            drop_documentation(model.get("operations"))
            drop_documentation(model.get("shapes"))
        return model


def drop_documentation(node: Any) -> None:
    """Removes every `documentation` and `documentationUrl` string under `node` (operations
    or shapes: their members are named in PascalCase, so no member is named this way)."""
    if isinstance(node, dict):
        for key in ("documentation", "documentationUrl"):
            if isinstance(node.get(key), str):
                del node[key]
        for value in node.values():
            drop_documentation(value)
    elif isinstance(node, list):
        for value in node:
            drop_documentation(value)


def trim_endpoint_data(endpoints: dict[str, Any]) -> None:
    for partition in endpoints.get("partitions", ()):
        services = partition.get("services", {})
        partition["services"] = {
            name: services[name] for name in sorted(ENDPOINT_SERVICES) if name in services
        }
