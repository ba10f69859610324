//! `GET /api/datasets`: what can be exported, with columns, types and what may be filtered.

use std::sync::Arc;

use poem_openapi::{ApiResponse, Object, OpenApi, payload::Json};

use crate::api::{
    ApiTags, AppState,
    auth::Caller,
    error::{Fails, declare::*},
};

/// Dataset listing.
pub struct DatasetsApi {
    /// Shared state: datasets, pool.
    pub state: Arc<AppState>,
}

/// One exportable column.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ColumnView {
    /// Name to pass in `columns`, `headers` and `filters` of `POST /api/export`.
    pub name: String,
    /// SQL type, as the database catalog states it (e.g. `numeric(12,2)`).
    #[oai(rename = "type")]
    pub sql_type: String,
    /// Whether `filters` may name this column.
    pub filterable: bool,
}

/// One dataset.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct DatasetView {
    /// The name to pass as `dataset`.
    pub name: String,
    /// What the dataset holds, from the datasets config (null when it says nothing).
    #[oai(nullable)]
    pub description: Option<String>,
    /// Keyset column: exports walk the dataset in its order; `upperBoundId` refers to it.
    pub key: String,
    /// Exported when a request names no dataset.
    pub default: bool,
    /// Exportable columns, in the default file order.
    pub columns: Vec<ColumnView>,
}

/// `GET /api/datasets`.
#[derive(Debug, ApiResponse)]
pub enum DatasetsResponse {
    /// Every dataset the key may export, in config order.
    #[oai(status = 200)]
    Ok(Json<Vec<DatasetView>>),
}

#[OpenApi(tag = "ApiTags::Datasets")]
impl DatasetsApi {
    /// List datasets
    ///
    /// The datasets this service exports (from its datasets config) that the caller's key may
    /// export, with their columns and types.
    #[oai(path = "/api/datasets", method = "get", operation_id = "listDatasets")]
    async fn list(&self, caller: Caller) -> Result<DatasetsResponse, Fails<{ UNAUTHORIZED | UNAVAILABLE }>> {
        let datasets = &self.state.datasets;
        Ok(DatasetsResponse::Ok(Json(
            datasets
                .all()
                .iter()
                .filter(|d| caller.may_export(&d.name))
                .map(|d| DatasetView {
                    name: d.name.clone(),
                    description: d.description.clone(),
                    key: d.key.clone(),
                    default: d.name == datasets.default_name(),
                    columns: d
                        .columns
                        .iter()
                        .map(|c| ColumnView {
                            name: c.name.clone(),
                            sql_type: c.sql_type.clone(),
                            filterable: c.filterable,
                        })
                        .collect(),
                })
                .collect(),
        )))
    }
}
