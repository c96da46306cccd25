//! Export of a tuned encoder as an fp32 ONNX graph that ONNX Runtime runs like the
//! published sentence-transformers exports: inputs `input_ids`, `attention_mask`,
//! `token_type_ids` (int64 `[batch, tokens]`), output `last_hidden_state`
//! (`[batch, tokens, hidden]`).
//!
//! Image networks export as `input` (`[batch, 3, r, r]`) to `features` and `logits`.
//!
//! The protobuf is written by hand (a few message types of `onnx.proto`, opset 17): the
//! graph is fixed, and a protobuf code generator would be a build dependency for ~100
//! lines of encoding.

use std::path::Path;

use crate::FinetuneError;
use crate::bert::BertClassifier;
use crate::cnn::{ConvNet, Unit};
use crate::conv::Padding;

/// Opset of the exported graph (17 has `LayerNormalization`).
pub const OPSET: i64 = 17;

#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn tag(&mut self, field: u32, wire: u8) {
        self.varint(((field as u64) << 3) | wire as u64);
    }
    fn int(&mut self, field: u32, v: i64) {
        self.tag(field, 0);
        self.varint(v as u64);
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.tag(field, 2);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, field: u32, s: &str) {
        self.bytes(field, s.as_bytes());
    }
    fn msg(&mut self, field: u32, m: Pb) {
        self.bytes(field, &m.0);
    }
    fn float(&mut self, field: u32, v: f32) {
        self.tag(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

const FLOAT: i64 = 1;
const INT64: i64 = 7;

enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Str(&'static str),
}

struct Graph {
    nodes: Vec<Pb>,
    inits: Vec<Pb>,
    counter: usize,
}

impl Graph {
    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)]) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.node_to(op, inputs, attrs, &out);
        out
    }

    fn node_to(&mut self, op: &str, inputs: &[&str], attrs: &[(&str, Attr)], out: &str) {
        let mut n = Pb::default();
        for i in inputs {
            n.str(1, i);
        }
        n.str(2, out);
        n.str(3, &format!("{op}_{}", self.nodes.len()));
        n.str(4, op);
        for (name, a) in attrs {
            let mut p = Pb::default();
            p.str(1, name);
            match a {
                Attr::Int(v) => {
                    p.int(3, *v);
                    p.int(20, 2);
                }
                Attr::Float(v) => {
                    p.float(2, *v);
                    p.int(20, 1);
                }
                Attr::Ints(vs) => {
                    for v in vs {
                        p.int(8, *v);
                    }
                    p.int(20, 7);
                }
                Attr::Str(v) => {
                    p.str(4, v);
                    p.int(20, 3);
                }
            }
            n.msg(5, p);
        }
        self.nodes.push(n);
    }

    fn init_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init(name, dims, FLOAT, &raw)
    }

    fn init_i64(&mut self, name: &str, dims: &[usize], data: &[i64]) -> String {
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init(name, dims, INT64, &raw)
    }

    /// An initializer (TensorProto) from little-endian bytes of element type `elem`.
    fn init(&mut self, name: &str, dims: &[usize], elem: i64, raw: &[u8]) -> String {
        let mut t = Pb::default();
        for d in dims {
            t.int(1, *d as i64);
        }
        t.int(2, elem);
        t.str(8, name);
        t.bytes(9, raw);
        self.inits.push(t);
        name.to_string()
    }

    /// `x · Wᵀ + b` with `w` stored `[out, in]`: the initializer holds `Wᵀ` `[in, out]`.
    fn linear(
        &mut self,
        x: &str,
        name: &str,
        w: &[f32],
        b: &[f32],
        d_in: usize,
        d_out: usize,
    ) -> String {
        let mut wt = vec![0.0f32; w.len()];
        for o in 0..d_out {
            for i in 0..d_in {
                wt[i * d_out + o] = w[o * d_in + i];
            }
        }
        let wn = self.init_f32(&format!("{name}.weight_t"), &[d_in, d_out], &wt);
        let bn = self.init_f32(&format!("{name}.bias"), &[d_out], b);
        let m = self.node("MatMul", &[x, &wn], &[]);
        self.node("Add", &[&m, &bn], &[])
    }

    fn layer_norm(&mut self, x: &str, name: &str, g: &[f32], b: &[f32], eps: f32) -> String {
        let gn = self.init_f32(&format!("{name}.weight"), &[g.len()], g);
        let bn = self.init_f32(&format!("{name}.bias"), &[b.len()], b);
        self.node(
            "LayerNormalization",
            &[x, &gn, &bn],
            &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
        )
    }
}

