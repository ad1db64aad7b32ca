//! Prometheus text exposition (format 0.0.4): the `/metrics` body of the agent and chat-node.
//!
//! Each family is written once with its `# HELP` and `# TYPE` lines and then its samples, so a
//! family's samples stay together as the format requires; label values are escaped here, not by
//! callers.

use std::fmt::{Display, Write as _};

/// The `content-type` of an exposition body.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
            Kind::Histogram => "histogram",
        }
    }
}

/// An exposition body being written, family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// A family of one unlabelled sample.
    pub fn metric(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) -> &mut Self {
        self.family(name, kind, help);
        self.sample(name, &[], value)
    }

    /// Starts a family: its HELP (newlines and backslashes escaped) and TYPE lines. Its samples
    /// follow with [`Exposition::sample`].
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.as_str()
        );
        self
    }

    /// One sample of the current family; `name` may carry a suffix (`_bucket`, `_sum`).
    pub fn sample(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: impl Display,
    ) -> &mut Self {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
        self
    }

    /// The body.
    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_have_help_type_and_escaped_samples() {
        let mut e = Exposition::new();
        e.metric("up", Kind::Gauge, "1 when up.\nSecond line", 1);
        e.family("kicks_total", Kind::Counter, "Kicks.")
            .sample("kicks_total", &[("reason", "slow")], 2)
            .sample("kicks_total", &[("reason", "a\"b\\c")], 3);
        assert_eq!(
            e.finish(),
            "# HELP up 1 when up.\\nSecond line\n# TYPE up gauge\nup 1\n\
             # HELP kicks_total Kicks.\n# TYPE kicks_total counter\n\
             kicks_total{reason=\"slow\"} 2\nkicks_total{reason=\"a\\\"b\\\\c\"} 3\n"
        );
    }
}
