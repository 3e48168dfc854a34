//! Dynamic SQL for admin queries: the text holds only fixed column names and numbered
//! placeholders (`$1`, `$2`, ...); every value is a bound argument, never part of the text.

use sqlx::Any;
use sqlx::any::AnyArguments;
use sqlx::query::Query;

/// A bound value.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    /// Text (or NULL).
    Text(Option<String>),
    /// An integer (or NULL).
    Int(Option<i64>),
}

/// A statement under construction.
#[derive(Debug, Default)]
pub(crate) struct Sql {
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    /// Starts a statement with fixed text.
    pub(crate) fn new(text: &str) -> Self {
        Self {
            text: text.to_string(),
            args: Vec::new(),
        }
    }

    /// Appends fixed text (never a value).
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder bound to `arg`.
    pub(crate) fn arg(&mut self, arg: Arg) -> &mut Self {
        self.args.push(arg);
        self.text.push('$');
        self.text.push_str(&self.args.len().to_string());
        self
    }

    /// Appends a text placeholder.
    pub(crate) fn text(&mut self, value: impl Into<String>) -> &mut Self {
        self.arg(Arg::Text(Some(value.into())))
    }

    /// Appends an integer placeholder.
    pub(crate) fn int(&mut self, value: i64) -> &mut Self {
        self.arg(Arg::Int(Some(value)))
    }

    /// The statement with its arguments bound.
    pub(crate) fn query(self) -> Query<'static, Any, AnyArguments> {
        let mut query = sqlx::query(sqlx::AssertSqlSafe(self.text)).persistent(false);
        for arg in self.args {
            query = match arg {
                Arg::Text(v) => query.bind(v),
                Arg::Int(v) => query.bind(v),
            };
        }
        query
    }

    /// The text, for tests.
    #[cfg(test)]
    pub(crate) fn sql(&self) -> &str {
        &self.text
    }
}

/// A `LIKE` pattern matching `needle` anywhere, with `%`, `_` and `\` escaped (use with
/// `ESCAPE '\'`).
pub(crate) fn contains_pattern(needle: &str) -> String {
    let mut out = String::with_capacity(needle.len() + 2);
    out.push('%');
    for c in needle.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_become_numbered_placeholders_and_like_patterns_are_escaped() {
        let mut sql = Sql::new("SELECT 1 FROM t WHERE a = ");
        sql.text("x'; DROP TABLE t; --").push(" AND b = ").int(3);
        assert_eq!(sql.sql(), "SELECT 1 FROM t WHERE a = $1 AND b = $2");
        assert_eq!(contains_pattern("50%_A\\"), "%50\\%\\_a\\\\%");
    }
}
