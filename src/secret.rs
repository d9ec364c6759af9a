//! A CHAP secret: bytes that must never reach a log, an error message, a
//! process title or a world-readable file.
//!
//! `Debug` prints `<hidden>`, there is no `Display`, and the bytes are wiped
//! when the value is dropped. Code that really needs the bytes (the CHAP
//! response, `--show-secrets`) calls [`Secret::expose`], which is easy to grep.

use std::fmt;

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// The secret bytes. Every caller is a place a secret can leak: keep
    /// them few.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.as_bytes().to_vec())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<hidden>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // Volatile so the wipe is not optimised away as a dead store.
            // SAFETY: `b` is a valid, aligned, exclusive reference.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_bytes() {
        let s = Secret::from("swordfish-12");
        assert_eq!(format!("{s:?}"), "<hidden>");
        assert_eq!(format!("{:?}", Some(&s)), "Some(<hidden>)");
        assert_eq!(s.expose(), b"swordfish-12");
    }
}
