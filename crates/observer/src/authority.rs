//! Lets gRPC's C core (Python `grpcio`, C++) and grpc-java talk to the observer over its unix
//! socket.
//!
//! Those clients send the socket path, percent-encoded (`%2Fvar%2Frun%2Fciliate%2Fhubble.sock`)
//! or raw, as the HTTP/2 `:authority`. That is not a valid authority (RFC 9113 §8.3.1), and
//! the `h2` crate under tonic resets such streams with PROTOCOL_ERROR before any service sees
//! them (hyperium/h2#487 is still open). On a unix socket the authority means nothing, so
//! every connection goes through [`relay`]: it decodes each request's header block with HPACK,
//! replaces an invalid `:authority` with `localhost`, re-encodes the block and passes
//! everything else through unchanged.
//!
//! The re-encoding never indexes into the dynamic table (its table size is 0), so the server's
//! decoder state cannot diverge from ours; our decoder keeps the client's table as HTTP/2
//! requires.

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The HTTP/2 client connection preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// HTTP/2's default SETTINGS_MAX_FRAME_SIZE: every peer accepts frames this large.
const MAX_FRAME: usize = 16_384;
/// A header block larger than this ends the connection (h2's own limit is 16 KiB).
const MAX_HEADER_BLOCK: usize = 1 << 20;

/// Why a relayed connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The client did not speak HTTP/2 as expected.
    #[error("malformed HTTP/2 from the client: {0}")]
    Protocol(String),
}

/// Whether `value` is an authority `h2` accepts.
pub fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// A header block with an invalid `:authority` replaced by `localhost`, re-encoded.
fn rewrite_block(
    decoder: &mut Decoder<'_>,
    encoder: &mut Encoder<'_>,
    block: &[u8],
) -> Result<Vec<u8>, RelayError> {
    let headers = decoder
        .decode(block)
        .map_err(|e| RelayError::Protocol(format!("HPACK: {e:?}")))?;
    Ok(encoder.encode(headers.iter().map(|(name, value)| {
        if name == b":authority" && !valid_authority(value) {
            (&name[..], &b"localhost"[..])
        } else {
            (&name[..], &value[..])
        }
    })))
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> Result<Option<Frame>, RelayError> {
    let mut head = [0u8; 9];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some(Frame {
        kind: head[3],
        flags: head[4],
        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        payload,
    }))
}

