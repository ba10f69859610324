//! `/ui`: the caller's exports as a page — live progress bars, rates, ETA, outcome, download
//! and cancel buttons, and rows exported per minute over the last hour — rendered on the
//! server (no front-end build). Signing in stores the API key in an HttpOnly, SameSite=Strict
//! cookie scoped to `/ui`; the list, sign-in and cancel are plain HTML forms that work without
//! JavaScript; a small script (`/ui/app.js`) refreshes the table every two seconds.

use std::{fmt::Write as _, sync::Arc};

use chrono::{DateTime, Utc};
use poem::{
    Endpoint, EndpointExt as _, IntoResponse as _, Request, Response, Route,
    http::{StatusCode, header},
};
use uuid::Uuid;

use crate::{
    api::{AppState, export::ExportApi},
    db,
    model::{ApiKey, ExportRecord, ExportStatus},
};

/// The cookie holding the signed-in key.
const COOKIE: &str = "exportd_key";
/// How long a sign-in lasts.
const SIGN_IN_FOR: std::time::Duration = std::time::Duration::from_secs(8 * 3600);
/// Exports shown (newest first).
const SHOWN: i64 = 50;

/// The page's routes, nested at `/ui`.
pub fn routes(state: Arc<AppState>) -> impl Endpoint {
    Route::new()
        .at("/", poem::get(page))
        .at("/rows", poem::get(live_rows))
        .at("/login", poem::post(login))
        .at("/logout", poem::post(logout))
        .at("/exports/:id/cancel", poem::post(cancel))
        .at("/app.js", poem::get(poem::endpoint::make_sync(|_| static_file("text/javascript", APP_JS))))
        .at("/app.css", poem::get(poem::endpoint::make_sync(|_| static_file("text/css", APP_CSS))))
        .data(state)
        .around(|ep, req| async move {
            let mut resp = ep.call(req).await?.into_response();
            let h = resp.headers_mut();
            // Scripts and styles from this origin only; no framing; forms post here only.
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                header::HeaderValue::from_static(
                    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
                     form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
                ),
            );
            h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
            // `same-origin`, not `no-referrer`: with the latter a form's POST carries `Origin: null`.
            h.insert(header::REFERRER_POLICY, header::HeaderValue::from_static("same-origin"));
            h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
            Ok(resp)
        })
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    Response::builder().content_type(content_type).body(body)
}

fn state_of(req: &Request) -> &Arc<AppState> {
    req.data::<Arc<AppState>>().expect("the ui routes carry the app state")
}

/// The key the request's cookie names, if it is (still) valid.
async fn signed_in(req: &Request) -> Option<ApiKey> {
    let secret = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('=').map(str::to_owned))?;
    crate::api::auth::key_for(state_of(req), &secret).await.ok()
}

/// A form POST from another site is refused (the cookie is SameSite=Strict too): by the
/// browser's `Sec-Fetch-Site` where it sends one, else by `Origin`.
fn same_origin(req: &Request) -> bool {
    if let Some(site) = req.header("sec-fetch-site") {
        return matches!(site, "same-origin" | "none");
    }
    let Some(origin) = req.header(header::ORIGIN) else { return true };
    let host = req.header(header::HOST).unwrap_or_default();
    origin.split_once("://").is_some_and(|(_, rest)| rest == host)
}

#[poem::handler]
async fn page(req: &Request) -> Response {
    match signed_in(req).await {
        Some(key) => html(StatusCode::OK, &list_page(state_of(req), &key).await),
        None => html(StatusCode::OK, &login_page(None)),
    }
}

/// The dynamic part of the page (summary, chart and table), for the refresh script.
#[poem::handler]
async fn live_rows(req: &Request) -> Response {
    match signed_in(req).await {
        Some(key) => html(StatusCode::OK, &live_part(state_of(req), &key).await),
        None => html(StatusCode::UNAUTHORIZED, "<p class=\"error\">Signed out: reload the page.</p>"),
    }
}

