//! `ailurus inspect`: propose a manifest for an ONNX ViT by reading its graph.
//!
//! Owns the graph analysis that turns a bare ONNX file into a [`Manifest`]:
//! - block boundaries: the residual Adds (an Add whose one input is a data ancestor of the other
//!   and has >= 2 consumers), chained through their skip inputs; a block closes with the second
//!   Add of each (attention, MLP) pair
//! - the final norm after the last block (a LayerNormalization op, or the decomposed opset-14
//!   pattern Sub -> Div -> Mul -> Add)
//! - patch size and width from the stride == kernel Conv, the prefix-token count from the token
//!   count at the export size (the graph typed once by tract), input and output names, and the
//!   output kind (a 1-channel Sigmoid is saliency)
//! - warnings: assumed normalisation, Reshape constants that bake in the token count
//!
//! It reads the protobuf through tract-onnx and types the graph once; it must not build run-time
//! plans or touch the cutting code (that is `cut`).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use tract_onnx::pb;
use tract_onnx::prelude::*;

use super::manifest::{sha256_file, ClassSpec, Head, InputSpec, Manifest, OutputSpec, TokenSpec};
use super::ModelError;

/// A proposed manifest and everything the user should double-check in it.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub manifest: Manifest,
    pub warnings: Vec<String>,
}

impl Inspection {
    /// The proposal as a manifest file, laid out like models/*.toml: a header naming `source`,
    /// every warning as a `# warning:` comment, then the fields. Parses back to `self.manifest`.
    pub fn to_toml(&self, source: &Path) -> String {
        let m = &self.manifest;
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let list = |v: &[f32]| v.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(", ");
        let mut t = format!(
            "# Proposed by `ailurus inspect {}`; `file` is relative to this manifest's folder.\n",
            source.display()
        );
        for w in &self.warnings {
            t += &format!("# warning: {w}\n");
        }
        t += &format!("name = {}\nfile = {}\nsha256 = {}\n\n", q(&m.name), q(&m.file.to_string_lossy()), q(&m.sha256));
        t += &format!(
            "[input]\nname = {}\nsize = {}\nmean = [{}]\nstd = [{}]\n\n",
            q(&m.input.name),
            m.input.size,
            list(&m.input.mean),
            list(&m.input.std)
        );
        t += &format!(
            "[tokens]\npatch = {}\nprefix = {}\nwidth = {}\nfinal_norm = {}\nblocks = [\n",
            m.tokens.patch,
            m.tokens.prefix,
            m.tokens.width,
            q(&m.tokens.final_norm)
        );
        for b in &m.tokens.blocks {
            t += &format!("  {},\n", q(b));
        }
        t += &format!(
            "]\n\n[output]\nname = {}\nkind = {}\nthreshold = {:?}\nclasses = [\n",
            q(&m.output.name),
            q(&m.output.kind.to_string()),
            m.output.threshold
        );
        for c in &m.output.classes {
            let [r, g, b] = c.color;
            t += &format!("  {{ name = {}, color = [{r}, {g}, {b}] }},\n", q(&c.name));
        }
        t + "]\n"
    }
}

