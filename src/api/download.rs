//! `GET`/`HEAD /api/export/{id}/download`: the stored file, sent from disk (zero-copy where the
//! connection can), with `Range` (one range), `ETag`, `If-None-Match` and `If-Range`.

use std::sync::Arc;

use poem::{Body, IntoResponse, Response};
use poem_openapi::{
    ApiResponse, OpenApi, ResponseContent,
    param::{Header, Path},
    payload::Json,
    registry::{MetaMediaType, MetaResponses, MetaSchema, MetaSchemaRef, Registry},
};
use uuid::Uuid;

use crate::{
    api::{
        ApiTags, AppState,
        auth::Caller,
        error::{ErrorBody, Fails, declare::*},
    },
    error::Error,
    export::fault::PauseAt,
    http::ZeroCopy,
    model::{ExportRecord, ExportStatus, spec},
    storage::StoredFile,
};

/// Downloads.
pub struct DownloadApi {
    /// Shared state: pool, storage.
    pub state: Arc<AppState>,
}

/// The file's bytes, with the content type of its format (`text/csv` or `application/gzip`),
/// or `application/octet-stream` when the client asks for that and not for the file's own type.
#[derive(Debug)]
pub struct ExportFile {
    body: Body,
    content_type: &'static str,
}

impl IntoResponse for ExportFile {
    fn into_response(self) -> Response {
        Response::builder().content_type(self.content_type).body(self.body)
    }
}

impl ResponseContent for ExportFile {
    fn media_types() -> Vec<MetaMediaType> {
        let binary =
            || MetaSchemaRef::Inline(Box::new(MetaSchema { format: Some("binary"), ..MetaSchema::new("string") }));
        // Raw bytes first: generators that read a body by its first declared type (e.g.
        // openapi-python-client) then hand the file over as bytes, gzip or not.
        vec![
            MetaMediaType { content_type: OCTET_STREAM, schema: binary() },
            MetaMediaType { content_type: spec::CSV_CONTENT_TYPE, schema: binary() },
            MetaMediaType { content_type: spec::GZIP_CONTENT_TYPE, schema: binary() },
            MetaMediaType { content_type: spec::JSONL_CONTENT_TYPE, schema: binary() },
            MetaMediaType { content_type: spec::PARQUET_CONTENT_TYPE, schema: binary() },
        ]
    }
}

/// The type a client gets when it asks for raw bytes (`Accept: application/octet-stream`).
const OCTET_STREAM: &str = "application/octet-stream";

