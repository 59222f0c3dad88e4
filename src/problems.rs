//! Config problems: where (`[section] key`) and what is wrong. A leaf module: every stage's
//! config struct reports into `Problems`, and `config` composes them, so this type lives below
//! all of them.

/// One validation problem: where, and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// `[section] key` path, e.g. `[sink.http] port`.
    pub key: String,
    pub msg: String,
}

/// Collects problems during validation.
#[derive(Debug, Default)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    pub fn push(&mut self, section: &str, key: &str, msg: impl Into<String>) {
        self.0.push(Problem { key: format!("[{section}] {key}"), msg: msg.into() });
    }
    /// Check `cond`, else record `msg`.
    pub fn check(&mut self, cond: bool, section: &str, key: &str, msg: impl FnOnce() -> String) {
        if !cond {
            self.push(section, key, msg());
        }
    }
}