const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Analyse the ONNX file at `path` and propose a manifest for it.
pub fn inspect(path: &Path) -> Result<Inspection, ModelError> {
    let shown = path.display().to_string();
    if !path.is_file() {
        return Err(ModelError::Missing { path: shown });
    }
    let onnx = tract_onnx::onnx();
    let proto = onnx.proto_model_for_path(path).map_err(|source| ModelError::Onnx { path: shown.clone(), source })?;
    let not_vit = |msg: String| ModelError::Config { path: shown.clone(), msg };
    let graph = proto.graph.as_ref().ok_or_else(|| not_vit("the file holds no graph".into()))?;
    let g = Index::new(graph);
    let mut warnings = Vec::new();

    let (input, dims) =
        g.image_input().ok_or_else(|| not_vit("no graph input (every input is an initializer)".into()))?;
    if g.inputs().count() > 1 {
        warnings.push(format!("the graph has {} inputs; only {input:?} is fed", g.inputs().count()));
    }
    let size = match (dims.get(2).copied().flatten(), dims.get(3).copied().flatten()) {
        (Some(h), Some(w)) if h == w && h > 0 => h as u32,
        (h, w) => {
            warnings.push(format!(
                "input {input}: declared size {h:?} x {w:?} is not a fixed square; input.size = 224 assumed"
            ));
            224
        }
    };
    let (patch, width) = g.patch_conv(&mut warnings).ok_or_else(|| {
        not_vit("no patch-embedding Conv (stride == kernel > 1): not a ViT this runtime can cut".into())
    })?;
    let chain = g.residual_chain(&mut warnings);
    if chain.len() < 2 {
        return Err(not_vit(format!("found {} residual Add(s); a ViT block has two (attention, MLP)", chain.len())));
    }
    if chain.len() % 2 == 1 {
        warnings.push(format!(
            "{} residual Adds is odd: the last one is not a block of its own; check tokens.blocks",
            chain.len()
        ));
    }
    for (b, pair) in chain.chunks(2).enumerate() {
        if !g.branch_has(&pair[0], "Softmax") {
            warnings.push(format!(
                "block {b}: no Softmax in the branch of {}; the pairing of residual Adds may be off",
                pair[0].out
            ));
        }
    }
    let blocks: Vec<String> = chain.chunks_exact(2).map(|p| p[1].out.clone()).collect();
    let last = blocks.last().expect("at least one pair");
    let final_norm =
        g.final_norm(last).ok_or_else(|| not_vit(format!("no LayerNorm after the last block output {last}")))?;
    let output = graph.output.first().map(|o| o.name.clone()).ok_or_else(|| not_vit("no graph output".into()))?;

    // Token count and output channels at the export size, from tract's typing.
    let grid = (size / patch) as usize;
    let typed = g.typed_facts(&onnx, &proto, path, size, &blocks[0], &output);
    let (tokens, channels) = match typed {
        Ok(v) => v,
        Err(e) => {
            warnings.push(format!("could not type the graph at {size}x{size} ({e}); prefix = 1 assumed"));
            (None, None)
        }
    };
    let prefix = match tokens {
        Some(t) if t >= grid * grid => t - grid * grid,
        Some(t) => {
            warnings.push(format!("block 0 carries {t} tokens, fewer than the {grid}x{grid} patches; prefix = 0"));
            0
        }
        None => 1,
    };
    match tokens {
        Some(t) => warnings.extend(g.baked_token_count(t)),
        None => warnings.push("token count unknown: did not check Reshapes for a baked token count".into()),
    }
    let channels = channels.or(g.declared_channels(&output));
    let sigmoid = g.producer_op(&output) == Some("Sigmoid");
    let kind = if sigmoid && channels == Some(1) { Head::Saliency } else { Head::Classes };
    let classes = if kind == Head::Saliency {
        vec![
            ClassSpec { name: "background".into(), color: [0, 0, 0] },
            ClassSpec { name: "salient".into(), color: [255, 64, 0] },
        ]
    } else {
        let k = channels.unwrap_or(2).max(2);
        warnings.push(format!("output {output}: {k} classes with placeholder names and colours"));
        (0..k).map(|i| ClassSpec { name: format!("class{i}"), color: palette(i) }).collect()
    };
    warnings.push(
        "input.mean / input.std: ImageNet values assumed (the graph does not say); check the model's preprocessing"
            .into(),
    );

    let sha256 = sha256_file(path).map_err(|source| ModelError::Io { path: shown.clone(), source })?;
    let file_name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let name = path.file_stem().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let manifest = Manifest {
        name,
        file: file_name.into(),
        sha256,
        input: InputSpec { name: input, size, mean: IMAGENET_MEAN, std: IMAGENET_STD },
        tokens: TokenSpec { patch, prefix, width, blocks, final_norm },
        output: OutputSpec { name: output, kind: kind.into(), threshold: 0.5, classes },
        delta: None,
        dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
    };
    Ok(Inspection { manifest, warnings })
}

fn palette(i: usize) -> [u8; 3] {
    const P: [[u8; 3]; 8] = [
        [0, 0, 0],
        [128, 0, 0],
        [0, 128, 0],
        [128, 128, 0],
        [0, 0, 128],
        [128, 0, 128],
        [0, 128, 128],
        [128, 128, 128],
    ];
    P[i % P.len()]
}

/// One residual Add: `out = branch + skip`, where `skip` is an ancestor of `branch`.
#[derive(Debug, Clone)]
struct Residual {
    out: String,
    skip: String,
    branch: String,
}

/// Name lookups over the protobuf graph.
struct Index<'a> {
    graph: &'a pb::GraphProto,
    producer: HashMap<&'a str, usize>,
    consumers: HashMap<&'a str, Vec<usize>>,
    inits: HashMap<&'a str, &'a pb::TensorProto>,
    consts: HashMap<&'a str, &'a pb::TensorProto>,
}