#[poem::handler]
async fn login(req: &Request, body: poem::Body) -> Response {
    if !same_origin(req) {
        return html(StatusCode::FORBIDDEN, &login_page(Some("Refused: the form was sent from another site.")));
    }
    let body = body.into_bytes_limit(4096).await.unwrap_or_default();
    let secret = url::form_urlencoded::parse(&body).find(|(k, _)| k == "key").map(|(_, v)| v.trim().to_owned());
    let Some(secret) = secret.filter(|s| !s.is_empty()) else {
        return html(StatusCode::BAD_REQUEST, &login_page(Some("key: paste an API key (exk_...).")));
    };
    if crate::api::auth::key_for(state_of(req), &secret).await.is_err() {
        return html(
            StatusCode::UNAUTHORIZED,
            &login_page(Some("key: not a valid key (malformed, unknown or revoked).")),
        );
    }
    let secure = if state_of(req).links.base.starts_with("https://") { "; Secure" } else { "" };
    back_to_page_with_cookie(&format!("{secret}; Max-Age={}{secure}", SIGN_IN_FOR.as_secs()))
}

#[poem::handler]
async fn logout() -> Response {
    back_to_page_with_cookie("; Max-Age=0")
}

/// A redirect to the page (after a form) that sets the key cookie to `value` (with its
/// attributes after it).
fn back_to_page_with_cookie(value: &str) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header(header::LOCATION, "/ui")
        .header(header::SET_COOKIE, format!("{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict"))
        .finish()
}

#[poem::handler]
async fn cancel(req: &Request, poem::web::Path(id): poem::web::Path<Uuid>) -> Response {
    let Some(key) = signed_in(req).await else { return html(StatusCode::UNAUTHORIZED, &login_page(None)) };
    if !same_origin(req) {
        return html(StatusCode::FORBIDDEN, "<p>Refused: the form was sent from another site.</p>");
    }
    let state = state_of(req);
    let cancelled = crate::with_conn!(state.pool, state.request_timeout, "cancelling the export", |c| {
        db::exports::cancel_export(c, id, key.listed_owner())
    })
    .await;
    match cancelled {
        Ok(Some(r)) => {
            if matches!(r.status, ExportStatus::Cancelled | ExportStatus::Expired) {
                state.storage.remove_export(r.id).await;
            }
            Response::builder().status(StatusCode::SEE_OTHER).header(header::LOCATION, "/ui").finish()
        }
        Ok(None) => html(StatusCode::NOT_FOUND, "<p>No such export.</p>"),
        Err(e) => html(StatusCode::SERVICE_UNAVAILABLE, &format!("<p>{}</p>", escape(&e.to_string()))),
    }
}

fn html(status: StatusCode, body: &str) -> Response {
    Response::builder().status(status).content_type("text/html; charset=utf-8").body(body.to_owned())
}

/// Text safe inside HTML (elements and quoted attributes).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn frame(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/ui/app.css\"></head>\n<body>{body}</body></html>\n",
        escape(title)
    )
}

fn login_page(error: Option<&str>) -> String {
    let error = error.map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))).unwrap_or_default();
    frame(
        "exportd — sign in",
        &format!(
            "<main class=\"narrow\"><h1>exportd</h1><p>Sign in with an API key to see your exports.</p>{error}\
             <form method=\"post\" action=\"/ui/login\"><label for=\"key\">API key</label>\
             <input id=\"key\" name=\"key\" type=\"password\" autocomplete=\"off\" placeholder=\"exk_...\" required>\
             <button type=\"submit\">Sign in</button></form>\
             <p class=\"hint\">Keys are made with <code>exportd keys create --name &lt;owner&gt;</code>; \
             <code>make run</code> prints a development key.</p></main>"
        ),
    )
}

async fn list_page(state: &Arc<AppState>, key: &ApiKey) -> String {
    let live = live_part(state, key).await;
    frame(
        "exportd — exports",
        &format!(
            "<header><h1>exportd</h1><span class=\"who\">signed in as <b>{}</b>{}</span>\
             <form method=\"post\" action=\"/ui/logout\"><button type=\"submit\">Sign out</button></form></header>\
             <main><noscript><p class=\"hint\">Without JavaScript the page does not refresh itself: \
             <a href=\"/ui\">reload</a> to see progress.</p></noscript>\
             <div id=\"live\">{live}</div></main><script src=\"/ui/app.js\"></script>",
            escape(&key.name),
            if key.admin { " (admin: every owner's exports)" } else { "" }
        ),
    )
}

