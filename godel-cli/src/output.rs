//! Printing: aligned tables and colours for people (colours only on a
//! terminal, and never with NO_COLOR), JSON for scripts.

use std::io::IsTerminal;

use godel_sdk::embed::TaskStatus;

/// Prints a line to stdout. A closed pipe (`godel list | head`) is not an
/// error worth a panic: the output is simply dropped.
pub(crate) fn out(text: &str) {
    out_raw(&format!("{}\n", text.trim_end_matches('\n')));
}

/// Prints without adding a newline (streamed task output).
pub(crate) fn out_raw(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

pub(crate) fn err(text: &str) {
    err_raw(&format!("{}\n", text.trim_end_matches('\n')));
}

pub(crate) fn err_raw(text: &str) {
    use std::io::Write;
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
    let _ = stderr.flush();
}

pub(crate) fn json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => out(&text),
        Err(e) => err(&format!("godel: cannot encode JSON: {e}")),
    }
}

/// Whether stdout gets colours.
pub(crate) fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Paints `text` with an ANSI colour when stdout is a terminal.
pub(crate) fn paint(text: &str, code: &str) -> String {
    if colour() { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_owned() }
}

pub(crate) fn status(status: TaskStatus) -> String {
    let code = match status {
        TaskStatus::Completed => "32",
        TaskStatus::Failed | TaskStatus::DeadLetter => "31",
        TaskStatus::Running | TaskStatus::Assigned => "33",
        TaskStatus::Cancelled => "35",
        TaskStatus::Pending => "2",
    };
    paint(status.as_str(), code)
}

/// An aligned table. Cells may hold colour codes; widths ignore them.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let visible = |s: &str| strip_ansi(s).chars().count();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(visible(cell));
        }
    }
    let mut text = String::new();
    let line = |cells: Vec<String>, text: &mut String| {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            text.push_str(cell);
            if i < last {
                text.push_str(&" ".repeat(widths[i] - visible(cell) + 2));
            }
        }
        text.push('\n');
    };
    line(headers.iter().map(|h| paint(h, "1")).collect(), &mut text);
    for row in rows {
        line(row.clone(), &mut text);
    }
    text
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Shortens `text` to `max` characters on one line.
pub(crate) fn clip(text: &str, max: usize) -> String {
    let one_line = text.replace(['\n', '\r', '\t'], " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_clip() {
        let t = table(&["ID", "STATUS"], &[vec!["a".into(), "pending".into()], vec!["long-id".into(), "x".into()]]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(strip_ansi(lines[1]).find("pending"), strip_ansi(lines[0]).find("STATUS"));
        assert_eq!(clip("hello\nworld", 8), "hello w…");
        assert_eq!(strip_ansi("\x1b[32mok\x1b[0m"), "ok");
    }
}
