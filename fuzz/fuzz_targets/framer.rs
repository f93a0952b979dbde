//! The XML stream framer (rookery-xml, RFC 6120 §4.2, §11) fed arbitrary bytes in arbitrary
//! chunkings. Besides not panicking, the framer must not depend on how the bytes were cut:
//! the frames (whitespace runs aside, which it may split or merge) and the error, if any,
//! are the same as when everything arrives at once. Each element is also parsed into a
//! tree, as a module would.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rookery_xml::{Frame, Framer, Limits};

/// Small limits so the size, depth and attribute checks are reached.
const LIMITS: Limits = Limits { max_stanza_bytes: 4096, max_depth: 8, max_attrs: 8, max_header_bytes: 1024 };

#[derive(Debug, PartialEq)]
enum Seen {
    Frame(Box<Frame>),
    Error(rookery_xml::XmlError),
}

/// Feeds `chunks` in order; collects every frame and the first error.
fn run<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> Vec<Seen> {
    let mut framer = Framer::new(LIMITS);
    let mut seen = Vec::new();
    for chunk in chunks {
        framer.read_buf().extend_from_slice(chunk);
        loop {
            match framer.next_frame() {
                Ok(Some(Frame::Whitespace)) => {}
                Ok(Some(frame)) => {
                    if let Frame::Element(e) = &frame {
                        let _ = e.parse();
                        // A negotiation step that restarts the stream (RFC 6120 §4.3.3).
                        if e.name == "proceed" || e.name == "success" {
                            framer.restart();
                        }
                    }
                    seen.push(Seen::Frame(Box::new(frame)));
                }
                Ok(None) => break,
                Err(e) => {
                    seen.push(Seen::Error(e));
                    return seen;
                }
            }
        }
    }
    seen
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes seed the chunk sizes; the rest is the stream.
    let Some((seed, stream)) = data.split_first_chunk::<2>() else { return };
    let mut state = u16::from_le_bytes(*seed) as u32 | 1;
    let mut cuts = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        // xorshift: lengths 1..=64, so single bytes and splits inside tokens are common.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = (state % 64 + 1) as usize;
        let end = (at + len).min(stream.len());
        cuts.push(&stream[at..end]);
        at = end;
    }
    let whole = run(std::iter::once(stream));
    let chunked = run(cuts.into_iter());
    assert_eq!(whole, chunked, "the framer's output depends on the chunking");
});