/// Summary, chart and table: what the script refreshes.
async fn live_part(state: &Arc<AppState>, key: &ApiKey) -> String {
    let owner = key.listed_owner().map(str::to_owned);
    let read = crate::with_conn!(state.pool, state.request_timeout, "reading exports for the page", |c| async {
        let exports = db::exports::list_exports(&mut *c, owner.as_deref(), None, None, SHOWN).await?;
        let minutes = db::stats::rows_per_minute(&mut *c, owner.as_deref()).await?;
        Ok((exports, minutes))
    })
    .await;
    let (exports, minutes) = match read {
        Ok(read) => read,
        Err(e) => return format!("<p class=\"error\" role=\"alert\">{}</p>", escape(&e.to_string())),
    };
    let api = ExportApi { state: state.clone() };
    let running = exports.iter().filter(|e| e.status == ExportStatus::Running).count();
    let queued = exports.iter().filter(|e| e.status == ExportStatus::Queued).count();
    let mut out = format!(
        "<p class=\"summary\"><span id=\"running\">{running} running</span> · <span id=\"queued\">{queued} queued</span> \
         · {} shown (newest first)</p>",
        exports.len()
    );
    out.push_str(&chart(&minutes, Utc::now()));
    if exports.is_empty() {
        out.push_str(
            "<p class=\"hint\">No exports yet. Create one with <code>POST /api/export</code> (see \
                      <a href=\"/docs\">/docs</a>) or <code>exportd export</code>.</p>",
        );
        return out;
    }
    out.push_str(
        "<table id=\"exports\"><thead><tr><th>Export</th><th>Dataset</th><th>Status</th><th>Progress</th>\
         <th>Rows</th><th>Rate</th><th>ETA</th><th>Created</th><th></th></tr></thead><tbody>",
    );
    for r in &exports {
        out.push_str(&row(&api, r));
    }
    out.push_str("</tbody></table>");
    out
}

fn row(api: &ExportApi, r: &ExportRecord) -> String {
    let v = api.view(r);
    let status = v.status.as_str();
    let percent = (v.progress * 100.0).clamp(0.0, 100.0);
    let total = v.total_rows.map(|t| format!(" / {t}")).unwrap_or_default();
    let rate = v.rows_per_second.map(|r| format!("{r:.0} rows/s")).unwrap_or_default();
    let eta = v.eta_seconds.filter(|_| !v.status.is_terminal()).map(|s| format!("{s} s")).unwrap_or_default();
    let mut action = String::new();
    match v.status {
        ExportStatus::Completed => {
            let _ = write!(
                action,
                "<a class=\"button download\" href=\"{}\" download>Download</a>",
                escape(&v.download_url)
            );
        }
        ExportStatus::Queued | ExportStatus::Running => {
            let _ = write!(
                action,
                "<form method=\"post\" action=\"/ui/exports/{}/cancel\"><button class=\"cancel\" type=\"submit\">Cancel</button></form>",
                r.id
            );
        }
        _ => {}
    }
    let outcome = match (&v.error, v.status) {
        (Some(e), ExportStatus::Failed) => format!("<div class=\"error\">{}</div>", escape(e)),
        _ => String::new(),
    };
    format!(
        "<tr id=\"export-{id}\" data-status=\"{status}\"><td><code title=\"{id}\">{short}</code></td><td>{dataset}</td>\
         <td><span class=\"status {status}\">{status}</span>{outcome}</td>\
         <td><progress max=\"100\" value=\"{percent:.1}\">{percent:.0}%</progress> <span class=\"pct\">{percent:.0}%</span></td>\
         <td class=\"num rows\">{rows}{total}</td><td class=\"num\">{rate}</td><td class=\"num\">{eta}</td>\
         <td>{created}</td><td>{action}</td></tr>",
        id = r.id,
        short = &r.id.simple().to_string()[..8],
        dataset = escape(&v.dataset),
        rows = v.rows_written,
        created = v.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
    )
}