/// The content type to serve a file of type `own` in, given the request's `Accept`: its own,
/// unless the client accepts `application/octet-stream` and not the file's own type (no
/// client is refused: without a match, the file's own type is sent, as RFC 9110 allows).
fn negotiate(accept: Option<&str>, own: &'static str) -> &'static str {
    let Some(accept) = accept else { return own };
    let essence = own.split(';').next().unwrap_or(own);
    let family = essence.split('/').next().unwrap_or(essence);
    let ranges = || accept.split(',').map(|r| r.split(';').next().unwrap_or("").trim());
    let takes_own = ranges().any(|r| {
        r == "*/*"
            || r.eq_ignore_ascii_case(essence)
            || r.split_once('/').is_some_and(|(f, s)| s == "*" && f.eq_ignore_ascii_case(family))
    });
    let takes_bytes = ranges().any(|r| r.eq_ignore_ascii_case(OCTET_STREAM));
    if !takes_own && takes_bytes { OCTET_STREAM } else { own }
}

/// `GET /api/export/{id}/download`.
#[derive(Debug, ApiResponse)]
pub enum DownloadResponse {
    /// The whole file: `text/csv`, or `application/gzip` for gzip exports
    /// (`application/octet-stream` with `Accept: application/octet-stream`).
    #[oai(status = 200)]
    Ok(
        ExportFile,
        #[oai(header = "Content-Length")] u64,
        #[oai(header = "Content-Disposition")] String,
        #[oai(header = "ETag")] String,
        #[oai(header = "Accept-Ranges")] String,
    ),
    /// The requested range of the file (`Range: bytes=start-end`; one range).
    #[oai(status = 206)]
    Partial(
        ExportFile,
        #[oai(header = "Content-Length")] u64,
        #[oai(header = "Content-Range")] String,
        #[oai(header = "Content-Disposition")] String,
        #[oai(header = "ETag")] String,
        #[oai(header = "Accept-Ranges")] String,
    ),
    /// The file is served by the object store it lives in: `Location` is a presigned URL of it
    /// (valid for a few minutes; `Range` works there too). Only on servers configured to
    /// redirect downloads (`EXPORTD_DOWNLOAD_REDIRECT`); clients that follow redirects get the
    /// same bytes either way.
    #[oai(status = 302)]
    Redirect(#[oai(header = "Location")] String, #[oai(header = "ETag")] String),
    /// `If-None-Match` matched: the copy the client has is current.
    #[oai(status = 304)]
    NotModified(#[oai(header = "ETag")] String),
    /// The range starts beyond the end of the file; `Content-Range` gives its length.
    #[oai(status = 416)]
    RangeNotSatisfiable(Json<ErrorBody>, #[oai(header = "Content-Range")] String),
}

/// `HEAD /api/export/{id}/download`: what `GET` answers, declared and sent without a body.
#[derive(Debug)]
pub struct HeadResponse(pub DownloadResponse);

impl ApiResponse for HeadResponse {
    fn meta() -> MetaResponses {
        let mut meta = DownloadResponse::meta();
        for r in &mut meta.responses {
            r.content.clear();
        }
        meta
    }

    fn register(registry: &mut Registry) {
        DownloadResponse::register(registry);
    }
}

impl IntoResponse for HeadResponse {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

/// What a download can answer besides the file (400: the id is not a UUID; 503: `busy`).
type DownloadErrors<const BODY: bool = true> =
    Fails<{ BAD_REQUEST | UNAUTHORIZED | NOT_FOUND | CONFLICT | GONE | INTERNAL | UNAVAILABLE }, BODY>;

#[OpenApi(tag = "ApiTags::Exports")]
impl DownloadApi {
    /// Download the file
    ///
    /// Streams the finished file from storage (or, on servers so configured, redirects to a
    /// presigned URL of the object store holding it). Supports `Range` (one range; 206, or 416 when
    /// it starts past the end), `If-Range`, and `If-None-Match` with the strong `ETag`
    /// (the file of an export never changes). 409 while the export is queued or running;
    /// 410 once it is expired, cancelled or failed. `Accept: application/octet-stream` gets
    /// the same bytes labelled as that type.
    #[oai(path = "/api/export/:id/download", method = "get", operation_id = "downloadExport")]
    async fn download(
        &self,
        caller: Caller,
        req: &poem::Request,
        id: Path<Uuid>,
        /// `bytes=start-end`, `bytes=start-` or `bytes=-suffix`.
        #[oai(name = "Range")]
        range: Header<Option<String>>,
        #[oai(name = "If-None-Match")] if_none_match: Header<Option<String>>,
        #[oai(name = "If-Range")] if_range: Header<Option<String>>,
    ) -> Result<DownloadResponse, DownloadErrors> {
        let record = crate::api::export::find_visible(&self.state, &caller, id.0).await?;
        Ok(self.respond(req, record, range.0, if_none_match.0, if_range.0, true).await?)
    }

    /// File headers only
    ///
    /// What `GET` would answer, without the body: length, `ETag`, `Accept-Ranges`.
    #[oai(path = "/api/export/:id/download", method = "head", operation_id = "headExport")]
    async fn head(
        &self,
        caller: Caller,
        req: &poem::Request,
        id: Path<Uuid>,
        #[oai(name = "Range")] range: Header<Option<String>>,
        #[oai(name = "If-None-Match")] if_none_match: Header<Option<String>>,
        #[oai(name = "If-Range")] if_range: Header<Option<String>>,
    ) -> Result<HeadResponse, DownloadErrors<false>> {
        let record = crate::api::export::find_visible(&self.state, &caller, id.0).await?;
        Ok(HeadResponse(self.respond(req, record, range.0, if_none_match.0, if_range.0, false).await?))
    }
}

impl DownloadApi {
    /// The answer to a download of `record` (a link's or a key's) asked for by `req`: the file,
    /// a range, 304, 416, or why there is no file.
    pub(crate) async fn respond(
        &self,
        req: &poem::Request,
        record: ExportRecord,
        range: Option<String>,
        if_none_match: Option<String>,
        if_range: Option<String>,
        with_body: bool,
    ) -> Result<DownloadResponse, Error> {
        let accept = req.header("accept");
        // The connection can send files without copying them (HTTP/1 on Linux).
        let zero_copy = req.extensions().get::<ZeroCopy>();
        let name = finished_file(&record)?;
        let len = record.bytes_written as u64;
        let etag = format!("\"{}-{len}\"", record.id.simple());
        if if_none_match.as_deref().is_some_and(|h| etag_matches(h, &etag)) {
            return Ok(DownloadResponse::NotModified(etag));
        }
        let spec = record.spec.get()?;
        let file_name = format!("{}-{}.{}", record.dataset, record.id, spec.extension());
        if let (Some(ttl), true, None) = (self.state.download_redirect, with_body, record.pieces())
            && let Some(url) = self.state.storage.download_url(name, &file_name, ttl).await?
        {
            return Ok(DownloadResponse::Redirect(url, etag));
        }
        // Each download in progress holds a permit until its body is sent (or dropped); HEAD
        // sends no body and needs none.
        let permit = match with_body {
            true => Some(self.state.downloads.clone().try_acquire_owned().map_err(|_| {
                Error::Busy(
                    "as many downloads are in progress as this server serves at once; retry in a few seconds".into(),
                )
            })?),
            false => None,
        };
        self.state.faults.pause_at(PauseAt::DownloadLookedUp).await;
        // Opened now, before any header is sent: an open file is read to its end even if it
        // expires or is deleted meanwhile (the bytes stay until it is closed).
        let file = self.open(&record, name).await?;
        // A Range is honoured only if If-Range (when sent) names the current version.
        let range = range.filter(|_| if_range.as_deref().is_none_or(|v| if_range_holds(v, &etag)));
        let disposition = format!("attachment; filename=\"{file_name}\"");
        let content_type = negotiate(accept, spec.content_type());
        let accept = "bytes".to_owned();
        match range.as_deref().map(|r| parse_range(r, len)) {
            Some(Some(Err(()))) => Ok(DownloadResponse::RangeNotSatisfiable(
                ErrorBody::new("range_not_satisfiable", format!("Range: the file has {len} bytes")),
                format!("bytes */{len}"),
            )),
            Some(Some(Ok((start, end)))) => {
                let count = end - start + 1;
                let body = body(file, start, count, with_body, zero_copy, permit).await?;
                let file = ExportFile { body, content_type };
                let content_range = format!("bytes {start}-{end}/{len}");
                Ok(DownloadResponse::Partial(file, count, content_range, disposition, etag, accept))
            }
            // No Range, or one we do not serve (malformed, several ranges): the whole file.
            _ => {
                let body = body(file, 0, len, with_body, zero_copy, permit).await?;
                Ok(DownloadResponse::Ok(ExportFile { body, content_type }, len, disposition, etag, accept))
            }
        }
    }

    /// Opens the export's file. When it is not there, the export expired or was deleted
    /// between reading its row and opening its file: answered as it now is (410 or 404),
    /// never 500. The file must hold every byte the row promises, or no header is sent.
    async fn open(&self, record: &ExportRecord, name: &str) -> Result<Box<dyn StoredFile>, Error> {
        let opened = match record.pieces() {
            Some(pieces) => crate::storage::open_pieces(&*self.state.storage, &pieces).await,
            None => self.state.storage.open(name).await,
        };
        match opened {
            Ok(file) => {
                let on_disk = file.size();
                if on_disk < record.bytes_written as u64 {
                    return Err(Error::Other(anyhow::anyhow!(
                        "file {name} of export {} has {on_disk} bytes, its checkpoint {}",
                        record.id,
                        record.bytes_written
                    )));
                }
                Ok(file)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let now = crate::with_conn!(self.state.pool, self.state.request_timeout, "reading the export", |c| {
                    crate::db::exports::find_export(c, record.id)
                })
                .await?;
                let now = now.ok_or(Error::NotFound(record.id))?;
                finished_file(&now)?;
                Err(e.into()) // still `completed`, yet no file: a real fault, logged as a 500
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// `count` bytes of the file from `start` (none without `with_body`), sent without copying when
/// the file is local and the connection can (`zero_copy`), else read in pieces as the client
/// takes them; the download's permit is held until the last byte is sent or the body is dropped.
async fn body(
    file: Box<dyn StoredFile>,
    start: u64,
    count: u64,
    with_body: bool,
    zero_copy: Option<&ZeroCopy>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Body, Error> {
    use futures::StreamExt as _;
    if !with_body {
        return Ok(Body::empty());
    }
    if let Some(zero_copy) = zero_copy
        && let Some(spans) = file.spans(start, count)
    {
        return Ok(zero_copy.body(spans, permit));
    }
    let pieces = file.read(start, count).await?;
    Ok(Body::from_bytes_stream(pieces.map(move |piece| {
        let _held = &permit;
        if let Ok(bytes) = &piece {
            crate::telemetry::metrics::download_bytes("read", bytes.len());
        }
        piece
    })))
}

/// The stored file of a completed export, or why there is none (409 not yet, 410 never again).
fn finished_file(record: &ExportRecord) -> Result<&str, Error> {
    let status = record.status.as_str().to_owned();
    match (record.status, record.file_name.as_deref()) {
        (ExportStatus::Completed, Some(name)) => Ok(name),
        (ExportStatus::Queued | ExportStatus::Running, _) => Err(Error::Conflict {
            message: format!("export {} is {status}, not completed: there is no file to download yet", record.id),
            status,
        }),
        (ExportStatus::Expired, _) => {
            Err(Error::Gone { message: format!("export {} expired: its file was deleted", record.id), status })
        }
        _ => Err(Error::Gone { message: format!("export {} is {status}: it has no file", record.id), status }),
    }
}

/// Whether an `If-None-Match` header names `etag` (or is `*`); weak comparison, as RFC 9110 asks.
fn etag_matches(header: &str, etag: &str) -> bool {
    let (Some(header), Ok(etag)) = (decode::<headers::IfNoneMatch>(header), etag.parse::<headers::ETag>()) else {
        return false;
    };
    !header.precondition_passes(&etag)
}

/// Whether an `If-Range` header names the current version (`etag`), so a Range may be honoured.
fn if_range_holds(header: &str, etag: &str) -> bool {
    let (Some(header), Ok(etag)) = (decode::<headers::IfRange>(header), etag.parse::<headers::ETag>()) else {
        return false;
    };
    !header.is_modified(Some(&etag), None)
}

/// One typed header from its text.
fn decode<H: headers::Header>(value: &str) -> Option<H> {
    let value = poem::http::HeaderValue::from_str(value).ok()?;
    H::decode(&mut std::iter::once(&value)).ok()
}

/// One byte range of a file of `len` bytes (RFC 9110 through `http-range-header`): None when
/// the header is not one range we serve (then the whole file is sent, as the RFC allows for a
/// malformed header or several ranges), Some(Err) when it is unsatisfiable (416).
fn parse_range(header: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    use http_range_header::RangeUnsatisfiableError::Unsatisfiable;
    match http_range_header::parse_range_header(header.trim()).and_then(|r| r.validate(len)) {
        Ok(ranges) => match ranges.as_slice() {
            [one] => Some(Ok((*one.start(), *one.end()))),
            _ => None,
        },
        Err(Unsatisfiable) => Some(Err(())),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-1000", 100), Some(Ok((0, 99))));
        assert_eq!(parse_range("bytes=50-5000", 100), Some(Ok((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=-0", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("bytes=9-1", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=x-1", 100), None);
    }

    #[test]
    fn content_types() {
        let csv = "text/csv; charset=utf-8";
        assert_eq!(negotiate(None, csv), csv);
        assert_eq!(negotiate(Some("*/*"), csv), csv);
        assert_eq!(negotiate(Some("text/*"), csv), csv);
        assert_eq!(negotiate(Some("application/octet-stream"), csv), OCTET_STREAM);
        assert_eq!(negotiate(Some("application/octet-stream, text/csv"), csv), csv);
        assert_eq!(
            negotiate(Some("application/json, application/octet-stream;q=0.5"), "application/gzip"),
            OCTET_STREAM
        );
        assert_eq!(negotiate(Some("application/json"), csv), csv, "no match: its own type");
    }

    #[test]
    fn if_range() {
        assert!(if_range_holds("\"a-1\"", "\"a-1\""));
        assert!(!if_range_holds("\"a-2\"", "\"a-1\""));
        assert!(!if_range_holds("W/\"a-1\"", "\"a-1\""), "If-Range compares strongly");
    }

    #[test]
    fn etags() {
        assert!(etag_matches("\"a-1\"", "\"a-1\""));
        assert!(etag_matches("\"b\", W/\"a-1\"", "\"a-1\""));
        assert!(etag_matches("*", "\"a-1\""));
        assert!(!etag_matches("\"a-2\"", "\"a-1\""));
    }
}