fn value_info(name: &str, elem: i64, dims: &[&str]) -> Pb {
    let mut shape = Pb::default();
    for d in dims {
        let mut dim = Pb::default();
        if let Ok(v) = d.parse::<i64>() {
            dim.int(1, v);
        } else {
            dim.str(2, d);
        }
        shape.msg(1, dim);
    }
    let mut tensor = Pb::default();
    tensor.int(1, elem);
    tensor.msg(2, shape);
    let mut ty = Pb::default();
    ty.msg(1, tensor);
    let mut vi = Pb::default();
    vi.str(1, name);
    vi.msg(2, ty);
    vi
}

/// The encoder of `model` as ONNX bytes (the classifier is not part of the graph).
pub fn encoder_onnx(model: &BertClassifier, producer_note: &str) -> Vec<u8> {
    let c = &model.config;
    let s = &model.slots;
    let p = |r: &std::ops::Range<usize>| &model.params[r.clone()];
    let (h, heads, inter) = (c.hidden_size, c.num_attention_heads, c.intermediate_size);
    let d = h / heads;
    let mut g = Graph {
        nodes: Vec::new(),
        inits: Vec::new(),
        counter: 0,
    };
    let word = g.init_f32(
        "embeddings.word_embeddings.weight",
        &[c.vocab_size, h],
        p(&s.word),
    );
    let pos = g.init_f32(
        "embeddings.position_embeddings.weight",
        &[c.max_position_embeddings, h],
        p(&s.pos),
    );
    let typ = g.init_f32(
        "embeddings.token_type_embeddings.weight",
        &[c.type_vocab_size, h],
        p(&s.typ),
    );
    let zero = g.init_i64("const.zero", &[], &[0]);
    let one = g.init_i64("const.one", &[], &[1]);
    let one_f = g.init_f32("const.one_f", &[], &[1.0]);
    let half = g.init_f32("const.half", &[], &[0.5]);
    let sqrt2 = g.init_f32("const.sqrt2", &[], &[std::f32::consts::SQRT_2]);
    let neg = g.init_f32("const.mask_value", &[], &[f32::MIN]);
    let scale = g.init_f32("const.scale", &[], &[1.0 / (d as f32).sqrt()]);
    let split = g.init_i64("const.qkv_split", &[3], &[h as i64, h as i64, h as i64]);
    let heads_shape = g.init_i64("const.heads_shape", &[4], &[0, 0, heads as i64, d as i64]);
    let merge_shape = g.init_i64("const.merge_shape", &[3], &[0, 0, h as i64]);
    let mask_axes = g.init_i64("const.mask_axes", &[2], &[1, 2]);

    let we = g.node("Gather", &[&word, "input_ids"], &[]);
    let te = g.node("Gather", &[&typ, "token_type_ids"], &[]);
    let shape = g.node("Shape", &["input_ids"], &[]);
    let t = g.node("Gather", &[&shape, &one], &[("axis", Attr::Int(0))]);
    let pos_ids = g.node("Range", &[&zero, &t, &one], &[]);
    let pe = g.node("Gather", &[&pos, &pos_ids], &[]);
    let e = g.node("Add", &[&we, &te], &[]);
    let e = g.node("Add", &[&e, &pe], &[]);
    let mut x = g.layer_norm(
        &e,
        "embeddings.LayerNorm",
        p(&s.emb_g),
        p(&s.emb_b),
        c.layer_norm_eps,
    );

    // Additive mask: 0 where attended, the lowest float where padded (as transformers).
    let m = g.node("Cast", &["attention_mask"], &[("to", Attr::Int(FLOAT))]);
    let inv = g.node("Sub", &[&one_f, &m], &[]);
    let bias = g.node("Mul", &[&inv, &neg], &[]);
    let bias = g.node("Unsqueeze", &[&bias, &mask_axes], &[]);

    for (l, ls) in s.layers.iter().enumerate() {
        let pre = format!("encoder.layer.{l}");
        let qkv = g.linear(
            &x,
            &format!("{pre}.attention.self.qkv"),
            p(&ls.qkv_w),
            p(&ls.qkv_b),
            h,
            3 * h,
        );
        let (q, k, v) = (g.fresh("q"), g.fresh("k"), g.fresh("v"));
        let mut n = Pb::default();
        n.str(1, &qkv);
        n.str(1, &split);
        for o in [&q, &k, &v] {
            n.str(2, o);
        }
        n.str(3, &format!("Split_{}", g.nodes.len()));
        n.str(4, "Split");
        let mut a = Pb::default();
        a.str(1, "axis");
        a.int(3, 2);
        a.int(20, 2);
        n.msg(5, a);
        g.nodes.push(n);
        let q = g.node("Reshape", &[&q, &heads_shape], &[]);
        let q = g.node(
            "Transpose",
            &[&q],
            &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let k = g.node("Reshape", &[&k, &heads_shape], &[]);
        let k = g.node(
            "Transpose",
            &[&k],
            &[("perm", Attr::Ints(vec![0, 2, 3, 1]))],
        );
        let v = g.node("Reshape", &[&v, &heads_shape], &[]);
        let v = g.node(
            "Transpose",
            &[&v],
            &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let sc = g.node("MatMul", &[&q, &k], &[]);
        let sc = g.node("Mul", &[&sc, &scale], &[]);
        let sc = g.node("Add", &[&sc, &bias], &[]);
        let pr = g.node("Softmax", &[&sc], &[("axis", Attr::Int(-1))]);
        let ctx = g.node("MatMul", &[&pr, &v], &[]);
        let ctx = g.node(
            "Transpose",
            &[&ctx],
            &[("perm", Attr::Ints(vec![0, 2, 1, 3]))],
        );
        let ctx = g.node("Reshape", &[&ctx, &merge_shape], &[]);
        let a = g.linear(
            &ctx,
            &format!("{pre}.attention.output.dense"),
            p(&ls.ao_w),
            p(&ls.ao_b),
            h,
            h,
        );
        let r = g.node("Add", &[&a, &x], &[]);
        let x1 = g.layer_norm(
            &r,
            &format!("{pre}.attention.output.LayerNorm"),
            p(&ls.ln1_g),
            p(&ls.ln1_b),
            c.layer_norm_eps,
        );
        let i = g.linear(
            &x1,
            &format!("{pre}.intermediate.dense"),
            p(&ls.i_w),
            p(&ls.i_b),
            h,
            inter,
        );
        // GELU, erf form: x * 0.5 * (1 + erf(x / sqrt 2)).
        let z = g.node("Div", &[&i, &sqrt2], &[]);
        let z = g.node("Erf", &[&z], &[]);
        let z = g.node("Add", &[&z, &one_f], &[]);
        let z = g.node("Mul", &[&z, &half], &[]);
        let gl = g.node("Mul", &[&i, &z], &[]);
        let o = g.linear(
            &gl,
            &format!("{pre}.output.dense"),
            p(&ls.o_w),
            p(&ls.o_b),
            inter,
            h,
        );
        let r2 = g.node("Add", &[&o, &x1], &[]);
        x = g.layer_norm(
            &r2,
            &format!("{pre}.output.LayerNorm"),
            p(&ls.ln2_g),
            p(&ls.ln2_b),
            c.layer_norm_eps,
        );
    }
    g.node_to("Identity", &[&x], &[], "last_hidden_state");

    let mut graph = Pb::default();
    for n in g.nodes {
        graph.msg(1, n);
    }
    graph.str(2, "bert_encoder");
    for t in g.inits {
        graph.msg(5, t);
    }
    for name in ["input_ids", "attention_mask", "token_type_ids"] {
        graph.msg(11, value_info(name, INT64, &["batch", "tokens"]));
    }
    let hs = h.to_string();
    graph.msg(
        12,
        value_info("last_hidden_state", FLOAT, &["batch", "tokens", &hs]),
    );

    model_bytes(graph, producer_note)
}

/// A ModelProto around `graph`.
fn model_bytes(graph: Pb, producer_note: &str) -> Vec<u8> {
    let mut model_pb = Pb::default();
    model_pb.int(1, 8); // IR version 8 (ONNX 1.10+)
    model_pb.str(2, "transfer-learning-rs tl-finetune");
    model_pb.str(3, env!("CARGO_PKG_VERSION"));
    model_pb.str(6, producer_note);
    model_pb.msg(7, graph);
    let mut opset = Pb::default();
    opset.str(1, "");
    opset.int(2, OPSET);
    model_pb.msg(8, opset);
    model_pb.0
}

/// Writes [`encoder_onnx`] to `path` atomically.
pub fn write_encoder_onnx(
    model: &BertClassifier,
    path: &Path,
    note: &str,
) -> Result<(), FinetuneError> {
    crate::atomic_write(path, &encoder_onnx(model, note))
}

/// The network of `net` as ONNX bytes at input side `resolution`: input `input`
/// (`[batch, 3, r, r]`), outputs `features` (pooled, `[batch, F]`) and `logits`
/// (`[batch, classes]`, the trained classifier). BatchNorm is folded into each
/// convolution in f64, as tools/convert does for the published models.
pub fn convnet_onnx(net: &ConvNet, resolution: usize, producer_note: &str) -> Vec<u8> {
    let mut g = Graph {
        nodes: Vec::new(),
        inits: Vec::new(),
        counter: 0,
    };
    let lo = g.init_f32("relu6_lo", &[], &[0.0]);
    let hi = g.init_f32("relu6_hi", &[], &[6.0]);
    let mut x = "input".to_string();
    for (bi, b) in net.blocks.iter().enumerate() {
        let shortcut = x.clone();
        for (ui, u) in b.units.iter().enumerate() {
            let (w, bias) = folded(net, u);
            let name = format!("block{bi}.unit{ui}");
            let wshape = [u.cout, if u.depthwise { 1 } else { u.cin }, u.k, u.k];
            let wn = g.init_f32(&format!("{name}.weight"), &wshape, &w);
            let bn = g.init_f32(&format!("{name}.bias"), &[u.cout], &bias);
            let k = u.k as i64;
            let s = u.stride as i64;
            let mut attrs = vec![
                ("kernel_shape", Attr::Ints(vec![k, k])),
                ("strides", Attr::Ints(vec![s, s])),
                (
                    "group",
                    Attr::Int(if u.depthwise { u.cout as i64 } else { 1 }),
                ),
            ];
            match u.padding {
                Padding::SameUpper => attrs.push(("auto_pad", Attr::Str("SAME_UPPER"))),
                Padding::Symmetric => attrs.push(("pads", Attr::Ints(vec![k / 2; 4]))),
            }
            x = g.node("Conv", &[&x, &wn, &bn], &attrs);
            if u.act {
                x = g.node("Clip", &[&x, &lo, &hi], &[]);
            }
        }
        if b.residual {
            x = g.node("Add", &[&x, &shortcut], &[]);
        }
    }
    let pooled = g.node("GlobalAveragePool", &[&x], &[]);
    g.node_to("Flatten", &[&pooled], &[("axis", Attr::Int(1))], "features");
    let (f, c) = (net.features, net.classes);
    let w = &net.params[net.cls_w.clone()];
    let wt: Vec<f32> = (0..f * c).map(|i| w[(i % c) * f + i / c]).collect();
    let wn = g.init_f32("classifier.weight_t", &[f, c], &wt);
    let bn = g.init_f32("classifier.bias", &[c], &net.params[net.cls_b.clone()]);
    g.node_to("Gemm", &["features", &wn, &bn], &[], "logits");

    let mut graph = Pb::default();
    for n in g.nodes {
        graph.msg(1, n);
    }
    graph.str(2, "convnet");
    for t in g.inits {
        graph.msg(5, t);
    }
    let r = resolution.to_string();
    graph.msg(11, value_info("input", FLOAT, &["batch", "3", &r, &r]));
    graph.msg(
        12,
        value_info("features", FLOAT, &["batch", &f.to_string()]),
    );
    graph.msg(12, value_info("logits", FLOAT, &["batch", &c.to_string()]));
    model_bytes(graph, producer_note)
}

/// A unit's convolution with its BatchNorm folded in: weights and bias.
fn folded(net: &ConvNet, u: &Unit) -> (Vec<f32>, Vec<f32>) {
    let p = &net.params;
    let (gamma, beta) = (&p[u.gamma.clone()], &p[u.beta.clone()]);
    let (mean, var) = (&net.stats[u.mean.clone()], &net.stats[u.var.clone()]);
    let w = &p[u.w.clone()];
    let per = w.len() / u.cout;
    let mut wf = vec![0.0f32; w.len()];
    let mut bf = vec![0.0f32; u.cout];
    for o in 0..u.cout {
        let scale = gamma[o] as f64 / (var[o] as f64 + u.eps as f64).sqrt();
        for i in 0..per {
            wf[o * per + i] = (w[o * per + i] as f64 * scale) as f32;
        }
        bf[o] = (beta[o] as f64 - mean[o] as f64 * scale) as f32;
    }
    (wf, bf)
}

/// Writes [`convnet_onnx`] to `path` atomically.
pub fn write_convnet_onnx(
    net: &ConvNet,
    resolution: usize,
    path: &Path,
    note: &str,
) -> Result<(), FinetuneError> {
    crate::atomic_write(path, &convnet_onnx(net, resolution, note))
}
