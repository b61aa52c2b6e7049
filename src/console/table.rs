//! A result set the console sends: typed columns, text values, written as
//! RowDescription, DataRows and CommandComplete.

use bytes::BytesMut;

use crate::protocol::backend as be;

/// A column's type as the client is told it (values are sent as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// `text`.
    Text,
    /// `int8`.
    Int,
    /// `float8`.
    Float,
}

impl Column {
    fn oid(self) -> u32 {
        match self {
            Column::Text => 25,
            Column::Int => 20,
            Column::Float => 701,
        }
    }
}

/// Rows under named columns.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Names and types.
    pub columns: Vec<(&'static str, Column)>,
    /// Values, `None` for NULL.
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    /// An empty table of `columns`.
    pub fn new(columns: &[(&'static str, Column)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many values as columns).
    pub fn row(&mut self, values: Vec<Option<String>>) {
        debug_assert_eq!(values.len(), self.columns.len());
        self.rows.push(values);
    }

    /// Writes it, ending with CommandComplete `tag`.
    pub fn write(&self, out: &mut BytesMut, tag: &str) {
        let columns: Vec<(&str, u32)> = self.columns.iter().map(|(n, c)| (*n, c.oid())).collect();
        be::row_description(out, &columns);
        for row in &self.rows {
            be::data_row(out, row);
        }
        be::command_complete(out, tag);
    }

    /// The values of column `name`, for tests and callers.
    pub fn column(&self, name: &str) -> Vec<Option<&str>> {
        let Some(i) = self.columns.iter().position(|(n, _)| *n == name) else {
            return Vec::new();
        };
        self.rows.iter().map(|r| r[i].as_deref()).collect()
    }
}
