//! Debian open-iscsi's initramfs settings file, `/etc/iscsi.initramfs`
//! (its hook copies the host's /etc/iscsi/iscsi.initramfs there and its
//! local-top script sources it as shell before reading the command line):
//! read as data, never run. Each known variable becomes the command-line
//! word that overrides it ([`FileWord`]), for
//! [`super::cmdline::parse_with_defaults`].

use std::fmt;

/// Where Debian open-iscsi's initramfs hook puts its settings (a copy of
/// the host's /etc/iscsi/iscsi.initramfs) for its local-top script to
/// source.
pub const OPEN_ISCSI_FILE: &str = "/etc/iscsi.initramfs";
/// That file is a handful of assignments: anything bigger is not it, and
/// is not read into memory.
pub const MAX_OPEN_ISCSI_FILE: usize = 64 * 1024;
/// How many unused variable names of the file are kept for the log.
const MAX_IGNORED_VARS: usize = 16;

/// open-iscsi's variables and the kernel command-line words that override
/// them in its local-top script (which sources the file, then reads
/// /proc/cmdline).
const OPEN_ISCSI_VARS: [(&str, &str); 10] = [
    ("ISCSI_AUTO", "iscsi_auto"),
    ("ISCSI_INITIATOR", "iscsi_initiator"),
    ("ISCSI_TARGET_NAME", "iscsi_target_name"),
    ("ISCSI_TARGET_IP", "iscsi_target_ip"),
    ("ISCSI_TARGET_PORT", "iscsi_target_port"),
    ("ISCSI_TARGET_GROUP", "iscsi_target_group"),
    ("ISCSI_USERNAME", "iscsi_username"),
    ("ISCSI_PASSWORD", "iscsi_password"),
    ("ISCSI_IN_USERNAME", "iscsi_in_username"),
    ("ISCSI_IN_PASSWORD", "iscsi_in_password"),
];

/// One setting of open-iscsi's file, as the command-line word it stands
/// for. `Debug` leaves the value out: it may be a CHAP secret.
#[derive(Clone, PartialEq, Eq)]
pub struct FileWord {
    pub line: usize,
    /// ISCSI_TARGET_NAME, …
    pub var: &'static str,
    /// iscsi_target_name, …
    pub word: &'static str,
    /// `None` for the flag `iscsi_auto`.
    pub value: Option<String>,
}

impl fmt::Debug for FileWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileWord({} at line {})", self.var, self.line)
    }
}

/// What [`parse_open_iscsi_initramfs`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenIscsiFile {
    /// The known settings, each variable's last, in file order. Feed them
    /// to [`super::cmdline::parse_with_defaults`].
    pub words: Vec<FileWord>,
    /// Other variables set (at most 16 names, for the log; never values).
    pub ignored: Vec<String>,
}

impl OpenIscsiFile {
    /// Whether the file gives a CHAP secret (then it must not be readable
    /// by others).
    pub fn holds_secret(&self) -> bool {
        self.words
            .iter()
            .any(|w| matches!(w.var, "ISCSI_PASSWORD" | "ISCSI_IN_PASSWORD"))
    }

    fn note_ignored(&mut self, name: &str) {
        if self.ignored.len() < MAX_IGNORED_VARS && !self.ignored.iter().any(|n| n == name) {
            self.ignored.push(short_name(name));
        }
    }
}

/// Debian open-iscsi's settings file ([`OPEN_ISCSI_FILE`]), which its
/// initramfs script sources as shell: `[export ]NAME=value` lines, the
/// value bare, in "…" or in '…'; blank lines and `#` comments. The known
/// variables (ISCSI_AUTO, ISCSI_INITIATOR, ISCSI_TARGET_NAME,
/// ISCSI_TARGET_IP, ISCSI_TARGET_PORT, ISCSI_TARGET_GROUP, ISCSI_USERNAME,
/// ISCSI_PASSWORD, ISCSI_IN_USERNAME, ISCSI_IN_PASSWORD) become their
/// command-line words; others are only named in
/// [`OpenIscsiFile::ignored`]. The shell's last assignment wins, and an
/// empty value unsets. sanroot runs no shell, so expansions ($, `) are
/// refused rather than taken literally. Errors name the line, never a
/// value: it may be a secret.
pub fn parse_open_iscsi_initramfs(text: &str) -> Result<OpenIscsiFile, String> {
    if text.len() > MAX_OPEN_ISCSI_FILE {
        return Err(format!(
            "{} bytes: open-iscsi's settings are a few lines, more than {MAX_OPEN_ISCSI_FILE} bytes is not that file",
            text.len()
        ));
    }
    let mut f = OpenIscsiFile::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let Some((name, value)) = shell_assignment(line).map_err(|m| format!("line {n}: {m}"))?
        else {
            continue;
        };
        let Some(&(var, word)) = OPEN_ISCSI_VARS.iter().find(|(v, _)| *v == name) else {
            f.note_ignored(name);
            continue;
        };
        f.words.retain(|w| w.var != var);
        if let Some(w) = file_word(n, var, word, value)? {
            f.words.push(w);
        }
    }
    Ok(f)
}

