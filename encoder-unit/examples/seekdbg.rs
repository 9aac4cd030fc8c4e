use divisor_encoder::ingest::{Demuxed, FileSource};
fn main() {
    let p = std::env::args().nth(1).unwrap();
    let mut s = FileSource::open(std::path::Path::new(&p)).unwrap();
    for t in [0u64, 100, 1000, 2500, 4000, 60000, 0] {
        let r = s.seek(t);
        let mut first = Vec::new();
        for _ in 0..4 { if let Ok(Demuxed::Frame(f)) = s.next_frame() { first.push((f.track, f.pts, f.dts, f.flags.0)); } }
        println!("seek {t} -> {r:?} {first:?}");
    }
}
