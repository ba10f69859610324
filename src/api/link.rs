//! `GET`/`HEAD /download/{id}?expires=..&kid=..&sig=..`: a completed export's file through a
//! signed link, without an API key, until the link expires (see [`crate::model::link`]). Range
//! and ETag work as on `/api/export/{id}/download`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem_openapi::{
    OpenApi,
    param::{Header, Path, Query},
};
use uuid::Uuid;

use crate::{
    api::{
        ApiTags, AppState,
        download::{DownloadApi, DownloadResponse, HeadResponse},
        error::{Fails, declare::*},
    },
    error::Error,
    model::{ExportRecord, ExportStatus, link::Signature},
};

/// Downloads through signed links.
pub struct LinkApi {
    /// Shared state: pool, storage, link secrets.
    pub state: Arc<AppState>,
}

/// A signed link to export `r`'s file and when it expires: `ttl` from now, never past the
/// export's own expiry. None unless the export is completed.
pub fn signed_link(state: &AppState, r: &ExportRecord) -> Option<(String, DateTime<Utc>)> {
    if r.status != ExportStatus::Completed {
        return None;
    }
    let until = Utc::now() + state.links.ttl;
    let expires = r.expires_at.map_or(until, |e| e.min(until)).timestamp();
    let Signature { kid, sig } = state.links.keys.sign(r.id, expires);
    let url = format!("{}/download/{}?expires={expires}&kid={kid}&sig={sig}", state.links.base, r.id);
    Some((url, DateTime::from_timestamp(expires, 0)?))
}

/// What a link can answer besides the file: 403 altered (or signed with a retired secret),
/// 410 the link expired, 404 the export or its file is gone.
type LinkErrors<const BODY: bool = true> =
    Fails<{ BAD_REQUEST | FORBIDDEN | NOT_FOUND | GONE | INTERNAL | UNAVAILABLE }, BODY>;

#[OpenApi(tag = "ApiTags::Exports")]
impl LinkApi {
    /// Download through a signed link
    ///
    /// The file of a completed export, without an API key: the link is the `downloadUrl` of a
    /// completed export's status and works until its `expires`. 403 when the link was altered,
    /// 410 once it has expired, 404 when the export or its file is gone. `Range`, `If-Range`
    /// and `If-None-Match` work as on `/api/export/{id}/download`.
    #[oai(path = "/download/:id", method = "get", operation_id = "downloadByLink")]
    #[allow(clippy::too_many_arguments)]
    async fn download(
        &self,
        req: &poem::Request,
        id: Path<Uuid>,
        /// When the link expires (unix seconds).
        expires: Query<i64>,
        /// Id of the secret that signed the link.
        kid: Query<String>,
        /// The link's signature.
        sig: Query<String>,
        #[oai(name = "Range")] range: Header<Option<String>>,
        #[oai(name = "If-None-Match")] if_none_match: Header<Option<String>>,
        #[oai(name = "If-Range")] if_range: Header<Option<String>>,
    ) -> Result<DownloadResponse, LinkErrors> {
        let record = self.check(id.0, expires.0, kid.0, sig.0).await?;
        let files = DownloadApi { state: self.state.clone() };
        Ok(files.respond(req, record, range.0, if_none_match.0, if_range.0, true).await?)
    }

    /// File headers through a signed link
    ///
    /// What `GET` would answer, without the body.
    #[oai(path = "/download/:id", method = "head", operation_id = "headByLink")]
    #[allow(clippy::too_many_arguments)]
    async fn head(
        &self,
        req: &poem::Request,
        id: Path<Uuid>,
        expires: Query<i64>,
        kid: Query<String>,
        sig: Query<String>,
        #[oai(name = "Range")] range: Header<Option<String>>,
        #[oai(name = "If-None-Match")] if_none_match: Header<Option<String>>,
        #[oai(name = "If-Range")] if_range: Header<Option<String>>,
    ) -> Result<HeadResponse, LinkErrors<false>> {
        let record = self.check(id.0, expires.0, kid.0, sig.0).await?;
        let files = DownloadApi { state: self.state.clone() };
        let answer = files.respond(req, record, range.0, if_none_match.0, if_range.0, false).await?;
        Ok(HeadResponse(answer))
    }
}

impl LinkApi {
    /// The export a link is for, once its signature (403), its expiry (410) and the export's
    /// file (404) are checked, in that order: nothing about the export is told to an altered link.
    async fn check(&self, id: Uuid, expires: i64, kid: String, sig: String) -> Result<ExportRecord, Error> {
        if !self.state.links.keys.verify(id, expires, &Signature { kid, sig }) {
            return Err(Error::Forbidden(
                "sig: this link's signature does not match it (altered, or signed with a secret no longer in use)"
                    .into(),
            ));
        }
        if expires <= Utc::now().timestamp() {
            let at = DateTime::from_timestamp(expires, 0).map_or_else(|| expires.to_string(), |t| t.to_rfc3339());
            return Err(Error::LinkExpired(format!(
                "expires: this link expired at {at}; the export's status gives a new one"
            )));
        }
        let record = crate::with_conn!(self.state.pool, self.state.request_timeout, "reading the export", |c| {
            crate::db::exports::find_export(c, id)
        })
        .await?;
        // Deleted, expired (its file removed) or purged: for the link's holder, simply gone.
        record.filter(|r| r.status == ExportStatus::Completed).ok_or(Error::NotFound(id))
    }
}
