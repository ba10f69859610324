//! CORS for browsers on other origins (`EXPORTD_CORS_ORIGINS`; none by default): preflights
//! answered, and the headers a page needs to read (`ETag`, `Content-Disposition`, ...) exposed.
//! A request from an origin not listed passes through untouched: the browser then keeps the
//! answer from the page, and the server's own Swagger UI (same origin) works whatever the list.

use std::sync::Arc;

use poem::{
    Endpoint, IntoResponse, Request, Response,
    http::{HeaderValue, Method, StatusCode, header},
};

/// Methods a page may use.
const METHODS: &str = "GET, HEAD, POST, DELETE";
/// Request headers a page may send (beyond the always-allowed ones).
const ALLOW_HEADERS: &str =
    "Authorization, Content-Type, Idempotency-Key, Range, If-None-Match, If-Range, X-Request-Id";
/// Response headers a page may read (beyond the always-exposed ones).
const EXPOSE_HEADERS: &str =
    "Content-Disposition, Content-Length, Content-Range, Accept-Ranges, ETag, Location, X-Request-Id, Allow";
/// How long a browser may keep a preflight's answer.
const MAX_AGE_SECS: &str = "600";

/// The origins allowed, as configured (lowercase; `*` for any).
#[derive(Debug, Clone, Default)]
pub struct Origins(Arc<Vec<String>>);

impl Origins {
    /// From the configured list.
    pub fn new(origins: Vec<String>) -> Self {
        Self(Arc::new(origins))
    }

    fn allows(&self, origin: &str) -> bool {
        self.0.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
    }
}

/// Answers preflights and marks responses to allowed origins (wraps the whole application).
pub async fn cors<E: Endpoint>(ep: Arc<E>, req: Request, origins: Origins) -> poem::Result<Response> {
    let origin = req.header(header::ORIGIN).filter(|o| origins.allows(o)).map(str::to_owned);
    let Some(origin) = origin.and_then(|o| HeaderValue::from_str(&o).ok()) else {
        return ep.call(req).await.map(IntoResponse::into_response);
    };
    if req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        return Ok(Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin)
            .header(header::ACCESS_CONTROL_ALLOW_METHODS, METHODS)
            .header(header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS)
            .header(header::ACCESS_CONTROL_MAX_AGE, MAX_AGE_SECS)
            .header(header::VARY, "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
            .finish());
    }
    let mut resp = ep.call(req).await.map(IntoResponse::into_response).unwrap_or_else(|e| e.into_response());
    let headers = resp.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    Ok(resp)
}

/// An `EXPORTD_CORS_ORIGINS` entry: `*`, or an origin as browsers send it
/// (`https://app.example.com`, `http://localhost:3000`: scheme, host, optional port; no path).
pub fn parse_origin(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s == "*" {
        return Ok(s.to_owned());
    }
    let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(['/', '?', '#', ' ']) => Ok(s.to_ascii_lowercase()),
        _ => Err(format!("{s:?} is not an origin: give scheme and host, e.g. https://app.example.com (no path), or *")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port() {
        assert_eq!(parse_origin("https://App.example.com").unwrap(), "https://app.example.com");
        assert_eq!(parse_origin("http://localhost:3000").unwrap(), "http://localhost:3000");
        assert_eq!(parse_origin("*").unwrap(), "*");
        for bad in ["app.example.com", "https://app.example.com/", "ftp://x", "https://", ""] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }
}
