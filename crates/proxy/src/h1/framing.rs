//! Where an HTTP/1 message body ends, found without decoding it: the bytes go on as they came.

use std::fmt;

/// A body the peer framed wrongly (the connection cannot stay in sync).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingError(pub &'static str);

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for FramingError {}

/// The longest chunk extension, and the most trailer bytes, a chunked body may carry.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;

/// How a message's body is delimited (RFC 9112 section 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// No body (or all of it passed).
    Empty,
    /// This many bytes are left.
    Length(u64),
    /// `Transfer-Encoding: chunked`, tracked chunk by chunk (trailers included).
    Chunked(Chunked),
    /// Until the sender closes (a response without a length).
    UntilClose,
}

impl Body {
    /// How many bytes at the start of `buf` belong to the body (the rest is the next
    /// message).
    pub fn take(&mut self, buf: &[u8]) -> Result<usize, FramingError> {
        match self {
            Body::Empty => Ok(0),
            Body::Length(left) => {
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                if *left == 0 {
                    *self = Body::Empty;
                }
                Ok(n as usize)
            }
            Body::Chunked(c) => {
                let n = c.feed(buf)?;
                if c.done() {
                    *self = Body::Empty;
                }
                Ok(n)
            }
            Body::UntilClose => Ok(buf.len()),
        }
    }

    /// The whole body has passed.
    pub fn done(&self) -> bool {
        matches!(self, Body::Empty)
    }
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Before the first hex digit of a chunk size.
    SizeStart,
    /// In the hex digits.
    Size,
    /// In a chunk extension (or whitespace after the size), until CR.
    Ext,
    /// After the size line's CR.
    SizeLf,
    /// In a chunk's data.
    Data,
    /// After a chunk's data: its CR, then its LF.
    DataCr,
    DataLf,
    /// At the start of a trailer line (an empty one ends the body).
    LineStart,
    /// In a trailer line, until CR.
    Line,
    /// After a trailer line's CR; `true` if the line was empty.
    LineLf(bool),
    Done,
}

/// A chunked body's progress: sizes, data, the last chunk and trailers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    st: St,
    size: u64,
    line: usize,
    trailers: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Self {
            st: St::SizeStart,
            size: 0,
            line: 0,
            trailers: 0,
        }
    }
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

impl Chunked {
    /// The last chunk and the trailers have passed.
    pub fn done(&self) -> bool {
        self.st == St::Done
    }

    /// Consumes the body's bytes at the start of `buf`; returns how many (fewer than
    /// `buf.len()` only when the body ends inside it).
    pub fn feed(&mut self, buf: &[u8]) -> Result<usize, FramingError> {
        let mut i = 0;
        while i < buf.len() && self.st != St::Done {
            if self.st == St::Data {
                let n = self.size.min((buf.len() - i) as u64);
                self.size -= n;
                i += n as usize;
                if self.size == 0 {
                    self.st = St::DataCr;
                }
                continue;
            }
            let b = buf[i];
            i += 1;
            self.st = match (self.st, b) {
                (St::SizeStart | St::Size, b) if hex(b).is_some() => {
                    if self.size > u64::MAX >> 8 {
                        return Err(FramingError("chunk size too large"));
                    }
                    self.size = self.size * 16 + hex(b).unwrap_or(0);
                    St::Size
                }
                (St::SizeStart, _) => return Err(FramingError("invalid chunk size")),
                (St::Size, b';' | b' ' | b'\t') => {
                    self.line = 0;
                    St::Ext
                }
                (St::Size | St::Ext, b'\r') => St::SizeLf,
                (St::Size, _) => return Err(FramingError("invalid chunk size")),
                (St::Ext, b'\n') => return Err(FramingError("bare LF in a chunk size line")),
                (St::Ext, _) => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(FramingError("chunk extension too long"));
                    }
                    St::Ext
                }
                (St::SizeLf, b'\n') if self.size == 0 => St::LineStart,
                (St::SizeLf, b'\n') => St::Data,
                (St::SizeLf, _) => return Err(FramingError("chunk size line without CRLF")),
                (St::DataCr, b'\r') => St::DataLf,
                (St::DataLf, b'\n') => St::SizeStart,
                (St::DataCr | St::DataLf, _) => {
                    return Err(FramingError("chunk data not followed by CRLF"))
                }
                (St::LineStart, b'\r') => St::LineLf(true),
                (St::LineStart | St::Line, b'\n') => {
                    return Err(FramingError("bare LF in the trailers"))
                }
                (St::Line, b'\r') => St::LineLf(false),
                (St::LineStart | St::Line, _) => {
                    self.trailers += 1;
                    if self.trailers > MAX_TRAILERS {
                        return Err(FramingError("trailers too long"));
                    }
                    St::Line
                }
                (St::LineLf(true), b'\n') => St::Done,
                (St::LineLf(false), b'\n') => St::LineStart,
                (St::LineLf(_), _) => return Err(FramingError("trailer line without CRLF")),
                (St::Data | St::Done, _) => unreachable!("handled before the match"),
            };
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `msg` in pieces of `step` bytes; returns the body's length and whether it ended.
    fn feed_in_steps(msg: &[u8], step: usize) -> Result<(usize, bool), FramingError> {
        let mut b = Body::Chunked(Chunked::default());
        let mut used = 0;
        for piece in msg.chunks(step) {
            let n = b.take(piece)?;
            used += n;
            if n < piece.len() {
                break;
            }
        }
        Ok((used, b.done()))
    }

    #[test]
    fn chunked_ends_where_the_body_ends_in_any_split() {
        let body = b"5\r\nhello\r\n6;name=v\r\n world\r\n0\r\n\r\n";
        let mut msg = body.to_vec();
        msg.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        for step in 1..=msg.len() {
            assert_eq!(
                feed_in_steps(&msg, step),
                Ok((body.len(), true)),
                "step {step}"
            );
        }
    }

    #[test]
    fn chunked_with_trailers() {
        let body = b"A\r\n0123456789\r\n0\r\nx-sum: 1\r\nx-more: 2\r\n\r\n";
        for step in 1..=body.len() {
            let mut msg = body.to_vec();
            msg.extend_from_slice(b"rest");
            assert_eq!(feed_in_steps(&msg, step), Ok((body.len(), true)));
        }
    }

    #[test]
    fn chunked_incomplete_is_not_done() {
        assert_eq!(feed_in_steps(b"5\r\nhel", 100), Ok((6, false)));
        assert_eq!(feed_in_steps(b"0\r\nx: y\r\n", 100), Ok((9, false)));
    }

    #[test]
    fn chunked_malformed() {
        for bad in [
            &b"z\r\n"[..],
            b"\r\n",
            b"5\nhello",
            b"5\r\nhelloXX",
            b"0\r\nx: y\nz",
            b"fffffffffffffffff\r\n",
        ] {
            assert!(feed_in_steps(bad, 100).is_err(), "{bad:?}");
        }
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_CHUNK_LINE + 1));
        assert_eq!(
            feed_in_steps(&long, 100),
            Err(FramingError("chunk extension too long"))
        );
    }

    #[test]
    fn length_and_empty() {
        let mut b = Body::Length(5);
        assert_eq!(b.take(b"hel"), Ok(3));
        assert!(!b.done());
        assert_eq!(b.take(b"loGET"), Ok(2));
        assert!(b.done());
        assert_eq!(Body::Empty.take(b"GET"), Ok(0));
        assert_eq!(Body::UntilClose.take(b"abc"), Ok(3));
        assert!(!Body::UntilClose.done());
    }
}
