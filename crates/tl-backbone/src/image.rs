//! Image decoding and preprocessing: decode, resize (antialiased triangle filter),
//! crop, normalise, lay out.
//!
//! The resize is computed in floating point from the 8-bit pixels, with separable
//! weights defined exactly as in PIL's antialiased bilinear resampling (support grows
//! with the downscale factor) but without PIL's 8-bit rounding between and after the
//! passes. `tools/reference/reference.py` implements the same arithmetic in numpy, so
//! parity tests compare embeddings of identical input tensors.

use std::io::Cursor;
use std::path::PathBuf;

use image::{ImageReader, Limits};
use tl_assets::manifest::{ChannelOrder, ImageSpec, Layout, Resize};

/// Largest accepted side, in pixels; larger headers are refused before decoding.
pub const MAX_SIDE: u32 = 16_384;
/// Largest decoder allocation, in bytes.
pub const MAX_ALLOC: u64 = 1 << 30;

/// One image to embed.
#[derive(Debug, Clone)]
pub enum ImageInput {
    /// An image file (JPEG, PNG, WebP, GIF first frame, BMP).
    Path(PathBuf),
    /// Encoded image bytes, with a name for error messages.
    Encoded {
        /// Name used in errors (e.g. the member of an archive).
        name: String,
        /// The file's bytes.
        bytes: Vec<u8>,
    },
    /// Raw 8-bit pixels (MNIST, 8x8 digits after scaling to 0..=255).
    Pixels(RawImage),
}

impl ImageInput {
    /// A short name for messages.
    pub fn describe(&self) -> String {
        match self {
            ImageInput::Path(p) => p.display().to_string(),
            ImageInput::Encoded { name, .. } => name.clone(),
            ImageInput::Pixels(r) => format!("{}x{}x{} pixel array", r.width, r.height, r.channels),
        }
    }
}

/// Raw 8-bit pixels in row-major height x width x channels order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawImage {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 1 (gray) or 3 (RGB).
    pub channels: u8,
    /// `height * width * channels` bytes.
    pub data: Vec<u8>,
}

/// A decoded RGB image, 8 bits per channel.
#[derive(Debug, Clone)]
pub(crate) struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Decode any accepted input to RGB8. Alpha is dropped (as PIL's `convert("RGB")`),
/// gray is replicated, 16-bit is reduced to 8-bit, CMYK is converted by the decoder.
pub(crate) fn decode(input: &ImageInput) -> Result<Rgb8, String> {
    match input {
        ImageInput::Path(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
            decode_bytes(&bytes)
        }
        ImageInput::Encoded { bytes, .. } => decode_bytes(bytes),
        ImageInput::Pixels(raw) => from_raw(raw),
    }
}

fn decode_bytes(bytes: &[u8]) -> Result<Rgb8, String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".into());
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        return Err("unrecognised image format (expected JPEG, PNG, WebP, GIF or BMP)".into());
    }
    // Reading the header allocates nothing, so check the announced size before decoding.
    let (w, h) = reader.into_dimensions().map_err(|e| decode_error(&e))?;
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!(
            "image is {w}x{h}, larger than the {MAX_SIDE}x{MAX_SIDE} limit (decompression-bomb guard)"
        ));
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    reader.limits(limits());
    let img = reader.decode().map_err(|e| decode_error(&e))?;
    let rgb = img.to_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    if width == 0 || height == 0 {
        return Err("image has no pixels".into());
    }
    Ok(Rgb8 {
        width,
        height,
        data: rgb.into_raw(),
    })
}

fn limits() -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    limits
}

fn decode_error(e: &image::ImageError) -> String {
    match e {
        image::ImageError::Limits(_) => format!(
            "{e} (images are limited to {MAX_SIDE}x{MAX_SIDE} and {} MiB while decoding)",
            MAX_ALLOC >> 20
        ),
        _ => format!("cannot decode: {e}"),
    }
}

