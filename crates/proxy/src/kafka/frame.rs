//! Kafka's framing: a big-endian int32 size, then that many bytes. Requests and responses
//! alike.
//!
//! A size above the limit (or negative) ends the connection before anything is allocated for
//! it, and the frame's buffer grows with the bytes that actually arrive (at most
//! [`GROW_STEP`] beyond them), so a peer announcing a huge frame and sending little costs
//! little.
//!
//! Requests are read by a [`FrameReader`]: reads of up to [`READ_SIZE`], so pipelined small
//! requests take one read together, and of a large frame only its first bytes, the rest left
//! in the socket for the caller to move without copying it (a 1 MB Produce request is
//! forwarded by `splice` once its topic is allowed) or to read whole.
//!
//! A large frame can also be looked at before any of it is read ([`peek_large`]): its head
//! copied out with `MSG_PEEK`, the whole frame, size included, left in the socket to be
//! spliced. A producer's connection brings one large Produce request after another, and
//! this spares each of them the read of its head and the write of it to the broker (up to
//! 16 KiB copied twice, and a system call): the proxy's CPU per MB produced fell from 0.42 to
//! 0.39 ms on a quiet machine (0.62 to 0.47 under load; bench/README.md, "Session 11 quiet
//! reruns").

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

/// The default largest frame (Kafka's own `socket.request.max.bytes` is 100 MiB).
pub const DEFAULT_MAX_FRAME: usize = 100 << 20;

/// How much the buffer grows at a time, at most.
pub const GROW_STEP: usize = 64 << 10;

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The size is negative or above the limit.
    #[error("frame size {size} is outside 0..={max}")]
    Size {
        /// As announced.
        size: i64,
        /// The limit.
        max: usize,
    },
    /// The peer closed in the middle of a frame.
    #[error("the connection closed inside a frame ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes announced.
        want: usize,
    },
    /// Reading failed.
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
}

/// How much a [`FrameReader`] asks the socket for at a time.
pub const READ_SIZE: usize = 16 << 10;

/// The fewest bytes of a large frame a [`FrameReader`] hands out as its head (or the whole
/// frame if smaller): a request's header and first topic fit in them.
pub const HEAD_MIN: usize = 1 << 10;

/// How many bytes of a frame [`peek_large`] looks at: its size and a head of at least
/// [`HEAD_MIN`], with room for a long client id before the topic.
pub const PEEK_SIZE: usize = 4 + 4 * HEAD_MIN;

/// The frame at the front of `stream`, looked at without taking any of it (`MSG_PEEK`), once
/// the socket is readable: `Some((head, size))` when it is a frame of at least `stream_min`
/// bytes (and at most `max`) of which at least [`HEAD_MIN`] have arrived; `head` is its first
/// bytes after the size. `None` otherwise (a small frame, a bad size, too few bytes yet, the
/// peer closed): nothing was taken, and the frame is read as usual, which reports what is
/// wrong with it.
pub async fn peek_large(
    stream: &TcpStream,
    stream_min: usize,
    max: usize,
) -> std::io::Result<Option<(Bytes, usize)>> {
    let mut buf = [0u8; PEEK_SIZE];
    let n = stream.peek(&mut buf).await?;
    let Some(size) = buf[..n].first_chunk::<4>() else {
        return Ok(None);
    };
    let Ok(size) = usize::try_from(i32::from_be_bytes(*size)) else {
        return Ok(None);
    };
    if size < stream_min || size > max || n - 4 < size.min(HEAD_MIN) {
        return Ok(None);
    }
    Ok(Some((Bytes::copy_from_slice(&buf[4..n]), size)))
}

/// One frame from a [`FrameReader`].
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// The whole payload (without its size).
    Whole(Bytes),
    /// The first bytes of a large payload; `rest` more are still in the connection.
    Head {
        /// The payload's first bytes (at least [`HEAD_MIN`] or all but the last).
        head: Bytes,
        /// The payload's bytes not read yet.
        rest: usize,
    },
}

/// Frames from one connection, read in pieces of up to [`READ_SIZE`] (see the module's doc).
#[derive(Debug)]
pub struct FrameReader {
    buf: BytesMut,
    max: usize,
}

impl FrameReader {
    /// A reader of frames up to `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// True when nothing read from the connection is waiting in the buffer: the next frame
    /// starts in the connection itself (and may be looked at with [`peek_large`]).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The size of the frame at the front of the buffer, once its 4 bytes are there.
    fn size(&self) -> Result<Option<usize>, FrameError> {
        let Some(size) = self.buf.get(..4) else {
            return Ok(None);
        };
        let size = i32::from_be_bytes(size.try_into().expect("4 bytes"));
        usize::try_from(size)
            .ok()
            .filter(|s| *s <= self.max)
            .map(Some)
            .ok_or(FrameError::Size {
                size: i64::from(size),
                max: self.max,
            })
    }

