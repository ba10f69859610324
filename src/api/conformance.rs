//! Checks every response against the spec while the test suite runs (off in production): its
//! status is declared for its operation, its content type is one the operation declares, its
//! declared headers are there, and a JSON body validates against the declared schema
//! (OpenAPI 3.0: `$ref`, `nullable`, types, `uuid`/`date-time`/`int32`, enums, bounds,
//! required and additional properties). Violations are kept for the test to assert on.

use std::sync::{Mutex, OnceLock};

use poem::{Body, Response};
use serde_json::Value;

/// The spec and what broke it so far.
#[derive(Debug, Default)]
pub struct Conformance {
    spec: OnceLock<Value>,
    violations: Mutex<Vec<String>>,
}

impl Conformance {
    /// The spec the responses are checked against (the one served at `/openapi.json`).
    pub(crate) fn set_spec(&self, spec: &str) {
        let _ = self.spec.set(serde_json::from_str(spec).expect("the spec is JSON"));
    }

    /// Every violation seen so far, one line each (`GET /api/... 200: ...`).
    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().unwrap().clone()
    }

    /// Checks one response (a JSON body is read and put back).
    pub(crate) async fn check(&self, method: &str, path: &str, resp: Response) -> Response {
        let Some(spec) = self.spec.get() else { return resp };
        let Some(op) = operation(spec, method, path) else { return resp }; // no route: not the spec's
        let status = resp.status().as_u16();
        let what = format!("{} {path} {status}", method.to_uppercase());
        let Some(declared) = op["responses"].get(status.to_string()).or_else(|| op["responses"].get("default")) else {
            self.violation(format!("{what}: status not declared"));
            return resp;
        };
        let declared = resolve(spec, declared);
        for (name, header) in declared["headers"].as_object().into_iter().flatten() {
            if header["required"] == true && !resp.headers().contains_key(name.as_str()) {
                self.violation(format!("{what}: declared header {name} missing"));
            }
        }
        let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let Some(content) = declared["content"].as_object().filter(|c| !c.is_empty()) else {
            if method != "head" && content_type.is_some() && status != 304 {
                self.violation(format!("{what}: a body ({content_type:?}) where none is declared"));
            }
            return resp;
        };
        let Some(content_type) = content_type else {
            if method != "head" {
                self.violation(format!("{what}: no Content-Type"));
            }
            return resp;
        };
        let Some(media) = content.get(&content_type) else {
            self.violation(format!("{what}: Content-Type {content_type} not declared"));
            return resp;
        };
        if !content_type.starts_with("application/json") || method == "head" {
            return resp; // a file: its bytes are the exactness tests' business
        }
        let (parts, body) = resp.into_parts();
        let bytes = body.into_bytes().await.unwrap_or_default();
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(value) => {
                let mut problems = Vec::new();
                validate(spec, &value, &media["schema"], "body", &mut problems);
                for p in problems {
                    self.violation(format!("{what}: {p}"));
                }
            }
            Err(e) => self.violation(format!("{what}: the body is not JSON: {e}")),
        }
        Response::from_parts(parts, Body::from_bytes(bytes))
    }

    fn violation(&self, v: String) {
        tracing::error!(violation = %v, "a response contradicts the spec");
        self.violations.lock().unwrap().push(v);
    }
}

/// The operation of the spec that `method` on `path` is (`{id}` matches any one segment).
fn operation<'a>(spec: &'a Value, method: &str, path: &str) -> Option<&'a Value> {
    let (_, ops) = spec["paths"].as_object()?.iter().find(|(template, _)| super::path_matches(template, path))?;
    ops.get(method)
}

/// A `$ref` (`#/components/...`) followed to what it names.
fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => spec.pointer(pointer).unwrap_or(&Value::Null),
        None => schema,
    }
}

