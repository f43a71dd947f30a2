"""uvicorn's httptools protocol with one change, for measuring (`--server uvicorn-lean` in
bench.request_cost, `--service-servers uvicorn-lean` in the servers phase); not the
shipped server.

uvicorn 0.54 appends each body slice httptools hands it to a `bytearray` and `receive`
copies that into new `bytes`: two copies of every byte on the event loop, on top of
uvloop's read and httptools' slice. Here the first slice since the last `receive` is kept
as the `bytes` it is, so `receive`'s `bytes(...)` returns it as is (a second slice before
the app asks is appended as before). Flow control (HIGH_WATER_LIMIT) is unchanged; since
uvloop reads at most 256 KiB at a time, most messages are a single slice.

Selected with `uvicorn app.main:app --http bench.lean_protocol:LeanHttpToolsProtocol`
(uvicorn takes an import string there), with the repository on PYTHONPATH.
"""

from __future__ import annotations

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class LeanHttpToolsProtocol(HttpToolsProtocol):
    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        if cycle.body:
            cycle.body += body
        else:
            cycle.body = body  # type: ignore[assignment]  # read only by bytes(...)
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()
