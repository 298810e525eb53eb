//! Kafka's framing: a big-endian int32 size, then that many bytes. Requests and responses
//! alike.
//!
//! A size above the limit (or negative) ends the connection before anything is allocated for
//! it, and the frame's buffer grows with the bytes that actually arrive (at most
//! [`GROW_STEP`] beyond them), so a peer announcing a huge frame and sending little costs
//! little.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

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

/// Reads one frame's payload (without its size); `Ok(None)` when the peer closed cleanly
/// between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut size = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut size[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated { got, want: 4 })
            };
        }
        got += n;
    }
    let size = i32::from_be_bytes(size);
    let want = usize::try_from(size)
        .ok()
        .filter(|s| *s <= max)
        .ok_or(FrameError::Size {
            size: i64::from(size),
            max,
        })?;
    let mut buf = BytesMut::new();
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
    Ok(Some(buf.freeze()))
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
            let mut out = Vec::new();
            loop {
                match read_frame(&mut r, max).await {
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

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
                read_frame(&mut r, usize::MAX).await
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
