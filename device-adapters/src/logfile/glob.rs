//! File-name patterns: `*`, `?` and `[...]` sets, matched against one file name (never a
//! path: `/` is refused in the pattern).
//!
//! Matching is the classic iterative wildcard algorithm that remembers only the last `*`:
//! at most O(pattern × name) steps, no recursion, so a hostile file name cannot make it
//! blow up.

/// One element of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyOne,
    AnyRun,
    Set {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A compiled file-name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
}

impl Glob {
    /// Compiles `pattern`.
    ///
    /// # Errors
    /// Why the pattern is refused (empty, contains `/` or NUL, unclosed `[`).
    pub fn new(pattern: &str) -> Result<Self, String> {
        if pattern.is_empty() {
            return Err("must not be empty".into());
        }
        if pattern.contains('/') || pattern.contains('\0') {
            return Err(format!(
                "{pattern:?} must match file names, not paths (no '/')"
            ));
        }
        let mut tokens = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '*' => {
                    if tokens.last() != Some(&Token::AnyRun) {
                        tokens.push(Token::AnyRun);
                    }
                }
                '?' => tokens.push(Token::AnyOne),
                '[' => {
                    let negated = matches!(chars.peek(), Some('!' | '^'));
                    if negated {
                        chars.next();
                    }
                    let mut ranges = Vec::new();
                    let mut closed = false;
                    let mut first = true;
                    while let Some(c) = chars.next() {
                        if c == ']' && !first {
                            closed = true;
                            break;
                        }
                        first = false;
                        let mut lookahead = chars.clone();
                        if lookahead.next() == Some('-') {
                            if let Some(end) = lookahead.next().filter(|e| *e != ']') {
                                chars.next();
                                chars.next();
                                ranges.push((c, end));
                                continue;
                            }
                        }
                        ranges.push((c, c));
                    }
                    if !closed {
                        return Err(format!("{pattern:?} has a '[' without its ']'"));
                    }
                    tokens.push(Token::Set { negated, ranges });
                }
                c => tokens.push(Token::Literal(c)),
            }
        }
        Ok(Glob { tokens })
    }

    /// Whether `name` matches the whole pattern.
    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        let name: Vec<char> = name.chars().collect();
        let (mut t, mut n) = (0usize, 0usize);
        // Position after the last `*` seen, and the name position it is retried from.
        let mut backtrack: Option<(usize, usize)> = None;
        while n < name.len() {
            match self.tokens.get(t) {
                Some(Token::AnyRun) => {
                    backtrack = Some((t + 1, n));
                    t += 1;
                    continue;
                }
                Some(token) if token_matches(token, name[n]) => {
                    t += 1;
                    n += 1;
                    continue;
                }
                _ => {}
            }
            match backtrack {
                Some((bt, bn)) => {
                    t = bt;
                    n = bn + 1;
                    backtrack = Some((bt, bn + 1));
                }
                None => return false,
            }
        }
        self.tokens[t..].iter().all(|tk| *tk == Token::AnyRun)
    }
}

fn token_matches(token: &Token, c: char) -> bool {
    match token {
        Token::Literal(l) => *l == c,
        Token::AnyOne => true,
        Token::AnyRun => false,
        Token::Set { negated, ranges } => {
            ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        Glob::new(p).unwrap().matches(n)
    }

    #[test]
    fn stars_and_marks() {
        assert!(m("*.log", "app.log"));
        assert!(m("*.log", ".log"));
        assert!(!m("*.log", "app.log.1"));
        assert!(m("app.log*", "app.log.1"));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("?.txt", "a.txt"));
        assert!(!m("?.txt", "ab.txt"));
        assert!(m("*", "anything"));
        assert!(m("**x", "abx"));
    }

    #[test]
    fn sets() {
        assert!(m("log[0-9].txt", "log7.txt"));
        assert!(!m("log[0-9].txt", "loga.txt"));
        assert!(m("log[!0-9].txt", "loga.txt"));
        assert!(m("[]]", "]"));
        assert!(m("[a-]", "-"));
    }

    #[test]
    fn refused_patterns() {
        assert!(Glob::new("").is_err());
        assert!(Glob::new("a/*.log").is_err());
        assert!(Glob::new("[ab").is_err());
    }

    #[test]
    fn long_hostile_names_terminate() {
        let g = Glob::new("*a*a*a*a*b").unwrap();
        assert!(!g.matches(&"a".repeat(5000)));
    }
}
