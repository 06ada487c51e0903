//! Diagnostics for protocol and config files: a stable code, a message, labelled spans and a
//! hint, rendered with file:line:column and a source snippet. Plain values.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::ops::Range;

use miette::{GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource};

use super::code::Code;

#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Its class, which carries the general explanation; documented in README.
    pub code: Code,
    pub message: String,
    /// The first label is the primary location.
    pub labels: Vec<(Range<usize>, String)>,
    /// What to do about this occurrence, e.g. "did you mean `ping`?".
    pub help: String,
}

impl Diagnostic {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            message: message.into(),
            labels: Vec::new(),
            help: String::new(),
        }
    }

    pub fn label(mut self, span: Range<usize>, text: impl Into<String>) -> Self {
        self.labels.push((span, text.into()));
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = help.into();
        self
    }

    pub fn primary_span(&self) -> Option<&Range<usize>> {
        self.labels.first().map(|(s, _)| s)
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let mut line = 1;
    let mut line_start = 0;
    for (i, b) in src.bytes().enumerate() {
        if i >= offset {
            break;
        }
        if b == b'\n' {
            line += 1;
            line_start = i + 1;
        }
    }
    let col = src
        .get(line_start..offset)
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

#[derive(Debug)]
struct Render<'a> {
    d: &'a Diagnostic,
    src: NamedSource<String>,
}

impl std::fmt::Display for Render<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.d.message)
    }
}

impl std::error::Error for Render<'_> {}

// No `code()`: the headline above the snippet already carries it.
impl miette::Diagnostic for Render<'_> {
    fn help<'b>(&'b self) -> Option<Box<dyn std::fmt::Display + 'b>> {
        if self.d.help.is_empty() {
            None
        } else {
            Some(Box::new(&self.d.help))
        }
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.src)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let len = self.src.inner().len();
        Some(Box::new(self.d.labels.iter().map(move |(span, text)| {
            let start = span.start.min(len);
            let end = span.end.clamp(start, len);
            LabeledSpan::new(Some(text.clone()), start, end - start)
        })))
    }
}

/// Renders one file's diagnostics the way `beacon check` prints them, followed by the
/// [`legend`] of their codes.
pub fn render(file: &str, src: &str, diags: &[Diagnostic]) -> String {
    let mut out = render_problems(file, src, diags);
    out.push_str(&legend(diags));
    out
}

/// A `file:line:col: error[CODE]` headline per problem (greppable, stable) followed by an
/// annotated snippet and the problem's own hint, then a count. No colour, so snapshots and logs
/// read the same.
pub fn render_problems(file: &str, src: &str, diags: &[Diagnostic]) -> String {
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(WIDTH)
        .with_links(false);
    let mut out = String::new();
    for d in diags {
        let (line, col) = d
            .primary_span()
            .map(|s| line_col(src, s.start))
            .unwrap_or((1, 1));
        let kind = if d.code.is_warning() {
            "warning"
        } else {
            "error"
        };
        let _ = writeln!(
            out,
            "{file}:{line}:{col}: {kind}[{}]: {}",
            d.code, d.message
        );
        let r = Render {
            d,
            src: NamedSource::new(file, src.to_owned()),
        };
        let mut snippet = String::new();
        if handler.render_report(&mut snippet, &r).is_ok() {
            out.push_str(&snippet);
        }
        out.push('\n');
    }
    let n = diags.len();
    let what = if !diags.is_empty() && diags.iter().all(|d| d.code.is_warning()) {
        "warning"
    } else {
        "problem"
    };
    let _ = writeln!(
        out,
        "{file}: {n} {what}{} found",
        if n == 1 { "" } else { "s" }
    );
    out
}

/// Each code that occurs among `diags`, once, with its title and general explanation: a
/// problem found twenty times is explained once. Empty when there are no diagnostics.
pub fn legend<'a>(diags: impl IntoIterator<Item = &'a Diagnostic>) -> String {
    let codes: BTreeSet<Code> = diags.into_iter().map(|d| d.code).collect();
    let mut out = String::new();
    if codes.is_empty() {
        return out;
    }
    out.push_str("\ncodes:\n");
    for c in codes {
        let _ = writeln!(out, "  {c}  {}", c.title());
        for line in wrap(c.help(), WIDTH - LEGEND_INDENT.len()) {
            let _ = writeln!(out, "{LEGEND_INDENT}{line}");
        }
    }
    out
}

/// Columns of the whole report, snippets and legend alike, so it reads as one block.
const WIDTH: usize = 100;
/// The explanation hangs under the title, past the code.
const LEGEND_INDENT: &str = "        ";

/// Lines of at most `width` characters, broken at spaces (a longer word gets its own line).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legend_explains_each_code_once_in_code_order() {
        let src = "a = 1\nb = 2\n";
        let d = |code, at: usize| Diagnostic::new(code, "m").label(at..at + 1, "l").help("h");
        let diags = [
            d(Code::LimitOutOfRange, 0),
            d(Code::UnknownMessage, 6),
            d(Code::LimitOutOfRange, 6),
        ];
        let out = render("p.toml", src, &diags);
        assert_eq!(out.matches("error[B050]").count(), 2, "{out}");
        let legend = &out[out.find("\ncodes:\n").expect("a legend")..];
        assert_eq!(legend.matches("B050").count(), 1, "{legend}");
        assert!(legend.find("B010") < legend.find("B050"), "{legend}");
        assert!(legend.contains(Code::UnknownMessage.title()), "{legend}");
        assert!(
            legend.lines().all(|l| l.chars().count() <= WIDTH),
            "{legend}"
        );
        assert!(render("p.toml", src, &[]).ends_with("0 problems found\n"));
    }
}
