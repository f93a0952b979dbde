//! Load accounts and how they are split between workers.
//!
//! Owns the user pool (`prefix{N}@domain` with one shared password, or a CSV file of
//! `jid,password` lines) and the deterministic worker partition. It must not touch the
//! network: provisioning lives in `provision`, logins in `client`.
//!
//! Partition rule: every scenario divides its users into *units* (a user, a chat pair, a
//! presence group) numbered from 0, and worker `i` of `n` owns unit `u` when `u mod n = i`.
//! Arrivals are mapped to units the same way in every worker (the schedule is generated
//! identically from the seed and filtered), so the union of the workers' load is exactly
//! the load one process would generate.

use std::path::Path;

/// One account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Bare JID `local@domain`.
    pub jid: String,
    pub password: String,
}

impl Account {
    /// The part before `@` (the SASL authentication identity).
    pub fn local(&self) -> &str {
        self.jid.split_once('@').map_or(self.jid.as_str(), |(l, _)| l)
    }

    pub fn domain(&self) -> &str {
        self.jid.split_once('@').map_or("", |(_, d)| d)
    }
}

/// Errors reading a user list.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path} line {line}: expected `jid,password` with a `local@domain` JID, got {text:?}")]
    BadLine { path: String, line: usize, text: String },
    #[error("{path} contains no accounts")]
    Empty { path: String },
}

/// The accounts a scenario may use, indexed from 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserPool {
    /// `{prefix}{first + i}@{domain}`, all with `password`.
    Pattern { prefix: String, first: u64, count: u64, domain: String, password: String },
    /// Accounts listed in a file.
    List(Vec<Account>),
}

impl UserPool {
    pub fn len(&self) -> u64 {
        match self {
            UserPool::Pattern { count, .. } => *count,
            UserPool::List(v) => v.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Account `i` (0-based); `None` past the end.
    pub fn get(&self, i: u64) -> Option<Account> {
        match self {
            UserPool::Pattern { prefix, first, count, domain, password } => (i < *count)
                .then(|| Account { jid: format!("{prefix}{}@{domain}", first + i), password: password.clone() }),
            UserPool::List(v) => usize::try_from(i).ok().and_then(|i| v.get(i)).cloned(),
        }
    }

    /// Reads `jid,password` lines. Empty lines and lines starting with `#` are skipped, as
    /// is a first line `jid,password`. The password is everything after the first comma.
    pub fn from_csv(path: &Path) -> Result<UserPool, UsersError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| UsersError::Read { path: p.clone(), error })?;
        let pool = Self::parse_csv(&text, &p)?;
        if pool.is_empty() {
            return Err(UsersError::Empty { path: p });
        }
        Ok(pool)
    }

    pub fn parse_csv(text: &str, path: &str) -> Result<UserPool, UsersError> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let l = line.trim_end_matches('\r');
            if l.trim().is_empty() || l.starts_with('#') || (n == 0 && l.trim() == "jid,password") {
                continue;
            }
            let bad = || UsersError::BadLine { path: path.to_owned(), line: n + 1, text: l.to_owned() };
            let (jid, password) = l.split_once(',').ok_or_else(bad)?;
            let jid = jid.trim();
            match jid.split_once('@') {
                Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !jid.contains('/') => {}
                _ => return Err(bad()),
            }
            out.push(Account { jid: jid.to_owned(), password: password.to_owned() });
        }
        Ok(UserPool::List(out))
    }
}

/// Which share of the load this process generates: worker `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Partition {
    pub index: u32,
    pub count: u32,
}

impl Partition {
    /// The whole load in one process.
    pub const ALL: Partition = Partition { index: 0, count: 1 };

    /// Parses `I/N`, e.g. `2/4` for the third of four workers.
    pub fn parse(s: &str) -> Result<Partition, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("expected INDEX/COUNT such as 2/4, got {s:?}"))?;
        let index: u32 = i.trim().parse().map_err(|_| format!("worker index {i:?} is not a number"))?;
        let count: u32 = n.trim().parse().map_err(|_| format!("worker count {n:?} is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("worker index must be 0..{count} (0-based), got {index}/{count}"));
        }
        Ok(Partition { index, count })
    }

    /// Whether unit `u` belongs to this worker.
    pub fn owns(&self, unit: u64) -> bool {
        unit % u64::from(self.count.max(1)) == u64::from(self.index)
    }

    /// The units in `0..total` this worker owns.
    pub fn units(&self, total: u64) -> impl Iterator<Item = u64> + '_ {
        let step = u64::from(self.count.max(1));
        (u64::from(self.index)..total).step_by(step as usize)
    }
}

impl std::fmt::Display for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pattern_pool() {
        let p = UserPool::Pattern {
            prefix: "load".into(),
            first: 1,
            count: 3,
            domain: "example.org".into(),
            password: "pw".into(),
        };
        assert_eq!(p.len(), 3);
        let a = p.get(0).unwrap();
        assert_eq!((a.jid.as_str(), a.local(), a.domain()), ("load1@example.org", "load1", "example.org"));
        assert_eq!(p.get(2).unwrap().jid, "load3@example.org");
        assert_eq!(p.get(3), None);
    }

    #[test]
    fn csv_pool() {
        let p = UserPool::parse_csv("jid,password\n# comment\nalice@x,pw,with,commas\r\n\nbob@x,b\n", "u.csv").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p.get(0).unwrap().password, "pw,with,commas");
        assert_eq!(p.get(1).unwrap().jid, "bob@x");
        let e = UserPool::parse_csv("alice@x,pw\nnot-a-jid,pw\n", "u.csv").unwrap_err().to_string();
        assert!(e.contains("u.csv line 2"), "{e}");
        assert!(UserPool::parse_csv("alice@x\n", "u.csv").is_err(), "no password column");
        assert!(UserPool::parse_csv("alice@x/res,pw\n", "u.csv").is_err(), "full JID");
    }

    #[test]
    fn partition_parse() {
        assert_eq!(Partition::parse("2/4"), Ok(Partition { index: 2, count: 4 }));
        assert!(Partition::parse("4/4").is_err());
        assert!(Partition::parse("1/0").is_err());
        assert!(Partition::parse("x/2").is_err());
        assert!(Partition::parse("2").is_err());
    }

    #[test]
    fn partition_units_cover_everything_once() {
        for n in 1..=7u32 {
            for total in [0u64, 1, 5, 13, 100] {
                let mut seen = vec![0u32; total as usize];
                for i in 0..n {
                    let p = Partition { index: i, count: n };
                    for u in p.units(total) {
                        assert!(p.owns(u));
                        seen[u as usize] += 1;
                    }
                }
                assert!(seen.iter().all(|c| *c == 1), "n={n} total={total}: {seen:?}");
            }
        }
    }
}
