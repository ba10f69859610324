"""The whole flow through the client openapi-python-client generated from exportd's live spec.

Usage: roundtrip.py BASE_URL OUT_FILE   (the generated package `exportd_client` on PYTHONPATH;
the API key in EXPORTD_KEY)
Prints one JSON line: the ids of the completed and the cancelled export.
Every call goes through the generated code; nothing is patched.
"""

import json
import os
import sys
import time
import uuid

from exportd_client import AuthenticatedClient, Client
from exportd_client.api.datasets import list_datasets
from exportd_client.api.exports import (
    cancel_export,
    create_export,
    download_export,
    get_export_status,
    list_exports,
)
from exportd_client.models import (
    CodecName,
    CompressionName,
    CreateExportRequest,
    CreateExportRequestFilters,
    CreateExportRequestHeaders,
    DecimalsName,
    ErrorBody,
    ExportCreated,
    ExportList,
    ExportStatusView,
    FileTypeName,
    FormatRequest,
    LineEndingName,
    StatusName,
)
from exportd_client.types import File

base, out = sys.argv[1], sys.argv[2]
request = json.loads(sys.argv[3])  # the export to make, as the request body's JSON
# Without a key every operation is refused: 401 with an ErrorBody, as the spec declares.
anonymous = list_datasets.sync_detailed(client=Client(base_url=base))
assert anonymous.status_code == 401 and isinstance(anonymous.parsed, ErrorBody), anonymous
assert anonymous.parsed.error == "unauthorized", anonymous.parsed
client = AuthenticatedClient(base_url=base, token=os.environ["EXPORTD_KEY"], raise_on_unexpected_status=True)

datasets = list_datasets.sync(client=client)
orders = next(d for d in datasets if d.name == "orders")
assert orders.default and "customer_email" in [c.name for c in orders.columns], orders

# Built field by field from the generated models (from_dict only for the two free-form maps).
f = request["format"]
body = CreateExportRequest(
    dataset=request["dataset"],
    columns=request["columns"],
    headers=CreateExportRequestHeaders.from_dict(request["headers"]),
    filters=CreateExportRequestFilters.from_dict(request["filters"]),
    format_=FormatRequest(
        delimiter=f["delimiter"],
        header=f["header"],
        null=f["null"],
        line_ending=LineEndingName(f["lineEnding"]),
        time_zone=f["timeZone"],
    ),
    compression=CompressionName(request["compression"]),
    chunk_size=request["chunkSize"],
)
created = create_export.sync(client=client, body=body, idempotency_key=str(uuid.uuid4()))
assert isinstance(created, ExportCreated), created
assert created.status == StatusName.QUEUED

deadline = time.monotonic() + 60
while True:
    status = get_export_status.sync(created.job_id, client=client)
    assert isinstance(status, ExportStatusView), status
    if status.status != StatusName.QUEUED and status.status != StatusName.RUNNING:
        break
    assert time.monotonic() < deadline, "the export did not finish within 60 s"
    time.sleep(0.05)
assert status.status == StatusName.COMPLETED, status
assert status.finished_at is not None and status.error is None and status.options.compression == CompressionName.GZIP

file = download_export.sync(created.job_id, client=client)
assert isinstance(file, File), file
data = file.payload.read()
assert len(data) == status.bytes_written, (len(data), status.bytes_written)
with open(out, "wb") as w:
    w.write(data)

# Another export, throttled so that it is still queued or running, cancelled.
slow = create_export.sync(client=client, body=CreateExportRequest(max_rows_per_second=1, chunk_size=100))
assert isinstance(slow, ExportCreated), slow
cancelled = cancel_export.sync(slow.job_id, client=client)
assert isinstance(cancelled, ExportStatusView) and cancelled.status == StatusName.CANCELLED, cancelled

page = list_exports.sync(client=client, limit=10)
assert isinstance(page, ExportList), page
ids = [e.job_id for e in page.items]
assert created.job_id in ids and slow.job_id in ids, ids
assert page.next_cursor is None  # two exports, one page

# The other file types, through the generated enums: Parquet (snappy pages) and JSON Lines
# (numeric values as numbers), each saved beside OUT_FILE as OUT_FILE.parquet / .jsonl.
for suffix, fmt in [
    ("parquet", FormatRequest(type_=FileTypeName.PARQUET, codec=CodecName.SNAPPY)),
    ("jsonl", FormatRequest(type_=FileTypeName.JSONL, decimals=DecimalsName.NUMBER, time_zone="UTC")),
]:
    made = create_export.sync(client=client, body=CreateExportRequest(columns=request["columns"], format_=fmt))
    assert isinstance(made, ExportCreated), made
    deadline = time.monotonic() + 60
    while True:
        done = get_export_status.sync(made.job_id, client=client)
        if done.status not in (StatusName.QUEUED, StatusName.RUNNING):
            break
        assert time.monotonic() < deadline, f"the {suffix} export did not finish within 60 s"
        time.sleep(0.05)
    assert done.status == StatusName.COMPLETED and done.options.format_.type_ == fmt.type_, done
    typed = download_export.sync(made.job_id, client=client)
    assert isinstance(typed, File), typed
    with open(f"{out}.{suffix}", "wb") as w:
        w.write(typed.payload.read())

# Errors arrive as the declared ErrorBody.
bad = create_export.sync_detailed(client=client, body=CreateExportRequest(columns=["id", "no_such_column"]))
assert bad.status_code == 400 and isinstance(bad.parsed, ErrorBody), bad
assert bad.parsed.error == "bad_request" and "no_such_column" in bad.parsed.message, bad.parsed
missing = get_export_status.sync_detailed(uuid.uuid4(), client=client)
assert missing.status_code == 404 and isinstance(missing.parsed, ErrorBody) and missing.parsed.error == "not_found"

print(json.dumps({"completed": str(created.job_id), "cancelled": str(slow.job_id)}))
