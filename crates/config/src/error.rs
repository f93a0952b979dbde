//! Configuration errors. Each message names the key (or environment variable) at fault and
//! what to write instead, because the reader is an operator looking at a failed start.

use std::fmt;
use std::path::PathBuf;

/// Why a configuration was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error(
        "cannot read config file {}: {source}; check the path passed with --config or ROOKERY_CONFIG",
        .path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// An error inside a config file; wraps the error with the file name.
    #[error("{}: {source}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong in it.
        #[source]
        source: Box<ConfigError>,
    },

    /// The document is not valid TOML.
    #[error("invalid TOML syntax: {message}")]
    Syntax {
        /// The parser's message, with line and column.
        message: String,
    },

    /// A key that is not part of the schema.
    #[error(
        "unknown key `{key}`{}valid keys{}: {}",
        did_you_mean(.suggestion),
        section_suffix(.key),
        .valid.join(", ")
    )]
    UnknownKey {
        /// Full dotted path of the unknown key, e.g. `limits.max_stanza_byte`.
        key: String,
        /// The closest valid key, if one is close.
        suggestion: Option<String>,
        /// The keys valid at that place.
        valid: Vec<&'static str>,
    },

    /// A value of the wrong type, or one that does not parse (e.g. a bad socket address).
    #[error("`{key}` = {found} is not valid: expected {expected}; for example `{example}`")]
    BadValue {
        /// Full dotted key path.
        key: String,
        /// What was written, as TOML-ish text (`string "abc"`, `integer -1`).
        found: String,
        /// What the key takes.
        expected: String,
        /// A valid line for this key.
        example: String,
    },

    /// A `ROOKERY_*` variable that maps to no key.
    #[error(
        "unknown environment variable {var}{}valid variables: {}",
        did_you_mean(.suggestion),
        .valid.join(", ")
    )]
    UnknownEnv {
        /// The variable name.
        var: String,
        /// The closest valid variable, if one is close.
        suggestion: Option<String>,
        /// All variables this crate reads.
        valid: Vec<&'static str>,
    },

    /// A `ROOKERY_*` variable whose value does not parse.
    #[error("environment variable {var}={value:?} (sets `{key}`) is not valid: expected {expected}")]
    BadEnv {
        /// The variable name.
        var: String,
        /// Its value.
        value: String,
        /// The config key it overrides.
        key: &'static str,
        /// The accepted form.
        expected: String,
    },

    /// The TOML passed the schema walk but serde still refused it; the message is serde's.
    #[error("invalid configuration: {message}")]
    Deserialize {
        /// serde's message.
        message: String,
    },

    /// [`crate::Config::validate`] failed; every problem is listed.
    #[error("{}", InvalidList(.0))]
    Invalid(Vec<Problem>),

    /// Several errors found in one pass (file, environment and validation), in the order
    /// found, so an operator fixes them all in one round. Never nested, never holds one.
    #[error("{}", ManyList(.0))]
    Many(Vec<ConfigError>),
}

impl ConfigError {
    /// The config keys this error is about (innermost error for [`ConfigError::File`]).
    /// Useful to tests and to tools that highlight a line.
    pub fn keys(&self) -> Vec<&str> {
        match self {
            ConfigError::File { source, .. } => source.keys(),
            ConfigError::UnknownKey { key, .. } | ConfigError::BadValue { key, .. } => {
                vec![key.as_str()]
            }
            ConfigError::BadEnv { key, .. } => vec![key],
            ConfigError::Invalid(problems) => problems.iter().map(|p| p.key.as_str()).collect(),
            ConfigError::Many(errors) => errors.iter().flat_map(ConfigError::keys).collect(),
            ConfigError::Read { .. }
            | ConfigError::Syntax { .. }
            | ConfigError::UnknownEnv { .. }
            | ConfigError::Deserialize { .. } => Vec::new(),
        }
    }
}

impl ConfigError {
    /// One error for a list of them: `None` for none, the error itself for one, otherwise
    /// [`ConfigError::Many`] with nested lists flattened (several validation problems become
    /// one entry each, so every line of the message is one problem).
    pub(crate) fn from_list(mut errors: Vec<ConfigError>) -> Option<ConfigError> {
        if let [ConfigError::Invalid(_)] = errors.as_slice() {
            // Validation alone already lists all of its problems.
            return errors.pop();
        }
        let mut flat = Vec::with_capacity(errors.len());
        for e in errors {
            flatten_into(e, &mut flat);
        }
        match flat.len() {
            0 => None,
            1 => flat.pop(),
            _ => Some(ConfigError::Many(flat)),
        }
    }
}

fn flatten_into(e: ConfigError, out: &mut Vec<ConfigError>) {
    match e {
        ConfigError::Many(errors) => {
            for e in errors {
                flatten_into(e, out);
            }
        }
        ConfigError::Invalid(problems) if problems.len() > 1 => {
            out.extend(problems.into_iter().map(|p| ConfigError::Invalid(vec![p])));
        }
        ConfigError::File { path, source } => match *source {
            ConfigError::Many(errors) => {
                for e in errors {
                    flatten_into(ConfigError::File { path: path.clone(), source: Box::new(e) }, out);
                }
            }
            source => out.push(ConfigError::File { path, source: Box::new(source) }),
        },
        other => out.push(other),
    }
}

struct ManyList<'a>(&'a [ConfigError]);

impl fmt::Display for ManyList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} configuration errors:", self.0.len())?;
        for e in self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

/// One failed validation rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Full dotted key path, e.g. `limits.max_depth` or `domains`.
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}; fix: {}", self.key, self.problem, self.fix)
    }
}

struct InvalidList<'a>(&'a [Problem]);

impl fmt::Display for InvalidList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [one] => write!(f, "invalid configuration: {one}"),
            many => {
                write!(f, "invalid configuration ({} problems):", many.len())?;
                for p in many {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
        }
    }
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean `{s}`? "),
        None => "; ".to_owned(),
    }
}

fn section_suffix(key: &str) -> String {
    match key.rsplit_once('.') {
        Some((section, _)) => format!(" in [{section}]"),
        None => " at the top level".to_owned(),
    }
}
