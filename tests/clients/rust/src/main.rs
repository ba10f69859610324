//! The whole flow through the client progenitor generated (at its defaults, in build.rs) from
//! exportd's live spec. Usage: BASE_URL OUT_FILE REQUEST_JSON; prints the ids as one JSON line.

// The generated client, as progenitor wrote it.
#[allow(clippy::all, unused, missing_docs)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/client.rs"));
}

use std::{
    num::NonZeroU32,
    time::{Duration, Instant},
};

use futures::TryStreamExt as _;
use generated::{Client, Error, types};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, base, out, request] = &args[..] else { panic!("usage: BASE_URL OUT_FILE REQUEST_JSON") };
    // Without a key every operation is refused: 401 with an ErrorBody, as the spec declares.
    match Client::new(base).list_datasets().await {
        Err(Error::ErrorResponse(e)) if e.status() == 401 => assert_eq!(e.error, "unauthorized"),
        other => panic!("without a key: {other:?}"),
    }
    let key = std::env::var("EXPORTD_KEY").expect("the API key in EXPORTD_KEY");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse().expect("a key is ASCII"));
    let http = reqwest::Client::builder().default_headers(headers).build().expect("HTTP client");
    let client = Client::new_with_client(base, http);

    let datasets = client.list_datasets().await.expect("list datasets").into_inner();
    let orders = datasets.iter().find(|d| d.name == "orders").expect("orders is listed");
    assert!(orders.default && orders.columns.iter().any(|c| c.name == "customer_email"), "{orders:?}");

    // The request as the generated type (its serde is part of the generated code).
    let body: types::CreateExportRequest = serde_json::from_str(request).expect("the request fits the generated type");
    // The header's bound (at most 200 characters) makes it a checked type of its own.
    let key: types::CreateExportIdempotencyKey = uuid::Uuid::new_v4().to_string().parse().expect("a valid key");
    let created = client.create_export(Some(&key), &body).await.expect("create").into_inner();
    assert_eq!(created.status, types::StatusName::Queued);
    let id = created.job_id;

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = client.get_export_status(&id).await.expect("status").into_inner();
        if !matches!(status.status, types::StatusName::Queued | types::StatusName::Running) {
            break status;
        }
        assert!(Instant::now() < deadline, "the export did not finish within 60 s: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.status, types::StatusName::Completed, "{status:?}");
    assert!(status.error.is_none() && status.finished_at.is_some(), "{status:?}");
    assert_eq!(status.options.as_ref().and_then(|o| o.compression), Some(types::CompressionName::Gzip));

    let stream = client.download_export(&id, None, None, None).await.expect("download").into_inner();
    let bytes: Vec<u8> = stream.into_inner().map_ok(|b| b.to_vec()).try_concat().await.expect("the body");
    assert_eq!(bytes.len() as i64, status.bytes_written);
    std::fs::write(out, &bytes).expect("write the file");

    // Another export, throttled so that it is still queued or running, cancelled.
    let slow = types::CreateExportRequest { max_rows_per_second: NonZeroU32::new(1), chunk_size: Some(100), ..Default::default() };
    let slow = client.create_export(None, &slow).await.expect("create the slow export").into_inner();
    let cancelled = client.cancel_export(&slow.job_id).await.expect("cancel").into_inner();
    assert_eq!(cancelled.status, types::StatusName::Cancelled);

    let page = client.list_exports(None, NonZeroU32::new(10), None).await.expect("list").into_inner();
    let ids: Vec<_> = page.items.iter().map(|e| e.job_id).collect();
    assert!(ids.contains(&id) && ids.contains(&slow.job_id) && page.next_cursor.is_none(), "{ids:?}");

    // Errors arrive as the declared ErrorBody.
    let bad = types::CreateExportRequest { columns: vec!["id".into(), "no_such_column".into()], ..Default::default() };
    match client.create_export(None, &bad).await {
        Err(Error::ErrorResponse(e)) => {
            assert_eq!(e.status(), 400);
            assert!(e.error == "bad_request" && e.message.contains("no_such_column"), "{e:?}");
        }
        other => panic!("a bad column should be a 400 ErrorBody: {other:?}"),
    }
    match client.get_export_status(&uuid::Uuid::new_v4()).await {
        Err(Error::ErrorResponse(e)) => assert!(e.status() == 404 && e.error == "not_found", "{e:?}"),
        other => panic!("an unknown id should be a 404 ErrorBody: {other:?}"),
    }

    println!("{}", serde_json::json!({"completed": id, "cancelled": slow.job_id}));
}
