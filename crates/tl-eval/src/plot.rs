//! PNG figures: the labelled SVG of a figure rasterised with resvg, with DejaVu Sans compiled
//! into the binary. A PNG therefore carries exactly what its SVG carries (title, axis labels,
//! tick labels, legend, cell values) on every machine, with no system font looked up, and there
//! is one drawing of each figure instead of a second, text-less one.

use std::sync::{Arc, OnceLock};

use resvg::tiny_skia;
use resvg::usvg::{self, fontdb};

use crate::EvalError;

/// PNGs are drawn at twice the SVG's size, so that 11-pixel labels stay legible when the
/// picture is shown scaled (a README, a report viewer).
pub const PNG_SCALE: f32 = 2.0;

/// The family every figure's SVG names, mapped onto the compiled-in font.
const FAMILY: &str = "DejaVu Sans";

fn fonts() -> Arc<fontdb::Database> {
    static FONTS: OnceLock<Arc<fontdb::Database>> = OnceLock::new();
    FONTS
        .get_or_init(|| {
            let mut db = fontdb::Database::new();
            db.load_font_data(dejavu::sans::regular().to_vec());
            db.load_font_data(dejavu::sans::bold().to_vec());
            db.set_sans_serif_family(FAMILY);
            Arc::new(db)
        })
        .clone()
}

/// Rasterises `svg` (one of this crate's figures) to PNG bytes at [`PNG_SCALE`], on white.
pub fn svg_to_png(svg: &str) -> Result<Vec<u8>, EvalError> {
    let options = usvg::Options {
        font_family: FAMILY.into(),
        fontdb: fonts(),
        ..usvg::Options::default()
    };
    let bad = |what: String| EvalError::Figure(what);
    let tree = usvg::Tree::from_str(svg, &options).map_err(|e| bad(format!("SVG: {e}")))?;
    let size = tree.size();
    let (w, h) = (
        (size.width() * PNG_SCALE).ceil() as u32,
        (size.height() * PNG_SCALE).ceil() as u32,
    );
    let mut pixmap = tiny_skia::Pixmap::new(w, h)
        .ok_or_else(|| bad(format!("a {w} x {h} picture is empty or too large")))?;
    pixmap.fill(tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        tiny_skia::Transform::from_scale(PNG_SCALE, PNG_SCALE),
        &mut pixmap.as_mut(),
    );
    pixmap.encode_png().map_err(|e| bad(format!("PNG: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png: &[u8]) -> image::RgbImage {
        image::load_from_memory(png).unwrap().to_rgb8()
    }

    /// Dark pixels inside a rectangle of the picture (in SVG units).
    fn ink(img: &image::RgbImage, x0: u32, y0: u32, x1: u32, y1: u32) -> usize {
        let s = PNG_SCALE as u32;
        (y0 * s..y1 * s)
            .flat_map(|y| (x0 * s..x1 * s).map(move |x| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 128))
            .count()
    }

    #[test]
    fn text_is_drawn_with_the_compiled_in_font_and_nothing_else_is_inked() {
        let svg = |text: &str| {
            format!(
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"200\" height=\"60\" \
                 font-family=\"sans-serif\" font-size=\"14\"><text x=\"10\" y=\"30\">{text}</text></svg>"
            )
        };
        let img = decode(&svg_to_png(&svg("accuracy 89.9%")).unwrap());
        assert_eq!(img.dimensions(), (400, 120));
        let inked = ink(&img, 10, 15, 150, 35);
        assert!(inked > 200, "the label is drawn: {inked} dark pixels");
        assert_eq!(ink(&img, 0, 40, 200, 60), 0, "below the text stays white");
        // Another string, other pixels: glyphs, not a box per character.
        let other = decode(&svg_to_png(&svg("macro-F1 12.0%")).unwrap());
        assert_ne!(img, other);
        assert_eq!(
            ink(&decode(&svg_to_png(&svg("")).unwrap()), 0, 0, 200, 60),
            0
        );
    }

    #[test]
    fn a_broken_svg_is_an_error_not_a_panic() {
        let e = svg_to_png("<svg").unwrap_err().to_string();
        assert!(e.contains("SVG"), "{e}");
    }
}