/// Rows of finished exports per minute over the last hour, as an inline SVG bar chart.
fn chart(minutes: &[(DateTime<Utc>, i64)], now: DateTime<Utc>) -> String {
    const W: f64 = 600.0;
    const H: f64 = 80.0;
    let max = minutes.iter().map(|(_, r)| *r).max().unwrap_or(0).max(1) as f64;
    let total: i64 = minutes.iter().map(|(_, r)| *r).sum();
    let mut bars = String::new();
    for (at, count) in minutes {
        let age = (now - *at).num_minutes().clamp(0, 59) as f64;
        let x = W - (age + 1.0) * (W / 60.0);
        let h = (*count as f64 / max * (H - 4.0)).max(1.0);
        let _ = write!(
            bars,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\"><title>{} rows at {}</title></rect>",
            H - h,
            W / 60.0 - 1.0,
            count,
            at.format("%H:%M")
        );
    }
    format!(
        "<figure class=\"chart\"><figcaption>Rows exported per minute, last hour (exports that finished): \
         <b id=\"hour-rows\">{total}</b> rows</figcaption>\
         <svg viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"rows per minute\">\
         <line x1=\"0\" y1=\"{H}\" x2=\"{W}\" y2=\"{H}\"></line>{bars}</svg></figure>"
    )
}

const APP_JS: &str = r#"// Refreshes the exports table every two seconds (the page works without it).
"use strict";
async function refresh() {
  try {
    const resp = await fetch("/ui/rows", { credentials: "same-origin", cache: "no-store" });
    if (resp.ok) document.getElementById("live").innerHTML = await resp.text();
  } catch (e) { /* the server is away for a moment: try again next time */ }
  setTimeout(refresh, 2000);
}
setTimeout(refresh, 2000);
"#;

const APP_CSS: &str = r#"body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f6f7f9; }
header { display: flex; gap: 1em; align-items: center; padding: .6em 1.2em; background: #1d2330; color: #fff; }
header h1 { font-size: 1.2em; margin: 0; } header .who { flex: 1; opacity: .85; } header button { color: #1d2330; }
main { padding: 1em 1.2em; } main.narrow { max-width: 32em; margin: 3em auto; background: #fff; padding: 2em; border-radius: 8px; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { text-align: left; padding: .45em .6em; border-bottom: 1px solid #e3e6eb; vertical-align: top; }
td.num { text-align: right; white-space: nowrap; } progress { width: 9em; }
.status { padding: .1em .5em; border-radius: 1em; background: #e3e6eb; }
.status.completed { background: #d5f0dc; } .status.running { background: #d9e8fb; } .status.failed { background: #f8d7da; }
.status.cancelled, .status.expired { background: #eee; color: #666; }
.error { color: #a4161a; } .hint { color: #5b6475; } .summary { margin: 0 0 .6em; }
button, .button { font: inherit; padding: .25em .8em; border-radius: 4px; border: 1px solid #8a94a6; background: #fff; color: inherit; text-decoration: none; cursor: pointer; }
.cancel { border-color: #a4161a; color: #a4161a; } .download { border-color: #1f7a38; color: #1f7a38; }
input { font: inherit; width: 100%; box-sizing: border-box; padding: .4em; margin: .3em 0 .8em; }
figure.chart { margin: 0 0 1em; background: #fff; padding: .6em; border-radius: 6px; display: inline-block; }
figure.chart rect { fill: #3b7ddd; } figure.chart line { stroke: #8a94a6; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape(r#"<a href="x">'&'</a>"#), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }

    #[test]
    fn the_chart_places_minutes_by_age() {
        let now = Utc::now();
        let svg = chart(&[(now - chrono::Duration::minutes(1), 50), (now, 100)], now);
        assert_eq!(svg.matches("<rect").count(), 2);
        assert!(svg.contains("<b id=\"hour-rows\">150</b>"));
        assert!(chart(&[], now).contains("<b id=\"hour-rows\">0</b>"));
    }
}
