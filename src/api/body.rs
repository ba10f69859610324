//! `OptionalJson<T>`: a JSON request body that may be absent (no body, or no Content-Type
//! with an empty body), so `POST /api/export` works with a bare `curl -X POST`.

use poem::{Request, RequestBody};
use poem_openapi::{
    ApiExtractor, ApiExtractorType, ExtractParamOptions,
    registry::{MetaMediaType, MetaRequest, MetaSchemaRef, Registry},
    types::{ParseFromJSON, Type},
};

/// The parsed body, or `None` when the request had none.
#[derive(Debug)]
pub struct OptionalJson<T>(pub Option<T>);

impl<'a, T: ParseFromJSON + Type + Send + 'static> ApiExtractor<'a> for OptionalJson<T> {
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
        if bytes.len() <= PARSE_INLINE_BYTES {
            return parse(&bytes).map(Self);
        }
        // A large body is parsed (and, when invalid, searched for the culprit field) on a
        // blocking thread: a few milliseconds of CPU never hold up the runtime's other requests.
        tokio::task::spawn_blocking(move || parse(&bytes).map(Self))
            .await
            .map_err(|e| poem::Error::from_string(e.to_string(), poem::http::StatusCode::INTERNAL_SERVER_ERROR))?
    }
}

/// Bodies up to this size are parsed where they arrive; larger ones on a blocking thread.
const PARSE_INLINE_BYTES: usize = 16 * 1024;