fn from_raw(raw: &RawImage) -> Result<Rgb8, String> {
    let (w, h) = (raw.width as usize, raw.height as usize);
    if w == 0 || h == 0 {
        return Err("pixel array has no pixels".into());
    }
    if raw.channels != 1 && raw.channels != 3 {
        return Err(format!(
            "pixel array has {} channels; expected 1 or 3",
            raw.channels
        ));
    }
    let want = w * h * raw.channels as usize;
    if raw.data.len() != want {
        return Err(format!(
            "pixel array holds {} bytes; {w}x{h}x{} needs {want}",
            raw.data.len(),
            raw.channels
        ));
    }
    let data = if raw.channels == 3 {
        raw.data.clone()
    } else {
        raw.data.iter().flat_map(|&v| [v, v, v]).collect()
    };
    Ok(Rgb8 {
        width: w,
        height: h,
        data,
    })
}

/// Separable resampling weights for output positions `start..start + count` of an axis
/// resized from `in_len` to `out_len`.
#[derive(Debug)]
struct AxisWeights {
    /// First input index of each output position's taps.
    first: Vec<usize>,
    /// Taps per output position, padded to `taps` with zeros.
    weights: Vec<f32>,
    taps: usize,
}

fn axis_weights(in_len: usize, out_len: usize, start: usize, count: usize) -> AxisWeights {
    let scale = in_len as f64 / out_len as f64;
    let filter_scale = scale.max(1.0);
    let support = filter_scale; // triangle filter radius 1, stretched when downscaling
    let taps = (support.ceil() as usize) * 2 + 1;
    let mut first = Vec::with_capacity(count);
    let mut weights = vec![0f32; count * taps];
    for (k, i) in (start..start + count).enumerate() {
        let center = (i as f64 + 0.5) * scale;
        let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
        let hi = ((center + support + 0.5).floor() as usize).min(in_len);
        let mut w = Vec::with_capacity(hi.saturating_sub(lo));
        for j in lo..hi {
            let x = (j as f64 - center + 0.5) / filter_scale;
            w.push((1.0 - x.abs()).max(0.0));
        }
        let total: f64 = w.iter().sum();
        first.push(lo);
        for (t, v) in w.iter().take(taps).enumerate() {
            weights[k * taps + t] = if total > 0.0 { (v / total) as f32 } else { 0.0 };
        }
    }
    AxisWeights {
        first,
        weights,
        taps,
    }
}

/// Size of the resized image and the crop window inside it: (resized w, h, left, top).
pub(crate) fn geometry(
    width: usize,
    height: usize,
    spec: &ImageSpec,
) -> (usize, usize, usize, usize) {
    let size = spec.size as usize;
    match spec.resize {
        Resize::Stretch => (size, size, 0, 0),
        Resize::ShorterCrop { shorter } => {
            let shorter = shorter as usize;
            let (rw, rh) = if width <= height {
                let h = ((height as f64 * shorter as f64 / width as f64) + 0.5).floor() as usize;
                (shorter, h.max(shorter))
            } else {
                let w = ((width as f64 * shorter as f64 / height as f64) + 0.5).floor() as usize;
                (w.max(shorter), shorter)
            };
            (rw, rh, (rw - size) / 2, (rh - size) / 2)
        }
    }
}

