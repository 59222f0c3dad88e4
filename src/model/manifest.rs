//! The model manifest (`models/<name>.toml`): what the runtime must know about an ONNX ViT
//! that the graph does not say plainly.

use std::path::{Path, PathBuf};

use crate::choice::Choice;

crate::choice_enum! {
    /// `[output] kind` of a manifest: what the model's output is.
    pub enum Head { Saliency = "saliency", Classes = "classes" }
}

use serde::{Deserialize, Serialize};

use super::ModelError;

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    /// The ONNX file, relative to the manifest's folder.
    pub file: PathBuf,
    /// sha256 of the ONNX file (hex); checked at load time. Empty = not checked.
    #[serde(default)]
    pub sha256: String,
    pub input: InputSpec,
    pub tokens: TokenSpec,
    pub output: OutputSpec,
    /// Fine-tuned parameters applied to the ONNX initializers at load time (model/delta.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaSpec>,
    /// Folder of the manifest (set by the loader).
    #[serde(skip)]
    pub dir: PathBuf,
}

/// `[delta]`: a safetensors file of replaced or low-rank-adapted initializers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeltaSpec {
    /// The delta file, relative to the manifest's folder.
    pub file: PathBuf,
    /// sha256 of the delta file (hex); always checked.
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// ONNX input name.
    pub name: String,
    /// The size the model was exported/trained at (square).
    pub size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// Patch side in pixels.
    pub patch: u32,
    /// Prefix tokens before the patch tokens (cls, distillation, registers).
    pub prefix: usize,
    /// Token width C.
    pub width: usize,
    /// Tensor name at the output of each block, in order (block i closes with blocks[i]).
    pub blocks: Vec<String>,
    /// Tensor name after the final norm.
    pub final_norm: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// ONNX output name.
    pub name: String,
    /// "saliency" (one sigmoid channel) or "classes" (K logits).
    pub kind: Choice<Head>,
    /// Saliency threshold for the mask.
    #[serde(default = "half")]
    pub threshold: f32,
    /// Class names and colours (for "classes"; optional for saliency).
    #[serde(default)]
    pub classes: Vec<ClassSpec>,
}

fn half() -> f32 {
    0.5
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassSpec {
    pub name: String,
    pub color: [u8; 3],
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest, ModelError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: shown.clone(), source })?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")), &shown)
    }

    pub fn parse(text: &str, dir: &Path, shown: &str) -> Result<Manifest, ModelError> {
        let mut m: Manifest = toml::from_str(text)
            .map_err(|e| ModelError::ManifestParse { path: shown.to_string(), source: Box::new(e) })?;
        m.dir = dir.to_path_buf();
        let bad = |msg: String| ModelError::Manifest { path: shown.to_string(), msg };
        if m.tokens.blocks.is_empty() {
            return Err(bad("tokens.blocks: no block tensors listed".into()));
        }
        if m.tokens.patch == 0 || m.tokens.width == 0 {
            return Err(bad("tokens.patch and tokens.width must be > 0".into()));
        }
        let mut p = crate::problems::Problems::default();
        m.output.kind.check(&mut p, "output", "kind");
        if let Some(problem) = p.0.first() {
            return Err(bad(format!("output.kind: {}", problem.msg)));
        }
        if m.output.kind.get() == Head::Classes && m.output.classes.len() < 2 {
            return Err(bad("output.classes: a \"classes\" model needs >= 2 classes".into()));
        }
        if m.input.std.iter().any(|s| *s <= 0.0) {
            return Err(bad("input.std: every value must be > 0".into()));
        }
        if let Some(d) = &m.delta {
            if d.sha256.len() != 64 || !d.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad(format!("delta.sha256: {:?} is not a hex sha256", d.sha256)));
            }
        }
        Ok(m)
    }

    /// Path of the ONNX file.
    pub fn onnx_path(&self) -> PathBuf {
        if self.file.is_absolute() {
            self.file.clone()
        } else {
            self.dir.join(&self.file)
        }
    }

    /// Path of the delta file, if the manifest names one.
    pub fn delta_path(&self) -> Option<PathBuf> {
        self.delta.as_ref().map(|d| if d.file.is_absolute() { d.file.clone() } else { self.dir.join(&d.file) })
    }

    /// Load and verify the `[delta]` file (None without one).
    pub fn load_delta(&self) -> Result<Option<super::delta::Delta>, ModelError> {
        match (&self.delta, self.delta_path()) {
            (Some(d), Some(p)) => {
                if !p.is_file() {
                    return Err(ModelError::Delta { path: p.display().to_string(), msg: "not found".into() });
                }
                super::delta::Delta::load(&p, &d.sha256).map(Some)
            }
            _ => Ok(None),
        }
    }

    pub fn num_blocks(&self) -> usize {
        self.tokens.blocks.len()
    }

    pub fn is_saliency(&self) -> bool {
        self.output.kind.get() == Head::Saliency
    }

    /// Render as TOML (what `ailurus inspect` prints).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("manifest serialises")
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}
