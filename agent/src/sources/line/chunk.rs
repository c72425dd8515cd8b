//! Cutting a stream into chunks of complete lines, sans-IO.
//!
//! A TCP source reads bytes into the [`Chunker`]'s buffer and asks it what
//! to do next ([`Chunker::poll`]): hand a chunk of complete lines to the
//! parser and the journal, first top it up with what the socket already has
//! waiting, or read more. The chunker finds line ends once per byte
//! ([`LineSplitter`]), rejects a line longer than the limit as a
//! [`Piece::TooLong`] and skips it up to its newline (never buffering more
//! than about `max_line` of it), and numbers lines as the parser reports
//! them. A UDP datagram is one chunk: [`split_datagram`].

use super::{LineSplitter, count_newlines};

/// A line found in a buffer (`buf[start..end]`, without its newline), or a
/// line rejected for its length. `no` is its 1-based line number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// A line to parse.
    Line {
        /// Line number.
        no: usize,
        /// First byte.
        start: usize,
        /// One past the last byte.
        end: usize,
    },
    /// A line longer than the limit.
    TooLong {
        /// Line number.
        no: usize,
    },
}

/// What the reader should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    /// A full chunk is waiting: [`Chunker::take`] it.
    Ready,
    /// Complete lines are waiting, and room for more: add what the socket
    /// has ready without waiting for it, then poll again; if it has nothing,
    /// take the chunk as it is.
    TopUp,
    /// No complete line: read more (or [`Chunker::handle_eof`]).
    Read,
}

/// A stream's buffer and its position in the line structure.
#[derive(Debug)]
pub struct Chunker {
    max_line: usize,
    chunk_lines: usize,
    chunk_bytes: usize,
    buf: Vec<u8>,
    splitter: LineSplitter,
    /// Skipping the rest of an overlong line, up to its newline.
    skipping: bool,
    line_no: usize,
    pieces: Vec<Piece>,
    /// Bytes of `buf` taken into `pieces` (or skipped).
    consumed: usize,
}

impl Chunker {
    /// Chunks of at most `chunk_lines` lines, topped up until the buffer
    /// holds `chunk_bytes`; lines longer than `max_line` are rejected.
    pub fn new(max_line: usize, chunk_lines: usize, chunk_bytes: usize) -> Self {
        Self {
            max_line: max_line.max(1),
            chunk_lines: chunk_lines.max(1),
            chunk_bytes,
            buf: Vec::new(),
            splitter: LineSplitter::default(),
            skipping: false,
            line_no: 1,
            pieces: Vec::new(),
            consumed: 0,
        }
    }

    /// The buffer to read into, with at least `room` spare capacity.
    pub fn read_buf(&mut self, room: usize) -> &mut Vec<u8> {
        self.buf.reserve(room);
        &mut self.buf
    }

    /// Bytes buffered (at most about `chunk_bytes` plus one read plus one
    /// line).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes complete lines from the buffer, up to a chunk, and says what
    /// to do next.
    pub fn poll(&mut self) -> Chunk {
        while self.pieces.len() < self.chunk_lines {
            if self.skipping {
                match memchr::memchr(b'\n', &self.buf[self.consumed..]) {
                    Some(p) => {
                        self.consumed += p + 1;
                        self.line_no += 1;
                        self.skipping = false;
                        continue;
                    }
                    None => {
                        self.consumed = self.buf.len();
                        break;
                    }
                }
            }
            match self.splitter.next_end(&self.buf[self.consumed..]) {
                Some(e) => {
                    let (start, end) = (self.consumed, self.consumed + e);
                    self.pieces.push(self.piece(start, end));
                    self.line_no += 1 + self.splitter.newlines();
                    self.consumed = end + 1;
                }
                None => {
                    if self.buf.len() - self.consumed > self.max_line {
                        self.pieces.push(Piece::TooLong { no: self.line_no });
                        self.splitter.reset();
                        self.skipping = true;
                        self.consumed = self.buf.len();
                    }
                    break;
                }
            }
        }
        if self.pieces.is_empty() {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
            Chunk::Read
        } else if self.pieces.len() < self.chunk_lines && self.buf.len() < self.chunk_bytes {
            Chunk::TopUp
        } else {
            Chunk::Ready
        }
    }

    /// The stream ended: an unterminated last line is a line too.
    pub fn handle_eof(&mut self) {
        if !self.skipping && self.consumed < self.buf.len() {
            let (start, end) = (self.consumed, self.buf.len());
            self.pieces.push(self.piece(start, end));
            self.consumed = end;
        }
    }

