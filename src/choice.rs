//! Config choices as enums, with every bad value still reported at once.
//!
//! serde's own enum deserialisation stops the whole parse at the first unknown variant, so a
//! file with a bad `strategy` and a bad `port` would show only one problem. A `Choice<E>`
//! instead accepts any string at parse time and keeps the unknown one; `check` turns it into a
//! problem naming the key and the allowed values during validation, which rejects the config.
//! After a config is loaded every choice is known, and code matches on the enum (`*choice` or
//! `choice.get()`): no string comparison of a choice happens outside this module.
//!
//! A leaf module (below every stage's config struct).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::problems::Problems;

/// An enum that a config key chooses by name.
pub trait Named: Copy + PartialEq + fmt::Debug + Send + Sync + 'static {
    /// Every value with its config name; the first is the fallback of an unknown name (never
    /// used: a config with an unknown name fails validation).
    const NAMES: &'static [(&'static str, Self)];

    /// The config name of `self`.
    fn name(self) -> &'static str {
        Self::NAMES.iter().find(|(_, v)| *v == self).map_or("?", |(n, _)| n)
    }

    /// The value named `s`, if any.
    fn from_name(s: &str) -> Option<Self> {
        Self::NAMES.iter().find(|(n, _)| *n == s).map(|(_, v)| *v)
    }

    /// `"a", "b" or "c"`, for messages.
    fn expected() -> String {
        let names: Vec<String> = Self::NAMES.iter().map(|(n, _)| format!("{n:?}")).collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.join(""),
        }
    }
}

/// Defines a `Named` enum: `choice_enum! { /// doc  pub enum Device { Cpu = "cpu", ... } }`.
#[macro_export]
macro_rules! choice_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vm])* $var),+ }
        impl $crate::choice::Named for $name {
            const NAMES: &'static [(&'static str, Self)] = &[$(($s, $name::$var)),+];
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::choice::Named::name(*self))
            }
        }
    };
}

/// A config value that must be one of `E`'s names (see the module doc).
#[derive(Clone, PartialEq)]
pub struct Choice<E: Named> {
    value: E,
    /// The name as written, when it is not one of `E`'s.
    unknown: Option<String>,
}

impl<E: Named> Choice<E> {
    /// The chosen value.
    pub fn get(&self) -> E {
        self.value
    }

    /// Report an unknown name as a problem at `[section] key`.
    pub fn check(&self, p: &mut Problems, section: &str, key: &str) {
        if let Some(s) = &self.unknown {
            p.push(section, key, format!("{s:?} is not {}", E::expected()));
        }
    }
}

impl<E: Named> From<E> for Choice<E> {
    fn from(value: E) -> Self {
        Choice { value, unknown: None }
    }
}

/// A name, as a config file would give it (an unknown one fails validation, as in a file).
impl<E: Named> From<&str> for Choice<E> {
    fn from(s: &str) -> Self {
        match E::from_name(s) {
            Some(value) => Choice { value, unknown: None },
            None => Choice { value: E::NAMES[0].1, unknown: Some(s.to_string()) },
        }
    }
}

impl<E: Named> std::ops::Deref for Choice<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.value
    }
}

impl<E: Named> fmt::Debug for Choice<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.unknown {
            Some(s) => write!(f, "{s:?} (unknown)"),
            None => write!(f, "{:?}", self.value),
        }
    }
}

impl<E: Named> fmt::Display for Choice<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.unknown {
            Some(s) => f.write_str(s),
            None => f.write_str(self.value.name()),
        }
    }
}

impl<'de, E: Named> Deserialize<'de> for Choice<E> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Choice::from(String::deserialize(d)?.as_str()))
    }
}

impl<E: Named> Serialize for Choice<E> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

choice_enum! {
    /// Where a part runs: `[model] device`, `[reduce] device`.
    pub enum Device { Cpu = "cpu", Cuda = "cuda", CudaOrCpu = "cuda-or-cpu" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        d: Choice<Device>,
    }

    #[test]
    fn known_names_parse_and_unknown_ones_become_one_problem() {
        let t: T = toml::from_str("d = \"cuda-or-cpu\"").unwrap();
        assert_eq!(t.d.get(), Device::CudaOrCpu);
        assert_eq!(t.d.to_string(), "cuda-or-cpu");
        let mut p = Problems::default();
        t.d.check(&mut p, "model", "device");
        assert!(p.0.is_empty());
        let t: T = toml::from_str("d = \"tpu\"").unwrap();
        t.d.check(&mut p, "model", "device");
        assert_eq!(p.0.len(), 1);
        assert_eq!(p.0[0].key, "[model] device");
        assert_eq!(p.0[0].msg, "\"tpu\" is not \"cpu\", \"cuda\" or \"cuda-or-cpu\"");
    }

    #[test]
    fn names_round_trip() {
        for &(n, v) in Device::NAMES {
            assert_eq!(Device::from_name(n), Some(v));
            assert_eq!(v.name(), n);
        }
    }
}