/// Resize, crop, normalise and lay out `img` into `out` (`size * size * 3` floats).
pub(crate) fn preprocess_into(img: &Rgb8, spec: &ImageSpec, out: &mut [f32]) {
    let size = spec.size as usize;
    debug_assert_eq!(out.len(), size * size * 3);
    let (rw, rh, left, top) = geometry(img.width, img.height, spec);
    let wx = axis_weights(img.width, rw, left, size);
    let wy = axis_weights(img.height, rh, top, size);
    // Only the input rows some output row reads need the horizontal pass.
    let row_lo = wy.first[0];
    let row_hi = (wy.first[size - 1] + wy.taps).min(img.height);
    let rows = row_hi - row_lo;
    let mut horiz = vec![0f32; rows * size * 3];
    for r in 0..rows {
        let src = &img.data[(row_lo + r) * img.width * 3..(row_lo + r + 1) * img.width * 3];
        let dst = &mut horiz[r * size * 3..(r + 1) * size * 3];
        for x in 0..size {
            let f = wx.first[x];
            let (mut a, mut b, mut c) = (0f32, 0f32, 0f32);
            for t in 0..wx.taps {
                let w = wx.weights[x * wx.taps + t];
                if w == 0.0 {
                    continue;
                }
                let p = (f + t) * 3;
                a += w * src[p] as f32;
                b += w * src[p + 1] as f32;
                c += w * src[p + 2] as f32;
            }
            dst[x * 3] = a;
            dst[x * 3 + 1] = b;
            dst[x * 3 + 2] = c;
        }
    }
    let to_unit = spec.pixel_max / 255.0;
    // Source channel feeding each model channel, and that channel's affine map.
    let src_ch: [usize; 3] = match spec.channels {
        ChannelOrder::Rgb => [0, 1, 2],
        ChannelOrder::Bgr => [2, 1, 0],
    };
    let scale: [f32; 3] = std::array::from_fn(|c| to_unit / spec.std[c]);
    let shift: [f32; 3] = std::array::from_fn(|c| -spec.mean[c] / spec.std[c]);
    for y in 0..size {
        let f = wy.first[y] - row_lo;
        let mut acc = [0f32; 3];
        for x in 0..size {
            acc.iter_mut().for_each(|v| *v = 0.0);
            for t in 0..wy.taps {
                let w = wy.weights[y * wy.taps + t];
                if w == 0.0 {
                    continue;
                }
                let p = ((f + t) * size + x) * 3;
                acc[0] += w * horiz[p];
                acc[1] += w * horiz[p + 1];
                acc[2] += w * horiz[p + 2];
            }
            for c in 0..3 {
                let v = acc[src_ch[c]] * scale[c] + shift[c];
                let idx = match spec.layout {
                    Layout::Nchw => c * size * size + y * size + x,
                    Layout::Nhwc => (y * size + x) * 3 + c,
                };
                out[idx] = v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_stay_in_bounds() {
        for (inp, out) in [
            (28, 224),
            (640, 256),
            (256, 256),
            (1, 224),
            (224, 1),
            (1000, 3),
        ] {
            let w = axis_weights(inp, out, 0, out);
            for i in 0..out {
                let s: f32 = w.weights[i * w.taps..(i + 1) * w.taps].iter().sum();
                assert!((s - 1.0).abs() < 1e-5, "{inp}->{out} at {i}: {s}");
                let used = w.weights[i * w.taps..(i + 1) * w.taps]
                    .iter()
                    .rposition(|v| *v != 0.0)
                    .unwrap_or(0);
                assert!(
                    w.first[i] + used < inp,
                    "{inp}->{out} at {i} reads past the end"
                );
            }
        }
    }

    #[test]
    fn identity_resize_keeps_pixels() {
        let w = axis_weights(8, 8, 0, 8);
        for i in 0..8 {
            assert_eq!(
                w.first[i]
                    + w.weights[i * w.taps..(i + 1) * w.taps]
                        .iter()
                        .position(|v| *v == 1.0)
                        .unwrap(),
                i
            );
        }
    }

    #[test]
    fn geometry_keeps_the_aspect_ratio_and_centres_the_crop() {
        let spec = |resize| ImageSpec {
            size: 224,
            resize,
            pixel_max: 1.0,
            mean: [0.0; 3],
            std: [1.0; 3],
            layout: Layout::Nchw,
            channels: ChannelOrder::Rgb,
        };
        let crop = spec(Resize::ShorterCrop { shorter: 256 });
        assert_eq!(geometry(640, 480, &crop), (341, 256, 58, 16));
        assert_eq!(geometry(480, 640, &crop), (256, 341, 16, 58));
        assert_eq!(geometry(1, 1, &crop), (256, 256, 16, 16));
        assert_eq!(geometry(28, 28, &spec(Resize::Stretch)), (224, 224, 0, 0));
    }
}

/// The embedding loop, as a method of [`crate::Backbone`].
mod embed_loop {

    use std::time::{Duration, Instant};

    use ort::value::Tensor;
    use rayon::prelude::*;

    use crate::*;

    impl crate::Backbone {
        /// Embed images. Decoding and resizing of the next batch run on the rayon pool while
        /// the current batch is inside ONNX Runtime.
        pub fn embed_images(
            &self,
            images: &[ImageInput],
            on_error: OnError,
        ) -> Result<Embeddings, BackboneError> {
            let start = Instant::now();
            let Encoder::Image(spec) = &self.encoder else {
                return Err(self.wrong_modality("texts"));
            };
            let mut result = self.empty(images.len());
            let per = (spec.size * spec.size * 3) as usize;
            let bs = self.config.batch_size;
            let prepare =
                |range: std::ops::Range<usize>| -> (Vec<f32>, Vec<Result<(), String>>, Duration) {
                    let t0 = Instant::now();
                    let mut buf = vec![0f32; range.len() * per];
                    let status: Vec<Result<(), String>> = buf
                        .par_chunks_mut(per)
                        .zip(range.into_par_iter())
                        .map(|(out, i)| {
                            crate::image::decode(&images[i])
                                .map(|img| crate::image::preprocess_into(&img, spec, out))
                        })
                        .collect();
                    (buf, status, t0.elapsed())
                };
            let shape = |n: usize| -> Vec<usize> {
                let s = spec.size as usize;
                match spec.layout {
                    tl_assets::manifest::Layout::Nchw => vec![n, 3, s, s],
                    tl_assets::manifest::Layout::Nhwc => vec![n, s, s, 3],
                }
            };
            let bar = self.bar(images.len());
            let starts: Vec<usize> = (0..images.len()).step_by(bs).collect();
            let range_of = |s: usize| s..(s + bs).min(images.len());
            let mut next = starts.first().map(|&s| prepare(range_of(s)));
            for (k, &s) in starts.iter().enumerate() {
                let (buf, status, took) = next.take().expect("each batch is prepared ahead");
                let range = range_of(s);
                result.stats.timings.prepare += took;
                for (j, st) in status.iter().enumerate() {
                    if let Err(message) = st {
                        let i = range.start + j;
                        self.item_failed(
                            &mut result,
                            on_error,
                            i,
                            images[i].describe(),
                            message.clone(),
                        )?;
                    }
                }
                let mut rows = Vec::with_capacity(range.len());
                let mut data = Vec::with_capacity(buf.len());
                for (j, st) in status.iter().enumerate() {
                    if st.is_ok() {
                        rows.push(range.start + j);
                        data.extend_from_slice(&buf[j * per..(j + 1) * per]);
                    }
                }
                drop(buf);
                let following = starts.get(k + 1).map(|&s2| range_of(s2));
                // Run this batch while the next one is decoded and resized.
                let (ran, prepared) = rayon::join(
                    || -> Result<(), BackboneError> {
                        if rows.is_empty() {
                            return Ok(());
                        }
                        let tensor = Tensor::from_array((shape(rows.len()), data))
                            .map_err(|e| self.ort(e))?;
                        let inputs = vec![(self.input_names[0].clone(), tensor.into_dyn())];
                        let dim = self.spec.dim;
                        self.run_batch(
                            inputs,
                            &rows,
                            &mut result,
                            |out, r, row| row.copy_from_slice(&out[r * dim..(r + 1) * dim]),
                            false,
                        )
                    },
                    || following.map(&prepare),
                );
                ran?;
                next = prepared;
                bar.inc(range.len() as u64);
            }
            bar.finish_and_clear();
            result.stats.timings.total = start.elapsed();
            Ok(result)
        }
    }
}
