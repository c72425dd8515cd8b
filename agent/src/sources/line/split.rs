//! Where lines end: [`LineSplitter`], resumable, quoted-string aware.

/// Newlines inside a line (only in quoted strings): what a line adds to the
/// line number beyond 1.
pub fn count_newlines(line: &[u8]) -> usize {
    memchr::memchr_iter(b'\n', line).count()
}

/// Finds where lines end, resumably: feed it the bytes from the start of the
/// current line as they arrive, and it scans each byte once.
///
/// A line ends at `\n`, except inside a quoted string field value (`"`
/// right after a field's `=`, up to the next unescaped `"`); a comment line
/// ends at its first `\n`.
#[derive(Debug, Clone, Default)]
pub struct LineSplitter {
    scanned: usize,
    started: bool,
    comment: bool,
    fields: bool,
    after_eq: bool,
    quoted: bool,
    escaped: bool,
    /// Newlines inside quoted strings of the current line.
    inner: usize,
    /// The same, of the line [`next_end`](Self::next_end) last ended.
    last_inner: usize,
}

impl LineSplitter {
    /// The index in `buf` of the `\n` ending the current line, if `buf`
    /// holds it; the splitter is then ready for the next line, whose bytes
    /// start after that index. `buf` must start at the current line's start
    /// and extend what was passed before (until `Some` is returned).
    pub fn next_end(&mut self, buf: &[u8]) -> Option<usize> {
        // Outside a quoted string a line ends at the next `\n`, and only a
        // `"` before it can open one: lines without quotes (nearly all) are
        // found with one vectorised search, not byte by byte.
        if !self.quoted {
            let rest = &buf[self.scanned.min(buf.len())..];
            if let Some(nl) = memchr::memchr(b'\n', rest)
                && memchr::memchr(b'"', &rest[..nl]).is_none()
            {
                let end = self.scanned + nl;
                self.end_line();
                return Some(end);
            }
        }
        while self.scanned < buf.len() {
            let i = self.scanned;
            let b = buf[i];
            self.scanned += 1;
            if self.quoted {
                if b == b'\n' {
                    self.inner += 1;
                }
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.quoted = false;
                }
                continue;
            }
            if b == b'\n' {
                self.end_line();
                return Some(i);
            }
            if self.comment {
                continue;
            }
            if self.escaped {
                self.escaped = false;
                continue;
            }
            if !self.started {
                if b == b' ' || b == b'\t' {
                    continue;
                }
                self.started = true;
                if b == b'#' {
                    self.comment = true;
                    continue;
                }
            }
            let after_eq = self.after_eq;
            self.after_eq = false;
            match b {
                b'\\' => self.escaped = true,
                b' ' => self.fields = true,
                b'=' if self.fields => self.after_eq = true,
                b'"' if after_eq => self.quoted = true,
                _ => {}
            }
        }
        None
    }

    /// Forgets the current line (after skipping it).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    fn end_line(&mut self) {
        let inner = self.inner;
        self.reset();
        self.last_inner = inner;
    }

    /// Newlines inside the line [`next_end`](Self::next_end) last returned
    /// the end of (only quoted strings hold them): what that line adds to
    /// the line number beyond 1, without scanning it again.
    pub fn newlines(&self) -> usize {
        self.last_inner
    }
}