fn frame_bytes(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The fragment of a HEADERS frame's payload without padding, and its priority bytes.
fn headers_fragment(f: &Frame) -> Result<(&[u8], Option<&[u8]>), RelayError> {
    let mut p = &f.payload[..];
    let mut pad = 0usize;
    if f.flags & FLAG_PADDED != 0 {
        let (&n, rest) = p
            .split_first()
            .ok_or_else(|| RelayError::Protocol("HEADERS frame without its pad length".into()))?;
        pad = usize::from(n);
        p = rest;
    }
    let mut priority = None;
    if f.flags & FLAG_PRIORITY != 0 {
        if p.len() < 5 {
            return Err(RelayError::Protocol(
                "HEADERS frame cut in its priority".into(),
            ));
        }
        priority = Some(&p[..5]);
        p = &p[5..];
    }
    if pad > p.len() {
        return Err(RelayError::Protocol(
            "HEADERS frame padding exceeds it".into(),
        ));
    }
    Ok((&p[..p.len() - pad], priority))
}

/// Copies the client's HTTP/2 stream to the server, fixing request authorities.
async fn client_to_server(
    mut client: impl AsyncRead + Unpin,
    mut server: impl AsyncWrite + Unpin,
) -> Result<(), RelayError> {
    let mut preface = [0u8; 24];
    client.read_exact(&mut preface).await?;
    if &preface != PREFACE {
        // Not HTTP/2 with prior knowledge: pass it on and let the server answer it.
        server.write_all(&preface).await?;
        tokio::io::copy(&mut client, &mut server).await?;
        return Ok(());
    }
    server.write_all(&preface).await?;
    let mut decoder = Decoder::new();
    let mut encoder = Encoder::new();
    encoder.set_max_table_size(0);
    let mut out = Vec::new();
    while let Some(frame) = read_frame(&mut client).await? {
        out.clear();
        if frame.kind != FRAME_HEADERS {
            frame_bytes(
                &mut out,
                frame.kind,
                frame.flags,
                frame.stream,
                &frame.payload,
            );
            server.write_all(&out).await?;
            continue;
        }
        let (fragment, priority) = headers_fragment(&frame)?;
        let mut block = fragment.to_vec();
        let priority = priority.map(<[u8]>::to_vec);
        let mut end = frame.flags & FLAG_END_HEADERS != 0;
        while !end {
            let next = read_frame(&mut client)
                .await?
                .ok_or_else(|| RelayError::Protocol("connection closed within headers".into()))?;
            if next.kind != FRAME_CONTINUATION || next.stream != frame.stream {
                return Err(RelayError::Protocol(
                    "a header block continued by another frame".into(),
                ));
            }
            block.extend_from_slice(&next.payload);
            if block.len() > MAX_HEADER_BLOCK {
                return Err(RelayError::Protocol("header block too large".into()));
            }
            end = next.flags & FLAG_END_HEADERS != 0;
        }
        let block = rewrite_block(&mut decoder, &mut encoder, &block)?;
        let mut first = priority.unwrap_or_default();
        let room = MAX_FRAME - first.len();
        let split = block.len().min(room);
        first.extend_from_slice(&block[..split]);
        let mut rest = block[split..].chunks(MAX_FRAME).peekable();
        let flags = (frame.flags & (FLAG_END_STREAM | FLAG_PRIORITY))
            | if rest.peek().is_none() {
                FLAG_END_HEADERS
            } else {
                0
            };
        frame_bytes(&mut out, FRAME_HEADERS, flags, frame.stream, &first);
        while let Some(chunk) = rest.next() {
            let flags = if rest.peek().is_none() {
                FLAG_END_HEADERS
            } else {
                0
            };
            frame_bytes(&mut out, FRAME_CONTINUATION, flags, frame.stream, chunk);
        }
        server.write_all(&out).await?;
    }
    server.shutdown().await?;
    Ok(())
}

/// Relays one client connection to the server end until either side closes.
pub async fn relay<C, S>(client: C, server: S) -> Result<(), RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (client_r, mut client_w) = tokio::io::split(client);
    let (mut server_r, server_w) = tokio::io::split(server);
    let up = client_to_server(client_r, server_w);
    let down = async {
        tokio::io::copy(&mut server_r, &mut client_w).await?;
        client_w.shutdown().await?;
        Ok::<_, RelayError>(())
    };
    // Either direction ending ends the connection: the server closed it, or the client left.
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percent_encoded_socket_path_is_no_authority_and_is_replaced() {
        assert!(!valid_authority(b"%2Fvar%2Frun%2Fciliate%2Fhubble.sock"));
        assert!(!valid_authority(b"/var/run/ciliate/hubble.sock"));
        assert!(valid_authority(b"localhost"));
        let mut client = Encoder::new();
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/observer.Observer/ServerStatus"),
            (b":authority", b"%2Ftmp%2Fhubble.sock"),
            (b"te", b"trailers"),
        ];
        let (mut dec, mut enc) = (Decoder::new(), Encoder::new());
        enc.set_max_table_size(0);
        // Twice: the second block refers to the client's dynamic table.
        for _ in 0..2 {
            let block = client.encode(headers.iter().copied());
            let out = rewrite_block(&mut dec, &mut enc, &block).expect("rewrite");
            let got = Decoder::new().decode(&out).expect("decode");
            let authority = got.iter().find(|(n, _)| n == b":authority").expect("kept");
            assert_eq!(authority.1, b"localhost");
            assert_eq!(got.len(), headers.len());
            assert_eq!(got[2].1, b"/observer.Observer/ServerStatus");
        }
    }
}
