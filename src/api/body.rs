//! `OptionalJson<T>`: a JSON request body that may be absent (no body, or no Content-Type
//! with an empty body), so `POST /api/export` works with a bare `curl -X POST`.

use poem::{Request, RequestBody};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    registry::{MetaMediaType, MetaRequest, Registry},
    types::{ParseFromJSON, Type},
};

/// The parsed body, or `None` when the request had none.
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<'a, T: ParseFromJSON + Type> ApiExtractor<'a> for OptionalJson<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];
    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType { content_type: "application/json", schema: T::schema_ref() }],
            required: false,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _opts: ExtractParamOptions<()>,
    ) -> poem::Result<Self> {
        let bytes = read_limited(request, body).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        if let Some(ct) = request.content_type() {
            let essence = ct.split(';').next().unwrap_or("").trim();
            if !essence.eq_ignore_ascii_case("application/json") && !essence.ends_with("+json") {
                return Err(poem::Error::from_string(
                    format!("unsupported Content-Type {ct:?}: send application/json"),
                    poem::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ));
            }
        }
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| bad_request(format!("the request body is not valid JSON: {e}")))?;
        match T::parse_from_json(Some(value.clone())) {
            Ok(parsed) => Ok(Self(Some(parsed))),
            Err(e) => Err(bad_request(match culprit::<T>(&value) {
                Some(field) => format!("invalid field {field:?}: {}", e.into_message()),
                None => format!("invalid request body: {}", e.into_message()),
            })),
        }
    }
}

/// Largest request body accepted (a request with every filter at its limit fits many times).
pub const MAX_BODY_BYTES: u64 = 1024 * 1024;

/// The body, refused with 413 when it is larger than [`MAX_BODY_BYTES`]: at once when its
/// `Content-Length` says so, else (chunked) as soon as that many bytes have arrived, so a
/// client can never make the server hold more than that.
async fn read_limited(request: &Request, body: &mut RequestBody) -> poem::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let too_large = || {
        poem::Error::from_string(
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
            poem::http::StatusCode::PAYLOAD_TOO_LARGE,
        )
    };
    let declared = request.header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    let mut reader = body.take()?.into_async_read().take(MAX_BODY_BYTES + 1);
    reader.read_to_end(&mut bytes).await.map_err(|e| bad_request(format!("cannot read the request body: {e}")))?;
    if bytes.len() as u64 > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(bytes)
}

/// The field whose removal makes the body parse, as a dotted path (`format.lineEnding`): the
/// one to name in the error (poem-openapi's own messages give the type that failed, not the
/// field). Nested objects are searched for the innermost such field.
fn culprit<T: ParseFromJSON>(value: &serde_json::Value) -> Option<String> {
    let mut path: Vec<String> = Vec::new();
    while let Some(object) = pointer(value, &path).and_then(|v| v.as_object()) {
        let found = object.keys().find(|key| {
            let mut without = value.clone();
            if let Some(serde_json::Value::Object(parent)) = pointer_mut(&mut without, &path) {
                parent.remove(*key);
            }
            T::parse_from_json(Some(without)).is_ok()
        });
        match found {
            Some(key) => path.push(key.clone()),
            None => break,
        }
    }
    (!path.is_empty()).then(|| path.join("."))
}

fn pointer<'v>(value: &'v serde_json::Value, path: &[String]) -> Option<&'v serde_json::Value> {
    path.iter().try_fold(value, |v, key| v.get(key))
}

fn pointer_mut<'v>(value: &'v mut serde_json::Value, path: &[String]) -> Option<&'v mut serde_json::Value> {
    path.iter().try_fold(value, |v, key| v.get_mut(key))
}

fn bad_request(message: String) -> poem::Error {
    poem::Error::from_string(message, poem::http::StatusCode::BAD_REQUEST)
}