    /// Bytes the buffer has allocated (what a connection holds).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// True while a line has started and not ended: bytes past the last
    /// complete line, or the rest of an overlong line being skipped.
    pub fn has_partial(&self) -> bool {
        self.skipping || self.buf.len() > self.consumed
    }

    /// Frees the buffer when it holds nothing (an idle connection keeps no
    /// allocation).
    pub fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.pieces.is_empty() {
            self.buf = Vec::new();
            self.consumed = 0;
        }
    }

    /// Complete lines waiting.
    pub fn lines(&self) -> usize {
        self.pieces.len()
    }

    /// Hands the chunk (the buffer and its pieces) to `parse`, then forgets
    /// it.
    pub fn take<R>(&mut self, parse: impl FnOnce(&[u8], &[Piece]) -> R) -> R {
        let r = parse(&self.buf, &self.pieces);
        self.pieces.clear();
        self.buf.drain(..self.consumed);
        self.consumed = 0;
        r
    }

    /// Hands the chunk to `parse`, which says how many of its pieces it
    /// took (a source parses only what its memory hold covers); the rest
    /// stay for the next take.
    pub fn take_some<R>(&mut self, parse: impl FnOnce(&[u8], &[Piece]) -> (R, usize)) -> R {
        let (r, n) = parse(&self.buf, &self.pieces);
        if n >= self.pieces.len() {
            self.pieces.clear();
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        } else {
            // The pieces left point into the buffer: it stays as it is
            // until the chunk is taken whole.
            self.pieces.drain(..n);
        }
        r
    }

    fn piece(&self, start: usize, end: usize) -> Piece {
        if end - start > self.max_line {
            Piece::TooLong { no: self.line_no }
        } else {
            Piece::Line {
                no: self.line_no,
                start,
                end,
            }
        }
    }
}