    /// The next frame: whole, or (when its payload is at least `stream_min` bytes and has
    /// not all arrived) its head, the rest left in `r`. `Ok(None)` when the peer closed
    /// cleanly between frames.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        stream_min: usize,
    ) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(want) = self.size()? {
                let have = self.buf.len() - 4;
                if have >= want {
                    self.buf.advance(4);
                    return Ok(Some(Frame::Whole(self.buf.split_to(want).freeze())));
                }
                if want >= stream_min && have >= want.min(HEAD_MIN) {
                    // Everything buffered belongs to this frame: nothing follows it yet.
                    self.buf.advance(4);
                    let head = self.buf.split().freeze();
                    return Ok(Some(Frame::Head {
                        rest: want - head.len(),
                        head,
                    }));
                }
                // Grow by what is announced, at most READ_SIZE at a time.
                self.buf.reserve((want - have).min(READ_SIZE));
            } else if self.buf.capacity() - self.buf.len() < READ_SIZE / 4 {
                self.buf.reserve(READ_SIZE);
            }
            if r.read_buf(&mut self.buf).await? == 0 {
                return match self.buf.len() {
                    0 => Ok(None),
                    n @ 1..4 => Err(FrameError::Truncated { got: n, want: 4 }),
                    n => Err(FrameError::Truncated {
                        got: n - 4,
                        want: self.size()?.unwrap_or(0),
                    }),
                };
            }
        }
    }

    /// The next frame, whole (however large); `Ok(None)` when the peer closed cleanly
    /// between frames.
    pub async fn next_whole<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<Bytes>, FrameError> {
        match self.next(r, usize::MAX).await? {
            Some(Frame::Whole(p)) => Ok(Some(p)),
            Some(Frame::Head { head, rest }) => self.read_rest(r, head, rest).await.map(Some),
            None => Ok(None),
        }
    }

    /// The whole payload of a frame handed out as [`Frame::Head`]: `head` and the `rest`
    /// bytes read from `r` (the buffer growing by at most [`GROW_STEP`] beyond what arrived).
    pub async fn read_rest<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        head: Bytes,
        rest: usize,
    ) -> Result<Bytes, FrameError> {
        debug_assert!(
            self.buf.is_empty(),
            "a head is handed out with nothing after it"
        );
        let want = head.len() + rest;
        let mut buf = BytesMut::from(head);
        while buf.len() < want {
            let step = (want - buf.len()).min(GROW_STEP);
            buf.reserve(step);
            let n = (&mut *r).take(step as u64).read_buf(&mut buf).await?;
            if n == 0 {
                return Err(FrameError::Truncated {
                    got: buf.len(),
                    want,
                });
            }
        }
        Ok(buf.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frames(input: &[u8], max: usize) -> (Vec<Bytes>, Option<String>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut r = input;
            let mut frames = FrameReader::new(max);
            let mut out = Vec::new();
            loop {
                match frames.next_whole(&mut r).await {
                    Ok(Some(f)) => out.push(f),
                    Ok(None) => return (out, None),
                    Err(e) => return (out, Some(e.to_string())),
                }
            }
        })
    }

    #[test]
    fn sizes() {
        let (f, e) = frames(b"\x00\x00\x00\x03abc\x00\x00\x00\x00", 10);
        assert_eq!(f, vec![Bytes::from_static(b"abc"), Bytes::new()]);
        assert_eq!(e, None);
        let (f, e) = frames(b"\x00\x00\x00\x0babc", 10);
        assert!(f.is_empty());
        assert_eq!(e.as_deref(), Some("frame size 11 is outside 0..=10"));
        let (_, e) = frames(b"\xff\xff\xff\xff", 10);
        assert_eq!(e.as_deref(), Some("frame size -1 is outside 0..=10"));
        let (_, e) = frames(b"\x00\x00\x00\x05abc", 10);
        assert_eq!(
            e.as_deref(),
            Some("the connection closed inside a frame (3 of 5 bytes)")
        );
        let (_, e) = frames(b"\x00\x00", 10);
        assert!(e.is_some_and(|e| e.contains("2 of 4")));
    }

    /// A reader that hands out its bytes in pieces of the given sizes (in turn), as a socket
    /// does whatever the sender wrote.
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        turn: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let piece = self.sizes[self.turn % self.sizes.len()].max(1);
            self.turn += 1;
            let n = piece.min(buf.remaining()).min(self.data.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Frames read by a [`FrameReader`]; heads completed by `read_rest`, or (`skip_rest`) by
    /// taking the rest from the source directly, as the splice does. An error ends the list.
    fn reader_frames(
        input: &[u8],
        sizes: Vec<usize>,
        stream_min: usize,
        skip_rest: bool,
    ) -> (Vec<(Bytes, bool)>, Option<String>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut src = Pieces {
                data: input.to_vec(),
                at: 0,
                sizes,
                turn: 0,
            };
            let mut r = FrameReader::new(1 << 20);
            let mut out = Vec::new();
            loop {
                match r.next(&mut src, stream_min).await {
                    Ok(Some(Frame::Whole(f))) => out.push((f, false)),
                    Ok(Some(Frame::Head { head, rest })) => {
                        assert!(head.len() >= HEAD_MIN, "head {}", head.len());
                        assert!(head.len() + rest >= stream_min);
                        if skip_rest {
                            let mut f = head.to_vec();
                            let mut more = vec![0u8; rest];
                            if let Err(e) = src.read_exact(&mut more).await {
                                return (out, Some(e.to_string()));
                            }
                            f.extend(more);
                            out.push((f.into(), true));
                        } else {
                            match r.read_rest(&mut src, head, rest).await {
                                Ok(f) => out.push((f, true)),
                                Err(e) => return (out, Some(e.to_string())),
                            }
                        }
                    }
                    Ok(None) => return (out, None),
                    Err(e) => return (out, Some(e.to_string())),
                }
            }
        })
    }

    #[test]
    fn reader_sizes_and_truncation() {
        let (f, e) = reader_frames(b"\x00\x00\x00\x03abc\x00\x00\x00\x00", vec![3], 8, false);
        let f: Vec<Bytes> = f.into_iter().map(|(b, _)| b).collect();
        assert_eq!(f, vec![Bytes::from_static(b"abc"), Bytes::new()]);
        assert_eq!(e, None);
        let (_, e) = reader_frames(b"\xff\xff\xff\xff", vec![4], 8, false);
        assert_eq!(e.as_deref(), Some("frame size -1 is outside 0..=1048576"));
        let (_, e) = reader_frames(b"\x00\x00\x00\x05abc", vec![2], 8, false);
        assert_eq!(
            e.as_deref(),
            Some("the connection closed inside a frame (3 of 5 bytes)")
        );
        let (_, e) = reader_frames(b"\x00\x00", vec![1], 8, false);
        assert!(e.is_some_and(|e| e.contains("2 of 4")));
        // A large frame cut short after its head: the rest is owed.
        let mut big = 5000u32.to_be_bytes().to_vec();
        big.extend(vec![7u8; 3000]);
        let (_, e) = reader_frames(&big, vec![4096], 2048, false);
        assert_eq!(
            e.as_deref(),
            Some("the connection closed inside a frame (3000 of 5000 bytes)")
        );
    }

    /// A connected pair: what is written to the first is read from the second.
    async fn pair() -> (tokio::net::TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (b, _) = l.accept().await.expect("accept");
        (a, b)
    }

    /// Waits until `n` bytes are in `s`'s receive queue, so that one peek sees them all.
    async fn arrived(s: &TcpStream, n: usize) {
        let mut buf = vec![0u8; n];
        while s.peek(&mut buf).await.expect("peek") < n {
            tokio::task::yield_now().await;
        }
    }

    /// A large frame is looked at, not taken: its head and size come out, and the reader then
    /// reads the whole frame, size included, from the socket. Small frames, bad sizes and too
    /// short a head are left alone.
    #[tokio::test]
    async fn peek_large_takes_nothing() {
        use tokio::io::AsyncWriteExt;
        let (mut tx, mut rx) = pair().await;
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut wire = (big.len() as u32).to_be_bytes().to_vec();
        wire.extend(&big);
        tx.write_all(&wire[..4 + PEEK_SIZE + 10])
            .await
            .expect("write");
        arrived(&rx, 4 + PEEK_SIZE).await;
        let (head, size) = peek_large(&rx, 65_536, 1 << 20)
            .await
            .expect("peek")
            .expect("a large frame");
        assert_eq!(size, big.len());
        assert_eq!(head[..], big[..PEEK_SIZE - 4]);
        // Smaller than stream_min, or larger than the limit: left to the reader.
        assert_eq!(peek_large(&rx, 200_000, 1 << 20).await.expect("peek"), None);
        assert_eq!(peek_large(&rx, 1024, 50_000).await.expect("peek"), None);
        tx.write_all(&wire[4 + PEEK_SIZE + 10..])
            .await
            .expect("write");
        let mut reader = FrameReader::new(1 << 20);
        assert!(reader.is_empty());
        let got = reader.next_whole(&mut rx).await.expect("read");
        assert_eq!(got.as_deref(), Some(&big[..]));
        assert!(reader.is_empty());

        // A large frame with fewer than HEAD_MIN bytes there yet, then a negative size.
        tx.write_all(&wire[..4 + HEAD_MIN - 1])
            .await
            .expect("write");
        arrived(&rx, 4 + HEAD_MIN - 1).await;
        assert_eq!(peek_large(&rx, 1024, 1 << 20).await.expect("peek"), None);
        let (mut tx2, rx2) = pair().await;
        tx2.write_all(&[0xff; 8]).await.expect("write");
        arrived(&rx2, 8).await;
        assert_eq!(peek_large(&rx2, 1, 1 << 20).await.expect("peek"), None);
        // The peer closed: nothing to look at.
        drop(tx2);
        let mut rest = Vec::new();
        let mut rx2 = rx2;
        rx2.read_to_end(&mut rest).await.expect("drain");
        assert_eq!(peek_large(&rx2, 1, 1 << 20).await.expect("peek"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Frames of any sizes, arriving in pieces of any sizes: the reader gives back exactly
        /// the frames sent, in order; a head only of a frame at least `stream_min` long; and
        /// when a head's rest is taken from the socket by someone else (the splice), the
        /// frames after it still come out right: the reader held nothing beyond the head.
        #[test]
        fn reader_returns_the_frames_sent(
            lens in proptest::collection::vec(prop_oneof![0usize..64, 0usize..40_000], 0..12),
            sizes in proptest::collection::vec(1usize..20_000, 1..6),
            stream_min in 1024usize..30_000,
            skip_rest in any::<bool>(),
        ) {
            let mut input = Vec::new();
            let mut want = Vec::new();
            for (i, len) in lens.iter().enumerate() {
                let f: Vec<u8> = (0..*len).map(|j| (i * 31 + j) as u8).collect();
                input.extend((*len as u32).to_be_bytes());
                input.extend(&f);
                want.push(f);
            }
            let (got, err) = reader_frames(&input, sizes, stream_min, skip_rest);
            prop_assert_eq!(err, None);
            prop_assert_eq!(got.len(), want.len());
            for ((g, was_head), w) in got.iter().zip(&want) {
                prop_assert_eq!(&g[..], &w[..]);
                prop_assert!(!was_head || w.len() >= stream_min);
            }
        }

        /// Any bytes: never a panic, and the frames read in pieces are those read at once.
        #[test]
        fn reader_random_bytes(input in proptest::collection::vec(any::<u8>(), 0..512), sizes in proptest::collection::vec(1usize..64, 1..4)) {
            let (f, _) = frames(&input, 1 << 20);
            let (g, _) = reader_frames(&input, sizes, usize::MAX, false);
            let g: Vec<Bytes> = g.into_iter().map(|(b, _)| b).collect();
            prop_assert_eq!(f, g);
        }

        /// Any bytes: never a panic; the frames read are exactly the well-formed prefix; a
        /// frame's buffer is never much larger than the bytes that came.
        #[test]
        fn random_bytes(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let (f, _) = frames(&input, DEFAULT_MAX_FRAME);
            let mut at = 0;
            for frame in &f {
                let size = i32::from_be_bytes(input[at..at + 4].try_into().unwrap()) as usize;
                prop_assert_eq!(&input[at + 4..at + 4 + size], &frame[..]);
                at += 4 + size;
            }
        }

        /// A huge announced size with a short body allocates by what arrives, not by what
        /// was announced.
        #[test]
        fn announced_size_does_not_allocate(size in 1_000_000i32..i32::MAX, body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let mut input = size.to_be_bytes().to_vec();
            input.extend(&body);
            let r = rt.block_on(async {
                let mut r = &input[..];
                FrameReader::new(usize::MAX).next_whole(&mut r).await
            });
            match r {
                Err(FrameError::Truncated { got, want }) => {
                    prop_assert_eq!(got, body.len());
                    prop_assert_eq!(want, size as usize);
                }
                other => prop_assert!(false, "{:?}", other.map(|f| f.map(|b| b.len()))),
            }
        }
    }
}