impl<'a> Index<'a> {
    fn new(graph: &'a pb::GraphProto) -> Index<'a> {
        let mut ix = Index {
            graph,
            producer: HashMap::new(),
            consumers: HashMap::new(),
            inits: graph.initializer.iter().map(|t| (t.name.as_str(), t)).collect(),
            consts: HashMap::new(),
        };
        for (i, n) in graph.node.iter().enumerate() {
            for o in &n.output {
                ix.producer.insert(o.as_str(), i);
            }
            for inp in n.input.iter().filter(|s| !s.is_empty()) {
                let c = ix.consumers.entry(inp.as_str()).or_default();
                if c.last() != Some(&i) {
                    c.push(i);
                }
            }
            if n.op_type == "Constant" {
                if let (Some(o), Some(t)) = (n.output.first(), n.attribute.iter().find_map(|a| a.t.as_ref())) {
                    ix.consts.insert(o.as_str(), t);
                }
            }
        }
        ix
    }

    fn node(&self, tensor: &str) -> Option<&'a pb::NodeProto> {
        self.producer.get(tensor).map(|&i| &self.graph.node[i])
    }

    fn producer_op(&self, tensor: &str) -> Option<&'a str> {
        self.node(tensor).map(|n| n.op_type.as_str())
    }

    fn consumers(&self, tensor: &str) -> impl Iterator<Item = &'a pb::NodeProto> + '_ {
        self.consumers.get(tensor).into_iter().flatten().map(|&i| &self.graph.node[i])
    }

    /// Graph inputs that are not initializers.
    fn inputs(&self) -> impl Iterator<Item = &'a pb::ValueInfoProto> + '_ {
        self.graph.input.iter().filter(|i| !self.inits.contains_key(i.name.as_str()))
    }

    fn declared_dims(v: &pb::ValueInfoProto) -> Vec<Option<i64>> {
        use pb::tensor_shape_proto::dimension::Value;
        let Some(pb::type_proto::Value::TensorType(t)) = v.r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            return Vec::new();
        };
        t.shape
            .iter()
            .flat_map(|s| &s.dim)
            .map(|d| match d.value {
                Some(Value::DimValue(v)) => Some(v),
                _ => None,
            })
            .collect()
    }

    /// The image input's name and declared dims (`None` where symbolic).
    fn image_input(&self) -> Option<(String, Vec<Option<i64>>)> {
        let v = self.inputs().next()?;
        Some((v.name.clone(), Self::declared_dims(v)))
    }

    fn declared_channels(&self, output: &str) -> Option<usize> {
        let v = self.graph.output.iter().find(|o| o.name == output)?;
        Self::declared_dims(v).get(1).copied().flatten().map(|c| c as usize)
    }

    fn ints_attr(n: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
        n.attribute.iter().find(|a| a.name == name).map(|a| a.ints.clone())
    }

    /// (patch, width) from the first Conv with stride == kernel > 1.
    fn patch_conv(&self, warnings: &mut Vec<String>) -> Option<(u32, usize)> {
        for n in self.graph.node.iter().filter(|n| n.op_type == "Conv") {
            let weight = n.input.get(1).and_then(|w| self.inits.get(w.as_str()));
            let kernel = Self::ints_attr(n, "kernel_shape")
                .or_else(|| weight.map(|w| w.dims.iter().skip(2).copied().collect()))
                .unwrap_or_default();
            let strides = Self::ints_attr(n, "strides").unwrap_or_default();
            if kernel.len() != 2 || kernel != strides || kernel[0] <= 1 {
                continue;
            }
            if kernel[0] != kernel[1] {
                warnings.push(format!("patch Conv {}: non-square kernel {kernel:?}; patch = {}", n.name, kernel[0]));
            }
            let width = weight.and_then(|w| w.dims.first()).map(|&c| c as usize);
            let Some(width) = width else {
                warnings.push(format!("patch Conv {}: weight is not an initializer; width unknown", n.name));
                continue;
            };
            return Some((kernel[0] as u32, width));
        }
        None
    }

    /// Every tensor `tensor` depends on through data (not through `Shape`/`Size`, whose output
    /// depends only on a shape), stopping at `stop`.
    fn data_ancestors(&self, tensor: &'a str, stop: Option<&str>) -> HashSet<&'a str> {
        let mut seen = HashSet::new();
        let mut todo = vec![tensor];
        while let Some(t) = todo.pop() {
            if !seen.insert(t) || Some(t) == stop {
                continue;
            }
            if let Some(n) = self.node(t) {
                if n.op_type == "Shape" || n.op_type == "Size" {
                    continue;
                }
                todo.extend(n.input.iter().filter(|s| !s.is_empty()).map(|s| s.as_str()));
            }
        }
        seen
    }

    fn residuals(&self) -> Vec<Residual> {
        let mut found = Vec::new();
        for n in self.graph.node.iter().filter(|n| n.op_type == "Add" && n.input.len() == 2) {
            let (a, b) = (n.input[0].as_str(), n.input[1].as_str());
            let computed = |t: &str| self.producer.contains_key(t) && !self.consts.contains_key(t);
            if !computed(a) || !computed(b) {
                continue;
            }
            let shared = |t: &str| self.consumers.get(t).map_or(0, |c| c.len()) >= 2;
            let (skip, branch) = if shared(a) && self.data_ancestors(b, None).contains(a) {
                (a, b)
            } else if shared(b) && self.data_ancestors(a, None).contains(b) {
                (b, a)
            } else {
                continue;
            };
            found.push(Residual { out: n.output[0].clone(), skip: skip.into(), branch: branch.into() });
        }
        found
    }

    /// The longest chain of residual Adds, each one's skip input the previous one's output.
    fn residual_chain(&self, warnings: &mut Vec<String>) -> Vec<Residual> {
        let all = self.residuals();
        let outs: HashSet<&str> = all.iter().map(|r| r.out.as_str()).collect();
        let by_skip: HashMap<&str, &Residual> = all.iter().map(|r| (r.skip.as_str(), r)).collect();
        let mut best: Vec<Residual> = Vec::new();
        let starts: Vec<&Residual> = all.iter().filter(|r| !outs.contains(r.skip.as_str())).collect();
        for start in &starts {
            let mut chain = vec![(*start).clone()];
            // An untrusted file may wire the Adds in a cycle: stop at a tensor seen before.
            let mut seen: HashSet<&str> = HashSet::from([start.out.as_str()]);
            while let Some(next) = by_skip.get(chain.last().map_or("", |r| r.out.as_str())) {
                if !seen.insert(next.out.as_str()) {
                    warnings.push(format!("residual Adds form a cycle at {}; the chain stops there", next.out));
                    break;
                }
                chain.push((*next).clone());
            }
            if chain.len() > best.len() {
                best = chain;
            }
        }
        if starts.len() > 1 {
            warnings.push(format!(
                "{} separate chains of residual Adds; the longest ({} Adds) is taken as the encoder",
                starts.len(),
                best.len()
            ));
        }
        best
    }

    /// Whether an `op` node lies on the residual's branch (between its skip input and the Add).
    fn branch_has(&self, r: &Residual, op: &str) -> bool {
        self.data_ancestors(&r.branch, Some(&r.skip)).iter().any(|t| self.producer_op(t) == Some(op))
    }

    /// The final norm's output after `last`: a LayerNormalization, or Sub -> Div [-> Mul [-> Add]].
    fn final_norm(&self, last: &str) -> Option<String> {
        if let Some(n) = self.consumers(last).find(|n| n.op_type == "LayerNormalization") {
            return n.output.first().cloned();
        }
        let sub = self.consumers(last).find(|n| n.op_type == "Sub" && n.input[0] == last)?;
        let follow = |t: &str, op: &str| {
            self.consumers(t).find(|n| n.op_type == op && n.input[0] == t).map(|n| n.output[0].clone())
        };
        let div = follow(&sub.output[0], "Div")?;
        let Some(mul) = follow(&div, "Mul") else {
            return Some(div);
        };
        follow(&mul, "Add").or(Some(mul))
    }

    /// The integer values of a constant tensor (initializer or Constant node), if it is one.
    fn const_ints(&self, tensor: &str) -> Option<Vec<i64>> {
        let t = self.inits.get(tensor).or_else(|| self.consts.get(tensor))?;
        match t.data_type {
            7 if !t.raw_data.is_empty() => {
                Some(t.raw_data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
            }
            7 => Some(t.int64_data.clone()),
            6 if !t.raw_data.is_empty() => {
                Some(t.raw_data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect())
            }
            6 => Some(t.int32_data.iter().map(|&v| v as i64).collect()),
            _ => None,
        }
    }

    /// One warning when Reshape target shapes hold the token count `t` as a constant.
    fn baked_token_count(&self, t: usize) -> Option<String> {
        let mut baked: Vec<(String, Vec<i64>)> = Vec::new();
        for n in self.graph.node.iter().filter(|n| n.op_type == "Reshape") {
            let Some(shape) = n.input.get(1) else {
                continue;
            };
            let parts: Vec<Vec<i64>> = match self.const_ints(shape) {
                Some(v) => vec![v],
                None => match self.node(shape) {
                    Some(c) if c.op_type == "Concat" => c.input.iter().filter_map(|i| self.const_ints(i)).collect(),
                    _ => continue,
                },
            };
            if let Some(v) = parts.into_iter().find(|v| v.contains(&(t as i64))) {
                baked.push((n.name.clone(), v));
            }
        }
        let (name, v) = baked.first()?;
        Some(format!(
            "{} Reshape(s) bake in the token count {t} (e.g. {name} to {v:?}): this graph cannot run on \
             fewer tokens, so token reduction will fail; re-export it with dynamic shapes",
            baked.len()
        ))
    }

    /// Type the graph once at `size`: (token count at `block0`, channels of `output`).
    fn typed_facts(
        &self,
        onnx: &tract_onnx::Onnx,
        proto: &pb::ModelProto,
        path: &Path,
        size: u32,
        block0: &str,
        output: &str,
    ) -> TractResult<(Option<usize>, Option<usize>)> {
        let dir = path.parent().and_then(|d| d.to_str());
        let s = size as usize;
        let model = onnx
            .parse(proto, dir)?
            .model
            .with_input_fact(0, f32::fact([1, 3, s, s]).into())?
            .with_outputs_by_name([block0, output])?
            .into_typed()?;
        let outs = model.output_outlets()?;
        let dim = |o: OutletId, axis: usize| -> TractResult<Option<usize>> {
            Ok(model.outlet_fact(o)?.shape.as_concrete().and_then(|s| s.get(axis).copied()))
        };
        Ok((dim(outs[0], 1)?, dim(outs[1], 1)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(nodes: Vec<pb::NodeProto>) -> pb::GraphProto {
        pb::GraphProto { node: nodes, ..Default::default() }
    }

    fn node(op: &str, inputs: &[&str], out: &str) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            name: format!("/{out}"),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.into()],
            ..Default::default()
        }
    }

    /// x -> [norm, attn] -> r1 = attn + x -> [mlp] -> r2 = mlp + r1, twice; a Shape-derived
    /// Add (x + f(Shape(x))) must not count.
    #[test]
    fn residual_pairs_are_found_and_chained_and_shape_paths_ignored() {
        let mut nodes = vec![
            node("Relu", &["img"], "x0"),
            node("Shape", &["x0"], "shp"),
            node("Cast", &["shp"], "shpf"),
            node("Add", &["x0", "shpf"], "x"),
        ];
        let mut prev = "x".to_string();
        for b in 0..2 {
            let (a, s, r1, m, r2) =
                (format!("a{b}"), format!("s{b}"), format!("r1_{b}"), format!("m{b}"), format!("r2_{b}"));
            nodes.push(node("Relu", &[&prev], &a));
            nodes.push(node("Softmax", &[&a], &s));
            nodes.push(node("Add", &[&s, &prev], &r1));
            nodes.push(node("Relu", &[&r1], &m));
            nodes.push(node("Add", &[&m, &r1], &r2));
            prev = r2;
        }
        let g = model(nodes);
        let ix = Index::new(&g);
        let mut w = Vec::new();
        let chain = ix.residual_chain(&mut w);
        let outs: Vec<&str> = chain.iter().map(|r| r.out.as_str()).collect();
        assert_eq!(outs, ["r1_0", "r2_0", "r1_1", "r2_1"]);
        assert!(w.is_empty(), "{w:?}");
        assert!(ix.branch_has(&chain[0], "Softmax"));
        assert!(!ix.branch_has(&chain[1], "Softmax"));
    }

    #[test]
    fn decomposed_layer_norm_ends_at_the_affine_add() {
        let g = model(vec![
            node("ReduceMean", &["b"], "mu"),
            node("Sub", &["b", "mu"], "d"),
            node("Pow", &["d", "two"], "p"),
            node("Sqrt", &["p"], "sd"),
            node("Div", &["d", "sd"], "n"),
            node("Mul", &["n", "w"], "nm"),
            node("Add", &["nm", "bias"], "out"),
        ]);
        assert_eq!(Index::new(&g).final_norm("b").as_deref(), Some("out"));
        let g = model(vec![node("LayerNormalization", &["b", "w", "bias"], "ln")]);
        assert_eq!(Index::new(&g).final_norm("b").as_deref(), Some("ln"));
    }
}