/// The body as `T`, or a 400 naming the field at fault (`null` where the spec does not allow
/// it, or the member poem-openapi refuses).
fn parse<T: ParseFromJSON>(bytes: &[u8]) -> poem::Result<Option<T>> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad_request(format!("the request body is not valid JSON: {e}")))?;
    if let Some(problem) = off_type::<T>(&value) {
        return Err(bad_request(problem));
    }
    match T::parse_from_json(Some(value)) {
        Ok(parsed) => Ok(Some(parsed)),
        Err(e) => {
            // Only an invalid body is read a second time, for the search (no copy otherwise).
            let value = serde_json::from_slice(bytes).unwrap_or_default();
            Err(bad_request(match culprit::<T>(&value) {
                Some(field) => format!("invalid field {field:?}: {}", e.into_message()),
                None => format!("invalid request body: {}", e.into_message()),
            }))
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

/// How deep [`culprit`] looks (request bodies nest three levels: `filters.status.in`).
const CULPRIT_DEPTH: usize = 6;

/// The field to name in an error, as a dotted path (`format.lineEnding`): poem-openapi's own
/// messages give the type that failed, not the field. Each member is parsed alone, inside its
/// parents (every field of our request bodies is optional), and the search goes down into the
/// first member that fails: each level costs the size of what it probes, so the search is
/// linear in the body (an invalid body with thousands of keys costs one pass, never a parse
/// per key of the whole body).
fn culprit<T: ParseFromJSON>(value: &serde_json::Value) -> Option<String> {
    let mut path: Vec<String> = Vec::new();
    let mut at = value;
    while path.len() < CULPRIT_DEPTH
        && let Some(object) = at.as_object()
    {
        let alone = |key: &String, member: &serde_json::Value| {
            let probe = path.iter().rev().fold(
                serde_json::Value::Object(serde_json::Map::from_iter([(key.clone(), member.clone())])),
                |inner, parent| serde_json::Value::Object(serde_json::Map::from_iter([(parent.clone(), inner)])),
            );
            T::parse_from_json(Some(probe)).is_err()
        };
        match object.iter().find(|(key, member)| alone(key, member)) {
            Some((key, member)) => {
                path.push(key.clone());
                at = member;
            }
            None => break,
        }
    }
    (!path.is_empty()).then(|| path.join("."))
}

/// The first member whose JSON type is not the one the spec gives it, as a message naming
/// its dotted path. poem-openapi reads a number or a boolean where a string is declared (as
/// its text) and `null` as "absent"; a request the spec calls invalid must not be accepted,
/// so both are refused here. `null` is never valid: no field of a request body is nullable.
fn off_type<T: Type>(value: &serde_json::Value) -> Option<String> {
    let mut registry = Registry::new();
    T::register(&mut registry);
    off_type_at(value, &T::schema_ref(), &registry, &mut Vec::new())
}

fn off_type_at(
    value: &serde_json::Value,
    schema: &MetaSchemaRef,
    registry: &Registry,
    path: &mut Vec<String>,
) -> Option<String> {
    use serde_json::Value;
    let schema = match schema {
        MetaSchemaRef::Inline(s) => s.as_ref(),
        MetaSchemaRef::Reference(name) => registry.schemas.get(name)?,
    };
    let field = || if path.is_empty() { "the request body".to_owned() } else { path.join(".") };
    let expected = match (schema.ty, value) {
        (_, Value::Null) => {
            return Some(format!("{}: null is not allowed; leave the field out to get its default", field()));
        }
        ("string", Value::String(_))
        | ("boolean", Value::Bool(_))
        | ("number", Value::Number(_))
        | ("object", Value::Object(_))
        | ("array", Value::Array(_)) => None,
        ("integer", Value::Number(n)) if n.is_i64() || n.is_u64() => None,
        ("string" | "boolean" | "number" | "integer" | "object" | "array", _) => Some(schema.ty),
        _ => None, // any JSON (filter values): their column's type decides
    };
    if let Some(expected) = expected {
        let got = match value {
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "an array",
            Value::Object(_) => "an object",
            Value::Null => "null",
        };
        return Some(format!(
            "{}: expected {} {expected}, got {got}",
            field(),
            if matches!(expected, "array" | "object" | "integer") { "an" } else { "a" }
        ));
    }
    match value {
        Value::Object(members) => members.iter().find_map(|(key, member)| {
            let declared = schema.properties.iter().find(|(name, _)| *name == key).map(|(_, s)| s);
            let member_schema = declared.or(schema.additional_properties.as_deref())?;
            path.push(key.clone());
            let found = off_type_at(member, member_schema, registry, path);
            path.pop();
            found
        }),
        Value::Array(items) => {
            let item_schema = schema.items.as_deref()?;
            items.iter().enumerate().find_map(|(i, item)| {
                path.push(i.to_string());
                let found = off_type_at(item, item_schema, registry, path);
                path.pop();
                found
            })
        }
        _ => None,
    }
}

fn bad_request(message: String) -> poem::Error {
    poem::Error::from_string(message, poem::http::StatusCode::BAD_REQUEST)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::api::request::CreateExportRequest;

    fn culprit_of(body: Value) -> Option<String> {
        culprit::<CreateExportRequest>(&body)
    }

    #[test]
    fn culprits_are_named_by_their_path() {
        assert_eq!(
            culprit_of(json!({"format": {"lineEnding": "cr", "bom": true}})).as_deref(),
            Some("format.lineEnding")
        );
        assert_eq!(
            culprit_of(json!({"dataset": "orders", "filters": {"status": {"eq": "x", "like": "p%"}}})).as_deref(),
            Some("filters.status.like")
        );
        assert_eq!(culprit_of(json!({"chunkSize": 5})).as_deref(), Some("chunkSize"));
        assert_eq!(culprit_of(json!({"dataset": "orders"})), None);
        // Thousands of unknown keys: one probe each, of that key alone.
        let many: serde_json::Map<String, Value> = (0..8000).map(|i| (format!("k{i:05}"), json!(i))).collect();
        assert_eq!(culprit_of(Value::Object(many)).as_deref(), Some("k00000"));
    }

    #[test]
    fn members_of_another_type_than_declared_are_found_at_any_depth() {
        let off = |v: Value| off_type::<CreateExportRequest>(&v);
        assert_eq!(
            off(json!({"format": {"timeZone": 0}})).as_deref(),
            Some("format.timeZone: expected a string, got a number")
        );
        assert_eq!(
            off(json!({"columns": ["id", true]})).as_deref(),
            Some("columns.1: expected a string, got a boolean")
        );
        assert_eq!(off(json!({"headers": {"id": 1}})).as_deref(), Some("headers.id: expected a string, got a number"));
        assert_eq!(off(json!({"chunkSize": 1.5})).as_deref(), Some("chunkSize: expected an integer, got a number"));
        assert_eq!(
            off(json!({"filters": {"status": {"eq": null}}})).as_deref(),
            Some("filters.status.eq: null is not allowed; leave the field out to get its default")
        );
        assert_eq!(
            off(json!({"columns": [null]})).as_deref(),
            Some("columns.0: null is not allowed; leave the field out to get its default")
        );
        assert_eq!(off(json!([])).as_deref(), Some("the request body: expected an object, got an array"));
        // Filter values are any JSON (read as their column's type); unknown keys are poem-openapi's.
        assert_eq!(off(json!({"filters": {"id": {"gte": 5, "in": [1, "2"]}}, "nope": 1})), None);
    }
}