/// A datagram's lines (the last needs no newline).
pub fn split_datagram(bytes: &[u8], max_line: usize) -> Vec<Piece> {
    let max_line = max_line.max(1);
    let mut splitter = LineSplitter::default();
    let mut pieces = Vec::new();
    let (mut pos, mut no) = (0, 1);
    while pos < bytes.len() {
        let (end, newlines) = match splitter.next_end(&bytes[pos..]) {
            Some(e) => (pos + e, splitter.newlines()),
            None => (bytes.len(), count_newlines(&bytes[pos..])),
        };
        pieces.push(if end - pos > max_line {
            Piece::TooLong { no }
        } else {
            Piece::Line {
                no,
                start: pos,
                end,
            }
        });
        no += 1 + newlines;
        pos = end + 1;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each piece as (line number, its text or "TOO LONG").
    fn lines(buf: &[u8], pieces: &[Piece]) -> Vec<(usize, String)> {
        pieces
            .iter()
            .map(|p| match *p {
                Piece::Line { no, start, end } => {
                    (no, String::from_utf8_lossy(&buf[start..end]).into_owned())
                }
                Piece::TooLong { no } => (no, "TOO LONG".into()),
            })
            .collect()
    }

    fn feed(c: &mut Chunker, bytes: &[u8]) {
        c.read_buf(bytes.len()).extend_from_slice(bytes);
    }

    #[test]
    fn a_line_split_across_reads_is_taken_once_complete() {
        let mut c = Chunker::new(100, 10, 1 << 20);
        assert_eq!(c.poll(), Chunk::Read, "empty");
        feed(&mut c, b"m v=1\nm v=");
        assert_eq!(c.poll(), Chunk::TopUp, "one complete line, room for more");
        feed(&mut c, b"2\n");
        assert_eq!(c.poll(), Chunk::TopUp);
        let got = c.take(lines);
        assert_eq!(got, [(1, "m v=1".into()), (2, "m v=2".into())]);
        assert_eq!(c.buffered(), 0, "taken bytes are dropped");
        assert_eq!(c.poll(), Chunk::Read);
    }

    #[test]
    fn a_chunk_is_ready_at_its_line_or_byte_limit() {
        let mut c = Chunker::new(100, 2, 1 << 20);
        feed(&mut c, b"a v=1\nb v=2\nc v=3\n");
        assert_eq!(c.poll(), Chunk::Ready);
        assert_eq!(c.take(lines), [(1, "a v=1".into()), (2, "b v=2".into())]);
        assert_eq!(c.poll(), Chunk::TopUp);
        assert_eq!(c.take(lines), [(3, "c v=3".into())]);
        let mut c = Chunker::new(100, 1000, 8);
        feed(&mut c, b"a v=1\nb v=");
        assert_eq!(c.poll(), Chunk::Ready, "the buffer holds 8 bytes or more");
    }

    #[test]
    fn an_overlong_line_is_rejected_once_and_skipped_to_its_newline() {
        let mut c = Chunker::new(8, 10, 1 << 20);
        feed(&mut c, b"ok v=1\n0123456789");
        assert_eq!(c.poll(), Chunk::TopUp);
        assert_eq!(
            c.take(lines),
            [(1, "ok v=1".into()), (2, "TOO LONG".into())]
        );
        assert_eq!(c.buffered(), 0, "the overlong start is not kept");
        feed(&mut c, b"abcdefghij");
        assert_eq!(c.poll(), Chunk::Read, "still inside the long line");
        assert_eq!(c.buffered(), 0);
        feed(&mut c, b"xyz\nnext v=2\n");
        assert_eq!(c.poll(), Chunk::TopUp);
        assert_eq!(c.take(lines), [(3, "next v=2".into())]);
        // A complete line that is too long is rejected the same way.
        feed(&mut c, b"0123456789\n");
        c.poll();
        assert_eq!(c.take(lines), [(4, "TOO LONG".into())]);
    }

    #[test]
    fn a_partial_line_is_known_and_an_empty_buffer_is_freed() {
        let mut c = Chunker::new(8, 10, 1 << 20);
        assert!(!c.has_partial());
        feed(&mut c, b"a v=1\nb v");
        assert_eq!(c.poll(), Chunk::TopUp);
        assert!(c.has_partial(), "`b v` has not ended");
        c.release_if_empty();
        assert!(c.capacity() > 0, "kept while it holds bytes");
        feed(&mut c, b"=2\n");
        c.poll();
        c.take(lines);
        assert_eq!(c.poll(), Chunk::Read);
        assert!(!c.has_partial());
        c.release_if_empty();
        assert_eq!(c.capacity(), 0);
        // Skipping an overlong line is a partial line too.
        feed(&mut c, b"0123456789");
        c.poll();
        c.take(lines);
        assert_eq!(c.poll(), Chunk::Read);
        assert!(c.has_partial());
    }

    #[test]
    fn a_chunk_taken_in_parts_keeps_the_rest_in_order() {
        let mut c = Chunker::new(100, 3, 1 << 20);
        feed(&mut c, b"a v=1\nb v=2\nc v=3\nd v=");
        assert_eq!(c.poll(), Chunk::Ready);
        let first = c.take_some(|buf, pieces| (lines(buf, &pieces[..1]), 1));
        assert_eq!(first, [(1, "a v=1".into())]);
        assert_eq!(c.lines(), 2, "the rest waits");
        feed(&mut c, b"4\n");
        assert_eq!(c.poll(), Chunk::Ready, "topped up to three lines again");
        let rest = c.take_some(|buf, pieces| (lines(buf, pieces), pieces.len()));
        assert_eq!(
            rest,
            [
                (2, "b v=2".into()),
                (3, "c v=3".into()),
                (4, "d v=4".into())
            ]
        );
        assert_eq!(c.buffered(), 0, "taken whole: the buffer is emptied");
        assert_eq!(c.poll(), Chunk::Read);
    }

    #[test]
    fn the_end_of_the_stream_ends_the_last_line() {
        let mut c = Chunker::new(100, 10, 1 << 20);
        feed(&mut c, b"a v=1\nb v=2");
        c.poll();
        c.take(lines);
        assert_eq!(c.poll(), Chunk::Read);
        c.handle_eof();
        assert_eq!(c.lines(), 1);
        assert_eq!(c.take(lines), [(2, "b v=2".into())]);
        // Inside a skipped line, the end adds nothing.
        let mut c = Chunker::new(4, 10, 1 << 20);
        feed(&mut c, b"0123456789");
        c.poll();
        assert_eq!(c.take(lines), [(1, "TOO LONG".into())]);
        c.handle_eof();
        assert_eq!(c.lines(), 0);
    }

    #[test]
    fn newlines_inside_quoted_strings_count_as_lines() {
        let mut c = Chunker::new(100, 10, 1 << 20);
        feed(&mut c, b"m s=\"a\nb\",v=1\nm v=2\n");
        c.poll();
        let got = c.take(lines);
        assert_eq!(got[0].0, 1);
        assert_eq!(got[1], (3, "m v=2".into()), "line 2 was inside the quotes");
    }

    #[test]
    fn a_datagram_is_one_chunk_with_an_unterminated_last_line() {
        let d = b"a v=1\n0123456789\nb v=2";
        let pieces = split_datagram(d, 8);
        assert_eq!(
            lines(d, &pieces),
            [
                (1, "a v=1".into()),
                (2, "TOO LONG".into()),
                (3, "b v=2".into())
            ]
        );
        assert!(split_datagram(b"", 8).is_empty());
    }
}