/// Validates `value` against an OpenAPI 3.0 schema, pushing one line per problem.
fn validate(spec: &Value, value: &Value, schema: &Value, at: &str, problems: &mut Vec<String>) {
    let schema = resolve(spec, schema);
    if value.is_null() {
        if schema["nullable"] != true && !schema.as_object().is_some_and(|s| s.is_empty()) {
            problems.push(format!("{at}: null, not declared nullable"));
        }
        return;
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        validate(spec, value, part, at, problems);
    }
    let ty = schema["type"].as_str().unwrap_or("");
    let fits = match ty {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    };
    if !fits {
        problems.push(format!("{at}: {value} is not of type {ty}"));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        problems.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let (Some(n), Some(min)) = (value.as_f64(), schema["minimum"].as_f64())
        && n < min
    {
        problems.push(format!("{at}: {n} is below the minimum {min}"));
    }
    if let (Some(n), Some(max)) = (value.as_f64(), schema["maximum"].as_f64())
        && n > max
    {
        problems.push(format!("{at}: {n} is above the maximum {max}"));
    }
    match (schema["format"].as_str(), value) {
        (Some("uuid"), Value::String(s)) if s.parse::<uuid::Uuid>().is_err() => {
            problems.push(format!("{at}: {s:?} is not a uuid"));
        }
        (Some("date-time"), Value::String(s)) if chrono::DateTime::parse_from_rfc3339(s).is_err() => {
            problems.push(format!("{at}: {s:?} is not an RFC 3339 date-time"));
        }
        (Some("int32"), v) if v.as_i64().is_none_or(|n| i32::try_from(n).is_err()) => {
            problems.push(format!("{at}: {v} is not an int32"));
        }
        _ => {}
    }
    if let Value::Object(members) = value {
        for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !members.contains_key(name) {
                problems.push(format!("{at}: required property {name} missing"));
            }
        }
        for (name, member) in members {
            let member_at = format!("{at}.{name}");
            match (schema["properties"].get(name), &schema["additionalProperties"]) {
                (Some(declared), _) => validate(spec, member, declared, &member_at, problems),
                (None, Value::Bool(false)) => problems.push(format!("{member_at}: not declared")),
                (None, extra) if extra.is_object() => validate(spec, member, extra, &member_at, problems),
                // Properties the schema lists and does not close: an undeclared one is a
                // contradiction all the same (generated clients would drop it).
                (None, _) if schema["properties"].is_object() => problems.push(format!("{member_at}: not declared")),
                _ => {}
            }
        }
    }
    if let (Value::Array(items), Some(item)) = (value, schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            validate(spec, v, item, &format!("{at}[{i}]"), problems);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problems(value: Value, schema: Value) -> Vec<String> {
        let spec = json!({"components": {"schemas": {"S": schema}}});
        let mut out = Vec::new();
        validate(&spec, &value, &json!({"$ref": "#/components/schemas/S"}), "body", &mut out);
        out
    }

    #[test]
    fn the_validator_finds_what_contradicts_a_schema() {
        let schema = json!({
            "type": "object", "required": ["id"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "at": {"type": "string", "format": "date-time", "nullable": true},
                "n": {"type": "integer", "format": "int32", "minimum": 1},
                "s": {"type": "string", "enum": ["a", "b"]},
                "xs": {"type": "array", "items": {"type": "boolean"}}
            }
        });
        let id = "5f0c6ce4-5d7e-4f55-9a64-0b0c1b1b7a0e";
        assert!(problems(json!({"id": id, "at": null, "n": 3, "s": "a", "xs": [true]}), schema.clone()).is_empty());
        let bad = problems(json!({"at": "yesterday", "n": 0, "s": "c", "xs": [1], "extra": 1}), schema.clone());
        assert_eq!(bad.len(), 6, "{bad:#?}");
        assert_eq!(problems(json!({"id": "x"}), schema.clone()), ["body.id: \"x\" is not a uuid"]);
        assert_eq!(problems(json!({"id": id, "n": null}), schema), ["body.n: null, not declared nullable"]);
    }
}
