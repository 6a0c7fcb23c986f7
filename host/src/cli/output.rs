//! How client commands print the server's answers: for people, key-value lines and aligned
//! tables; with `--json`, the answer itself, for scripts.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Map, Value};

static JSON: AtomicBool = AtomicBool::new(false);

/// Print answers as JSON instead of tables.
pub fn use_json(json: bool) {
    JSON.store(json, Ordering::Relaxed);
}

pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Widest a table cell gets before it is cut.
const CELL_WIDTH: usize = 60;

/// Prints an answer: as JSON with `--json`, otherwise for people.
pub fn print(value: &Value) {
    if json() {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
    } else {
        print!("{}", human(value));
    }
}

/// An answer for people: an object as `key: value` lines (nested ones indented), arrays of
/// objects as tables, anything else as pretty JSON.
pub fn human(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(fields) => push_object(&mut out, fields, 0),
        Value::Array(items) if items.iter().all(Value::is_object) => push_table(&mut out, items, 0),
        other => {
            out.push_str(&serde_json::to_string_pretty(other).unwrap_or_default());
            out.push('\n');
        }
    }
    out
}

fn push_object(out: &mut String, fields: &Map<String, Value>, indent: usize) {
    let pad = " ".repeat(indent);
    for (key, value) in fields {
        match value {
            Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
                let _ = writeln!(out, "{pad}{key}:");
                push_table(out, items, indent + 2);
            }
            Value::Array(items) if items.is_empty() => {
                let _ = writeln!(out, "{pad}{key}: (none)");
            }
            Value::Object(inner) if !inner.is_empty() => {
                let _ = writeln!(out, "{pad}{key}:");
                push_object(out, inner, indent + 2);
            }
            other => {
                let _ = writeln!(out, "{pad}{key}: {}", scalar(other, usize::MAX));
            }
        }
    }
}

/// A table of objects: one column per field, in order of first appearance.
pub fn push_table(out: &mut String, rows: &[Value], indent: usize) {
    let mut columns: Vec<&str> = Vec::new();
    for row in rows {
        if let Value::Object(fields) = row {
            for key in fields.keys() {
                if !columns.contains(&key.as_str()) {
                    columns.push(key);
                }
            }
        }
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .map(|c| {
                    row.get(*c)
                        .map_or("-".to_owned(), |v| scalar(v, CELL_WIDTH))
                })
                .collect()
        })
        .collect();
    let headers: Vec<String> = columns.iter().map(|c| c.to_uppercase()).collect();
    table(out, &headers, &cells, indent);
}

/// Aligned columns under upper-case headers.
pub fn table(out: &mut String, headers: &[String], rows: &[Vec<String>], indent: usize) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let pad = " ".repeat(indent);
    let line = |out: &mut String, cells: &[String]| {
        let mut text = pad.clone();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(out, headers);
    for row in rows {
        line(out, row);
    }
}

/// One value in one line, cut to `width` characters.
pub fn scalar(value: &Value, width: usize) -> String {
    let text = match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    cut(text.replace('\n', " "), width)
}

fn cut(text: String, width: usize) -> String {
    if text.chars().count() <= width {
        return text;
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Events as a table: position, stream, revision, type, time and data.
pub fn events(events: &[Value]) -> String {
    let headers: Vec<String> = [
        "POSITION",
        "STREAM",
        "REVISION",
        "TYPE",
        "RECORDED_AT",
        "DATA",
    ]
    .map(String::from)
    .to_vec();
    let rows: Vec<Vec<String>> = events.iter().map(event_cells).collect();
    let mut out = String::new();
    table(&mut out, &headers, &rows, 0);
    out
}

fn event_cells(event: &Value) -> Vec<String> {
    vec![
        scalar(&event["position"], 20),
        scalar(&event["stream"], 40),
        scalar(&event["revision"], 20),
        scalar(&event["type"], 30),
        scalar(&event["recorded_at"], 32),
        scalar(&event["data"], CELL_WIDTH),
    ]
}

/// One event in one line (for `refold tail`).
pub fn event_line(event: &Value) -> String {
    event_cells(event).join("  ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn arrays_of_objects_become_aligned_tables() {
        let text = human(&json!({
            "projections": [
                {"name": "bank-account", "status": "running", "lag": 0},
                {"name": "orders", "status": "faulted", "lag": 12, "error": "boom"},
            ]
        }));
        assert_eq!(
            text,
            "projections:\n  NAME          STATUS   LAG  ERROR\n  bank-account  running  0    -\n  orders        faulted  12   boom\n"
        );
    }

    #[test]
    fn nested_objects_are_indented_and_long_cells_cut() {
        let long = "x".repeat(100);
        let text =
            human(&json!({"name": "m", "fault": {"message": "bad"}, "items": [{"v": long}]}));
        assert!(text.starts_with("name: m\nfault:\n  message: bad\nitems:\n  V\n  xxx"));
        assert!(text.trim_end().ends_with('…'));
        assert_eq!(text.lines().last().unwrap().chars().count(), 2 + CELL_WIDTH);
    }
}
