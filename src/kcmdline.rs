//! The kernel command line itself: where it is read, and how the kernel
//! splits it into arguments. What the arguments mean lives with their
//! users (`boot::cmdline` for dracut's, `net::ifname` for udev's,
//! `boot::modules` for module parameters).

/// /proc/cmdline, or "" when it cannot be read (logged).
pub fn read() -> String {
    std::fs::read_to_string("/proc/cmdline").unwrap_or_else(|e| {
        log::debug!("reading /proc/cmdline: {e}");
        String::new()
    })
}

/// Whitespace as the kernel's isspace() sees it.
pub fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

/// Split a command line into `key[=value]` pairs exactly as the kernel's
/// next_arg() (lib/cmdline.c) does: whitespace separates arguments except
/// inside double quotes; a leading quote on the argument or on the value
/// is dropped together with a trailing one (`"a=b c"`, `a="b c"`).
pub fn split_args(s: &str) -> Vec<(&str, Option<&str>)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        while b.get(pos).is_some_and(|&c| is_space(c)) {
            pos += 1;
        }
        if pos >= b.len() {
            break;
        }
        let mut start = pos;
        let quoted = b.get(start) == Some(&b'"');
        let mut in_quote = quoted;
        if quoted {
            start += 1;
        }
        let mut i = start;
        let mut equals = None;
        while let Some(&c) = b.get(i) {
            if is_space(c) && !in_quote {
                break;
            }
            if equals.is_none() && c == b'=' {
                equals = Some(i);
            }
            if c == b'"' {
                in_quote = !in_quote;
            }
            i += 1;
        }
        pos = i;
        let mut end = i;
        // Every index below is at an ASCII byte or at an end, so the
        // slices fall on char boundaries; `get` keeps it panic-free.
        let last_is_quote = end > start && b.get(end - 1) == Some(&b'"');
        match equals {
            None => {
                if quoted && last_is_quote {
                    end -= 1;
                }
                if let Some(k) = s.get(start..end) {
                    out.push((k, None));
                }
            }
            Some(eq) => {
                let mut vstart = eq + 1;
                if b.get(vstart) == Some(&b'"') {
                    vstart += 1;
                    if last_is_quote {
                        end -= 1;
                    }
                } else if quoted && last_is_quote {
                    end -= 1;
                }
                let end = end.max(vstart);
                if let (Some(k), Some(v)) = (s.get(start..eq), s.get(vstart..end)) {
                    out.push((k, Some(v)));
                }
            }
        }
    }
    out
}
