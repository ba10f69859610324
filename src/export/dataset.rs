//! What can be exported: a table, its key column and its columns, and the chunk query built from them.

/// One exportable column.
#[derive(Debug, Clone)]
pub struct Column {
    /// Column name in the table, also the CSV header.
    pub name: &'static str,
    /// SQL type, as shown to users.
    pub sql_type: &'static str,
}

/// An exportable table. Exports walk it by `key` (unique, indexed, integer) in chunks.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Name used in the API.
    pub name: &'static str,
    /// Table (or view) read.
    pub table: &'static str,
    /// Keyset column: unique, indexed, `bigint`.
    pub key: &'static str,
    /// Exported columns, in file order.
    pub columns: &'static [Column],
}

/// The demo dataset (`exportd seed` creates it) and, for now, the only one.
pub const ORDERS: Dataset = Dataset {
    name: "orders",
    table: "orders",
    key: "id",
    columns: &[
        Column { name: "id", sql_type: "bigint" },
        Column { name: "created_at", sql_type: "timestamptz" },
        Column { name: "updated_at", sql_type: "timestamptz" },
        Column { name: "customer_name", sql_type: "text" },
        Column { name: "customer_email", sql_type: "text" },
        Column { name: "country", sql_type: "char(2)" },
        Column { name: "status", sql_type: "text" },
        Column { name: "amount", sql_type: "numeric(12,2)" },
        Column { name: "currency", sql_type: "char(3)" },
        Column { name: "quantity", sql_type: "int" },
        Column { name: "note", sql_type: "text" },
        Column { name: "metadata", sql_type: "jsonb" },
    ],
};

/// Looks a dataset up by its API name.
pub fn find(name: &str) -> Option<&'static Dataset> {
    [&ORDERS].into_iter().find(|d| d.name == name)
}
