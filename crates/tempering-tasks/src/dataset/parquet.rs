//! Parquet rows as JSON maps, through the `parquet` crate's record reader (no Arrow): enough for HF
//! datasets' string, list, boolean, number and struct columns. Knows nothing of the typed views.

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Map, Number, Value};

use super::Row;
use crate::error::{Result, TaskError};

fn parquet_error(path: &Path, e: parquet::errors::ParquetError) -> TaskError {
    let msg = e.to_string();
    // A codec left out of the build reads as a generic error; say which feature brings it in.
    let hint = if msg.contains("Disabled feature") {
        " (this build reads uncompressed and Snappy Parquet; Zstandard needs feature `parquet-zstd` of \
         tempering-tasks; or re-save the file with Snappy)"
    } else {
        ""
    };
    TaskError::format(path, format!("Parquet: {msg}{hint}"))
}

thread_local! {
    /// Set while this thread runs [`catch_quietly`]: its panics become errors, not messages.
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, catching a panic without the panic hook's message on stderr (the panic becomes an
/// error naming the file; "thread 'main' panicked" above it would read as a crash). The hook stays
/// as it was for every other panic, on this thread and on others.
fn catch_quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CATCHING.with(|c| c.get()) {
                previous(info);
            }
        }));
    });
    let was = CATCHING.with(|c| c.replace(true));
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    out
}

/// Every row with its 1-based row number.
pub(super) fn read_numbered(path: &Path) -> Result<Vec<(usize, Row)>> {
    let file = std::fs::File::open(path).map_err(|e| TaskError::io(path, e))?;
    let len = file.metadata().map_err(|e| TaskError::io(path, e))?.len();
    let reader = SerializedFileReader::new(file).map_err(|e| parquet_error(path, e))?;
    check_column_ranges(path, reader.metadata(), len)?;
    // The record reader asserts on corrupt pages (definition levels past the schema's, found by
    // fuzzing: fixtures/bad/datasets/bad-definition-level.parquet) instead of returning an
    // error; such a panic is turned into an error naming the file.
    let read = || -> Result<Vec<(usize, Row)>> {
        let iter = reader
            .get_row_iter(None)
            .map_err(|e| parquet_error(path, e))?;
        let mut rows = Vec::new();
        for (i, row) in iter.enumerate() {
            let row = row.map_err(|e| parquet_error(path, e))?;
            let map: Row = row
                .get_column_iter()
                .map(|(name, field)| (name.clone(), to_json(field)))
                .collect();
            rows.push((i + 1, map));
        }
        Ok(rows)
    };
    let rows = catch_quietly(read).map_err(|p| {
        let why = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        TaskError::format(path, format!("Parquet: corrupt file ({why})"))
    })??;
    if rows.is_empty() {
        return Err(TaskError::EmptyDataset {
            path: path.to_path_buf(),
        });
    }
    Ok(rows)
}

/// Every column chunk's bytes must lie inside the file: the `parquet` crate asserts (panics) on a
/// negative offset or size read from a corrupt footer (found by fuzzing; the input is
/// fixtures/bad/datasets/negative-column-start.parquet).
fn check_column_ranges(
    path: &Path,
    meta: &parquet::file::metadata::ParquetMetaData,
    file_len: u64,
) -> Result<()> {
    for (g, group) in meta.row_groups().iter().enumerate() {
        for col in group.columns() {
            let start = col
                .dictionary_page_offset()
                .unwrap_or_else(|| col.data_page_offset());
            let size = col.compressed_size();
            let end = u64::try_from(start)
                .ok()
                .zip(u64::try_from(size).ok())
                .and_then(|(s, n)| s.checked_add(n));
            if end.is_none_or(|e| e > file_len) {
                return Err(TaskError::format(
                    path,
                    format!(
                        "Parquet: row group {g}, column `{}`: its data (offset {start}, {size} \
                         bytes) lies outside the file ({file_len} bytes)",
                        col.column_path()
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn float(x: f64) -> Value {
    Number::from_f64(x)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn to_json(field: &Field) -> Value {
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(x) => Value::from(*x),
        Field::Short(x) => Value::from(*x),
        Field::Int(x) => Value::from(*x),
        Field::Long(x) => Value::from(*x),
        Field::UByte(x) => Value::from(*x),
        Field::UShort(x) => Value::from(*x),
        Field::UInt(x) => Value::from(*x),
        Field::ULong(x) => Value::from(*x),
        Field::Float16(x) => float(f64::from(f32::from(*x))),
        Field::Float(x) => float(f64::from(*x)),
        Field::Double(x) => float(*x),
        Field::Str(s) => Value::String(s.clone()),
        // Binary columns without a string annotation: text if it is UTF-8, else not text at all.
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::Null,
        },
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(to_json).collect()),
        Field::Group(row) => Value::Object(
            row.get_column_iter()
                .map(|(name, f)| (name.clone(), to_json(f)))
                .collect::<Map<String, Value>>(),
        ),
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match to_json(k) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        // Dates, times, timestamps and decimals: no view reads them; keep their text.
        other => Value::String(other.to_string()),
    }
}