/// A known variable's setting; `None` when empty (unset).
fn file_word(
    line: usize,
    var: &'static str,
    word: &'static str,
    value: String,
) -> Result<Option<FileWord>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    let value = if var == "ISCSI_AUTO" {
        // open-iscsi tests `-n "$ISCSI_AUTO"`: any value at all turns it
        // on, "false" too. Say so rather than guess either way.
        if !matches!(value.as_str(), "true" | "yes" | "1") {
            return Err(format!(
                "line {line}: ISCSI_AUTO: open-iscsi takes the target from the iBFT for any value that is not empty (\"false\" too): write ISCSI_AUTO=true, or leave it empty to name the target with ISCSI_TARGET_NAME and ISCSI_TARGET_IP"
            ));
        }
        None
    } else {
        Some(value)
    };
    Ok(Some(FileWord {
        line,
        var,
        word,
        value,
    }))
}

/// One line of a file the shell sources, read as `[export ]NAME=value`;
/// `None` for a blank line or a comment. Errors never show the value.
fn shell_assignment(line: &str) -> Result<Option<(&str, String)>, String> {
    let blank = [' ', '\t'];
    let t = line
        .strip_suffix('\r')
        .unwrap_or(line)
        .trim_start_matches(blank);
    if t.is_empty() || t.starts_with('#') {
        return Ok(None);
    }
    let t = t
        .strip_prefix("export")
        .filter(|r| r.starts_with(blank))
        .map_or(t, |r| r.trim_start_matches(blank));
    let (name, rest) = t
        .split_once('=')
        .filter(|(n, _)| is_shell_name(n))
        .ok_or("not a shell assignment: only NAME=value lines (export allowed), blank lines and # comments are read")?;
    let value = shell_word(rest).map_err(|m| format!("the value of {}: {m}", short_name(name)))?;
    Ok(Some((name, value)))
}

/// A shell variable's name: a letter or '_', then letters, digits, '_'.
fn is_shell_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// A variable's name for a message or the log, cut at 64 characters.
fn short_name(name: &str) -> String {
    match name.get(..64) {
        Some(cut) if name.len() > 64 => format!("{cut}…"),
        _ => name.to_string(),
    }
}

const UNCLOSED: &str = "a quote is not closed on its line (values spanning lines are not read)";
const EXPANSION: &str = "a $ or ` (a shell expansion): sanroot runs no shell, so write the value itself, in '…' if it holds $ or `";

/// The value after '=' with the shell's quoting undone ('…' literal, "…"
/// with \" \\ \$ \` escapes, \x outside quotes), up to the first unquoted
/// blank; after that only a comment. Operators and expansions are refused:
/// what the shell would make of them is not what is written.
fn shell_word(rest: &str) -> Result<String, &'static str> {
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(ch) = chars.next() {
        match ch {
            ' ' | '\t' => {
                let tail = chars.as_str().trim_start_matches([' ', '\t']);
                if tail.is_empty() || tail.starts_with('#') {
                    break;
                }
                return Err(
                    "more than one word after '=': put a value with spaces in quotes (ISCSI_TARGET_IP=\"10.0.0.1 10.0.0.2\")",
                );
            }
            '\'' => loop {
                match chars.next().ok_or(UNCLOSED)? {
                    '\'' => break,
                    c => out.push(c),
                }
            },
            '"' => double_quoted(&mut chars, &mut out)?,
            '\\' => out.push(
                chars
                    .next()
                    .ok_or("a '\\' ends the line (continued lines are not read)")?,
            ),
            '$' | '`' => return Err(EXPANSION),
            ';' | '&' | '|' | '<' | '>' | '(' | ')' => {
                return Err(
                    "a shell operator (; & | < > ( )) outside quotes: put the value in '…'",
                );
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The rest of a "…" (the opening quote read).
fn double_quoted(chars: &mut std::str::Chars<'_>, out: &mut String) -> Result<(), &'static str> {
    loop {
        match chars.next().ok_or(UNCLOSED)? {
            '"' => return Ok(()),
            '\\' => match chars.next().ok_or(UNCLOSED)? {
                c @ ('"' | '\\' | '$' | '`') => out.push(c),
                c => {
                    out.push('\\');
                    out.push(c);
                }
            },
            '$' | '`' => return Err(EXPANSION),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words() {
        for (v, want) in [
            ("", ""),
            ("a", "a"),
            ("a#b", "a#b"),
            ("x # comment", "x"),
            ("x\t#", "x"),
            ("x   ", "x"),
            ("'a\"b'", "a\"b"),
            ("\"a'b\"", "a'b"),
            ("\"x\\y\"", "x\\y"),
            ("\"\\$\\`\\\\\"", "$`\\"),
            ("a\\ b", "a b"),
            ("pre\"mid dle\"'post'", "premid dlepost"),
            ("\\é", "é"),
        ] {
            assert_eq!(shell_word(v).as_deref(), Ok(want), "{v}");
        }
        // Nothing panics on scraps.
        for line in [
            "\"",
            "'",
            "\\",
            "=",
            "export",
            "export =",
            "é=1",
            "ISCSI_AUTO",
            "=x",
            "1A=2",
            "A-B=1",
            "export\tA='",
            "A=\"\\",
            "A=é'",
            "   # only",
        ] {
            let _ = shell_assignment(line);
        }
        assert_eq!(shell_assignment("   # only"), Ok(None));
        assert_eq!(
            shell_assignment("export\tA=1"),
            Ok(Some(("A", "1".to_string())))
        );
        assert_eq!(
            shell_assignment("exportA=1"),
            Ok(Some(("exportA", "1".to_string())))
        );
    }
}
