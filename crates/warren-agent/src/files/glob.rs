//! A small glob matcher: `*` and `?` within one path segment, `[abc]`,
//! `[a-z]`, `[!x]` / `[^x]`, `\` escapes, and `**` spanning directories
//! (`**/` also matches no directory at all). Matching is iterative and takes
//! pattern × path time and path memory, whatever the pattern.

/// Longest glob accepted (bytes); the daemon enforces the same limit.
pub const MAX_GLOB: usize = 1024;

/// A compiled glob.
#[derive(Debug, Clone)]
pub struct Glob {
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Literal(char),
    AnyChar,
    Star,
    /// `**`; `slash` when it was `**/`.
    DoubleStar {
        slash: bool,
    },
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Glob {
    pub fn new(pattern: &str) -> Self {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    let slash = chars.get(i + 2) == Some(&'/');
                    tokens.push(Token::DoubleStar { slash });
                    i += if slash { 3 } else { 2 };
                    while !slash && chars.get(i) == Some(&'*') {
                        i += 1;
                    }
                }
                '*' => {
                    tokens.push(Token::Star);
                    i += 1;
                }
                '?' => {
                    tokens.push(Token::AnyChar);
                    i += 1;
                }
                '\\' if i + 1 < chars.len() => {
                    tokens.push(Token::Literal(chars[i + 1]));
                    i += 2;
                }
                '[' => match parse_class(&chars[i + 1..]) {
                    Some((token, used)) => {
                        tokens.push(token);
                        i += 1 + used;
                    }
                    None => {
                        tokens.push(Token::Literal('['));
                        i += 1;
                    }
                },
                c => {
                    tokens.push(Token::Literal(c));
                    i += 1;
                }
            }
        }
        Self { tokens }
    }

    /// True when the whole of `path` matches.
    ///
    /// One pass per token over the set of positions the pattern so far can
    /// end at: no recursion, O(path) memory and O(tokens × path) time, so
    /// even a pattern made only of `**/` cannot exhaust the stack.
    pub fn matches(&self, path: &str) -> bool {
        let s: Vec<char> = path.chars().collect();
        let n = s.len();
        let mut cur = vec![false; n + 1];
        cur[0] = true;
        let mut next = vec![false; n + 1];
        for token in &self.tokens {
            next.iter_mut().for_each(|x| *x = false);
            match token {
                Token::Literal(c) => {
                    for i in 0..n {
                        next[i + 1] = cur[i] && s[i] == *c;
                    }
                }
                Token::AnyChar => {
                    for i in 0..n {
                        next[i + 1] = cur[i] && s[i] != '/';
                    }
                }
                Token::Class { negated, ranges } => {
                    for i in 0..n {
                        let c = s[i];
                        next[i + 1] = cur[i]
                            && c != '/'
                            && ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated;
                    }
                }
                Token::Star => {
                    // Any run of non-'/' characters.
                    let mut reach = false;
                    for j in 0..=n {
                        reach |= cur[j];
                        next[j] = reach;
                        if j < n && s[j] == '/' {
                            reach = false;
                        }
                    }
                }
                Token::DoubleStar { slash: true } => {
                    // Zero directories, or anything ending just after a '/'.
                    let mut seen = false;
                    for j in 0..=n {
                        seen |= cur[j];
                        next[j] |= cur[j];
                        if j < n && s[j] == '/' && seen {
                            next[j + 1] = true;
                        }
                    }
                }
                Token::DoubleStar { slash: false } => {
                    let mut seen = false;
                    for j in 0..=n {
                        seen |= cur[j];
                        next[j] = seen;
                    }
                }
            }
            std::mem::swap(&mut cur, &mut next);
            if !cur.iter().any(|x| *x) {
                return false;
            }
        }
        cur[n]
    }
}

/// Parses the inside of `[...]`; returns the token and the characters used
/// (including the closing `]`), or None when there is no closing bracket.
fn parse_class(chars: &[char]) -> Option<(Token, usize)> {
    let mut i = 0;
    let negated = matches!(chars.first(), Some('!') | Some('^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    while i < chars.len() {
        let c = chars[i];
        if c == ']' && !first {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        first = false;
        if chars.get(i + 1) == Some(&'-') && chars.get(i + 2).is_some_and(|e| *e != ']') {
            ranges.push((c, chars[i + 2]));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::Glob;

    fn m(p: &str, s: &str) -> bool {
        Glob::new(p).matches(s)
    }

    #[test]
    fn single_star_stays_in_one_segment() {
        assert!(m("*.rs", "main.rs"));
        assert!(!m("*.rs", "src/main.rs"));
        assert!(m("src/*.rs", "src/main.rs"));
        assert!(m("*", ""));
        assert!(!m("a*", "b"));
        assert!(m("a?c", "abc") && !m("a?c", "a/c"));
    }

    #[test]
    fn double_star_spans_directories_including_none() {
        assert!(m("**/*.rs", "main.rs"));
        assert!(m("**/*.rs", "a/b/c/main.rs"));
        assert!(m("src/**/mod.rs", "src/mod.rs"));
        assert!(m("src/**/mod.rs", "src/x/y/mod.rs"));
        assert!(!m("src/**/mod.rs", "lib/x/mod.rs"));
        assert!(m("**", "a/b/c"));
        assert!(m("a/**", "a/b/c"));
        assert!(m("**.txt", "x/y.txt"));
    }

    #[test]
    fn classes_and_escapes() {
        assert!(m("[abc].txt", "b.txt") && !m("[abc].txt", "d.txt"));
        assert!(m("file[0-9]", "file7") && !m("file[0-9]", "filex"));
        assert!(m("[!a]x", "bx") && !m("[!a]x", "ax"));
        assert!(m("[^a]x", "bx"));
        assert!(m("[]]", "]"));
        assert!(m("\\*", "*") && !m("\\*", "a"));
        assert!(m("[unclosed", "[unclosed"));
        assert!(!m("[/]", "/"));
    }

    #[test]
    fn many_stars_do_not_explode() {
        let path = "a".repeat(3000);
        assert!(!m("*a*a*a*a*a*a*a*a*a*a*a*b", &path));
        assert!(!m("**a**a**a**a**a**a**a**b", &path));
    }

    #[test]
    fn huge_globs_do_not_recurse() {
        // Far past MAX_GLOB: the matcher itself must not depend on the cap.
        let pattern = "**/".repeat(20_000) + "x";
        assert!(m(&pattern, "a/b/c/x"));
        assert!(!m(&pattern, "a/b/c/y"));
        let stars = "*".repeat(50_000);
        assert!(m(&stars, "abc"));
    }
}
