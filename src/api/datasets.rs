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
    /// The key: exports walk the dataset in its order; an export's `upperBoundKey` and
    /// `lastProcessedKey` are values of it. Its column's name, or its columns' names joined by
    /// ", " (a composite key, compared as a row).
    pub key: String,
    /// The key's columns, in order.
    pub key_columns: Vec<String>,
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
                    key: d.key_names(),
                    key_columns: d.key.iter().map(|k| k.name.clone()).collect(),
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
