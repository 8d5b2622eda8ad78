//! Tables in pg_autoctl's style: right-aligned cells, ` | ` between columns.

/// Every cell is shown with its control characters escaped (`\n`, `\u{1b}`): a cell may
/// quote what a client sent (an event's text), and must not draw on the terminal.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| -> String {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:>w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let mut out = line(headers.iter().map(|s| s.to_string()).collect());
    out.push('\n');
    out.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-"),
    );
    out.push('\n');
    for row in &rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

/// `s` with control characters escaped.
pub fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn aligns_columns() {
        let t = super::render(
            &["Name", "Node"],
            &[
                vec!["node_a".into(), "1".into()],
                vec!["b".into(), "12".into()],
            ],
        );
        assert_eq!(
            t,
            "  Name | Node\n-------+-----\nnode_a |    1\n     b |   12\n"
        );
    }

    /// A cell that quotes a client cannot move the cursor, colour the terminal or
    /// start a line of its own.
    #[test]
    fn control_characters_are_escaped() {
        let t = super::render(&["Comment"], &[vec!["a\nb\x1b[31mred\r".into()]]);
        assert_eq!(t.lines().count(), 3, "{t}");
        assert!(!t.contains('\x1b') && !t.contains('\r'), "{t:?}");
        assert!(t.contains("a\\nb\\u{1b}[31mred\\r"), "{t}");
    }
}
