//! QR codes as PNG images.

use qrcode::{Color, EcLevel, QrCode};

const PIXELS_PER_MODULE: usize = 8;
/// The blank border scanners need, in modules.
const QUIET_ZONE: usize = 4;

/// A black-on-white PNG of `text`, medium error correction.
pub fn png(text: &str) -> anyhow::Result<Vec<u8>> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)?;
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * QUIET_ZONE) * PIXELS_PER_MODULE;
    let mut pixels = vec![255_u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color == Color::Dark {
            let (mx, my) = (i % modules + QUIET_ZONE, i / modules + QUIET_ZONE);
            for y in my * PIXELS_PER_MODULE..(my + 1) * PIXELS_PER_MODULE {
                pixels[y * side + mx * PIXELS_PER_MODULE..y * side + (mx + 1) * PIXELS_PER_MODULE].fill(0);
            }
        }
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side as u32, side as u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&pixels)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn makes_a_png() {
        let image = super::png("https://example.com/api/overlay/abc").unwrap();
        assert_eq!(&image[..8], b"\x89PNG\r\n\x1a\n");
    }
}
