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
        let bytes =
            body.take()?.into_vec().await.map_err(|e| bad_request(format!("cannot read the request body: {e}")))?;
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

/// The top-level field whose removal makes the body parse: the one to name in the error
/// (poem-openapi's own messages give the type that failed, not the field).
fn culprit<T: ParseFromJSON>(value: &serde_json::Value) -> Option<String> {
    let object = value.as_object()?;
    object
        .keys()
        .find(|key| {
            let mut without = object.clone();
            without.remove(*key);
            T::parse_from_json(Some(serde_json::Value::Object(without))).is_ok()
        })
        .cloned()
}

fn bad_request(message: String) -> poem::Error {
    poem::Error::from_string(message, poem::http::StatusCode::BAD_REQUEST)
}
