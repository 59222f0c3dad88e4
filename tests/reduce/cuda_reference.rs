//! The CPU reference of the `ailurus` reducer, written straight from the spec and the arithmetic
//! contract at the top of kernels/ailurus.cu: a module of the reduce tests (against the CPU
//! `ailurus` reducer) and, `#[path]`-included, of the cuda tests (tests/cuda/main.rs: against the
//! GPU and the kernel emulator). Its own tests only check itself.
//!
//! Owns: `reference()` (slow, obviously correct except for the distance matrix, which is
//! vectorised over j and checked bit-for-bit against the naive loop below), input generators
//! and the comparison. Must not: take shortcuts that change rounding (no FMA, no reordering).
#![allow(dead_code)]

/// The `[reduce.ailurus]` knobs.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub k: usize,
    pub r: usize,
    pub windowed: bool,
    pub delta_radius: usize,
    pub spatial: bool,
    /// Coverage blocks (`[reduce.ailurus] spread`, 0 = off).
    pub spread: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params { k: 5, r: 3, windowed: false, delta_radius: 8, spatial: false, spread: 2 }
    }
}

/// The block side for `spread` on `grid` with `m` centres: `spread`, grown while there are more
/// than `m` blocks (0 = off).
pub fn spread_side(spread: usize, (h, w): (usize, usize), m: usize) -> usize {
    if spread == 0 {
        return 0;
    }
    (spread..).find(|&b| h.div_ceil(b) * w.div_ceil(b) <= m).unwrap()
}

/// One reduction, with the intermediates the GPU can also report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RefOut {
    pub centers: Vec<u32>,
    pub assign: Vec<u32>,
    pub sizes: Vec<f32>,
    pub merged: Vec<f32>,
    pub rho: Vec<f32>,
    pub delta: Vec<f32>,
}

/// |x|^2 summed left to right, products and sums rounded separately.
pub fn sqnorm(x: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for &v in x {
        acc += v * v;
    }
    acc
}

/// The contract's D from the squared norms and the dot product.
pub fn dist_from(sqi: f32, sqj: f32, dot: f32, sqrt_c: f32) -> f32 {
    let t = (sqi + sqj) - 2.0 * dot;
    t.max(0.0).sqrt() / sqrt_c
}

/// D, one pair at a time (the obviously correct version).
pub fn distances_naive(x: &[f32], n: usize, c: usize) -> Vec<f32> {
    let sq: Vec<f32> = (0..n).map(|i| sqnorm(&x[i * c..(i + 1) * c])).collect();
    let sqrt_c = (c as f32).sqrt();
    let mut d = vec![0.0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            if i != j {
                let mut dot = 0.0f32;
                for k in 0..c {
                    dot += x[i * c + k] * x[j * c + k];
                }
                d[i * n + j] = dist_from(sq[i], sq[j], dot, sqrt_c);
            }
        }
    }
    d
}

/// D, fast: channels outer, tokens inner (every dot product still sums channels in order), upper
/// triangle mirrored (dot(i, j) == dot(j, i) bit for bit).
pub fn distances(x: &[f32], n: usize, c: usize) -> Vec<f32> {
    let sq: Vec<f32> = (0..n).map(|i| sqnorm(&x[i * c..(i + 1) * c])).collect();
    let sqrt_c = (c as f32).sqrt();
    let mut xt = vec![0.0f32; n * c];
    for i in 0..n {
        for k in 0..c {
            xt[k * n + i] = x[i * c + k];
        }
    }
    let mut d = vec![0.0f32; n * n];
    let mut acc = vec![0.0f32; n];
    for i in 0..n {
        let tail = &mut acc[i + 1..];
        tail.fill(0.0);
        for k in 0..c {
            let xi = x[i * c + k];
            let col = &xt[k * n + i + 1..(k + 1) * n];
            for (a, &v) in tail.iter_mut().zip(col) {
                *a += xi * v;
            }
        }
        for j in i + 1..n {
            let v = dist_from(sq[i], sq[j], acc[j], sqrt_c);
            d[i * n + j] = v;
            d[j * n + i] = v;
        }
    }
    d
}

fn window(i: usize, (h, w): (usize, usize), r: usize) -> impl Iterator<Item = usize> {
    let (y, x) = (i / w, i % w);
    let (y0, y1, x0, x1) = (y.saturating_sub(r), (y + r).min(h - 1), x.saturating_sub(r), (x + r).min(w - 1));
    (y0..=y1).flat_map(move |yy| (x0..=x1).map(move |xx| yy * w + xx))
}

/// u(i) of the density jitter.
pub fn jitter(i: usize) -> f32 {
    ((i as u32).wrapping_mul(2654435761) >> 8) as f32 / 16777216.0
}

/// The whole reduction of `x` (`[h*w, c]`) into `m` clusters, per the spec.
pub fn reference(x: &[f32], c: usize, grid: (usize, usize), m: usize, p: Params) -> RefOut {
    let n = grid.0 * grid.1;
    let m = m.clamp(1, n);
    let d = distances(x, n, c);
    let dd = |i: usize, j: usize| d[i * n + j];

    let mut rho = vec![0.0f32; n];
    let mut key = vec![0.0f32; n];
    for i in 0..n {
        let mut q: Vec<f32> = window(i, grid, p.r).map(|j| dd(i, j) * dd(i, j)).collect();
        q.sort_by(|a, b| a.total_cmp(b));
        let kk = p.k.min(q.len());
        let mut sum = 0.0f32;
        for &v in &q[..kk] {
            sum += v;
        }
        let mean = sum / kk as f32;
        rho[i] = (-(mean as f64)).exp() as f32;
        key[i] = rho[i] + 1e-6f32 * jitter(i);
    }
    let higher = |j: usize, i: usize| match key[j].total_cmp(&key[i]) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Equal => j < i,
        std::cmp::Ordering::Less => false,
    };

    let mut delta = vec![0.0f32; n];
    let mut score = vec![0.0f32; n];
    for i in 0..n {
        let min_higher = |js: &mut dyn Iterator<Item = usize>| {
            js.filter(|&j| higher(j, i))
                .map(|j| dd(i, j))
                .fold(None, |b: Option<f32>, v| Some(b.map_or(v, |b| b.min(v))))
        };
        let mut best = if p.windowed { min_higher(&mut window(i, grid, p.delta_radius)) } else { None };
        if best.is_none() {
            best = min_higher(&mut (0..n));
        }
        delta[i] = best.unwrap_or_else(|| (0..n).map(|j| dd(i, j)).fold(0.0f32, f32::max));
        score[i] = rho[i] * delta[i];
    }

    // Coverage: the best score of every b x b block (ties: lower index) is a centre.
    let mut forced = vec![false; n];
    let b = spread_side(p.spread, grid, m);
    if b > 0 {
        for by in (0..grid.0).step_by(b) {
            for bx in (0..grid.1).step_by(b) {
                let cells =
                    (by..(by + b).min(grid.0)).flat_map(|y| (bx..(bx + b).min(grid.1)).map(move |x| y * grid.1 + x));
                let best = cells.min_by(|&i, &j| score[j].total_cmp(&score[i]).then(i.cmp(&j))).unwrap();
                forced[best] = true;
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| forced[b].cmp(&forced[a]).then(score[b].total_cmp(&score[a])).then(a.cmp(&b)));
    let mut centers: Vec<u32> = order[..m].iter().map(|&i| i as u32).collect();
    centers.sort_unstable();
    let mut cid = vec![-1i64; n];
    for (id, &t) in centers.iter().enumerate() {
        cid[t as usize] = id as i64;
    }

    let mut assign = vec![0u32; n];
    for i in 0..n {
        if cid[i] >= 0 {
            assign[i] = cid[i] as u32;
            continue;
        }
        let near = window(i, grid, p.r)
            .filter(|&j| cid[j] >= 0)
            .map(|j| (dd(i, j), cid[j] as usize))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let id = match near {
            Some((_, id)) => id,
            None if !p.spatial => (0..m)
                .min_by(|&a, &b| dd(i, centers[a] as usize).total_cmp(&dd(i, centers[b] as usize)).then(a.cmp(&b)))
                .unwrap(),
            None => {
                let (y, x) = ((i / grid.1) as i64, (i % grid.1) as i64);
                let d2 = |id: usize| {
                    let t = centers[id] as i64;
                    let (dy, dx) = (t / grid.1 as i64 - y, t % grid.1 as i64 - x);
                    dy * dy + dx * dx
                };
                (0..m).min_by_key(|&id| (d2(id), id)).unwrap()
            }
        };
        assign[i] = id as u32;
    }

    let mut sizes = vec![0.0f32; m];
    let mut merged = vec![0.0f32; m * c];
    for i in 0..n {
        let a = assign[i] as usize;
        sizes[a] += 1.0;
        for k in 0..c {
            merged[a * c + k] += x[i * c + k];
        }
    }
    for a in 0..m {
        for k in 0..c {
            merged[a * c + k] /= sizes[a];
        }
    }
    RefOut { centers, assign, sizes, merged, rho, delta }
}

/// Deterministic inputs. `smooth` in 0..=1 mixes a spatially smooth field (neighbours alike,
/// like real tokens) into i.i.d. normal noise; `levels > 0` quantises to that many values (exact
/// ties in distances and densities).
pub fn tokens(seed: u64, grid: (usize, usize), c: usize, smooth: f32, levels: u32) -> Vec<f32> {
    blocky_tokens(seed, grid, c, smooth, levels, 1)
}

/// `tokens`, then every patch copies the token of its `b x b` block's corner: flat regions of
/// exact duplicates (D = 0, equal densities, many zero scores: every tie rule is exercised).
pub fn blocky_tokens(seed: u64, grid: (usize, usize), c: usize, smooth: f32, levels: u32, b: usize) -> Vec<f32> {
    let mut x = smooth_tokens(seed, grid, c, smooth, levels);
    let w = grid.1;
    for i in 0..grid.0 * w {
        let src = (i / w / b * b) * w + (i % w) / b * b;
        if src != i {
            x.copy_within(src * c..(src + 1) * c, i * c);
        }
    }
    x
}

fn smooth_tokens(seed: u64, grid: (usize, usize), c: usize, smooth: f32, levels: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut normal = move || {
        let (u, v) = (next().max(1e-12), next());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
    };
    let (h, w) = grid;
    let phases: Vec<(f32, f32, f32)> = (0..c).map(|_| (normal(), normal(), normal())).collect();
    let mut x = Vec::with_capacity(h * w * c);
    for i in 0..h * w {
        let (y, xx) = ((i / w) as f32 / h as f32, (i % w) as f32 / w as f32);
        for &(a, b, ph) in &phases {
            let field = (3.0 * a * y + 3.0 * b * xx + ph).sin() * 2.0;
            let mut v = smooth * field + (1.0 - smooth) * normal();
            if levels > 0 {
                v = (v * levels as f32 / 4.0).round() * 4.0 / levels as f32;
            }
            x.push(v);
        }
    }
    x
}

/// First difference between a GPU (or emulated) result and the reference, as a message.
/// Centres, assignments and sizes must be identical; merged tokens within `tol`.
pub fn compare(got: &RefOut, want: &RefOut, tol: f32) -> Result<f32, String> {
    if got.centers != want.centers {
        let i = got.centers.iter().zip(&want.centers).position(|(a, b)| a != b).unwrap_or(0);
        return Err(format!("centres differ first at #{i} (len {} vs {})", got.centers.len(), want.centers.len()));
    }
    if let Some(i) = got.assign.iter().zip(&want.assign).position(|(a, b)| a != b) {
        return Err(format!("assignment differs at token {i}: {} vs {}", got.assign[i], want.assign[i]));
    }
    if got.sizes != want.sizes {
        return Err("cluster sizes differ".into());
    }
    let worst = got.merged.iter().zip(&want.merged).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    if got.merged.len() != want.merged.len() || worst.is_nan() || worst > tol {
        return Err(format!("merged tokens differ by {worst} (> {tol})"));
    }
    Ok(worst)
}

#[test]
fn fast_distances_match_the_naive_loop_bit_for_bit() {
    for (grid, c) in [((5, 7), 13), ((8, 8), 384)] {
        let x = tokens(3, grid, c, 0.5, 0);
        let n = grid.0 * grid.1;
        let (a, b) = (distances(&x, n, c), distances_naive(&x, n, c));
        assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "grid {grid:?} c {c}");
    }
}

#[test]
fn reference_is_a_partition_with_m_centres_that_own_themselves() {
    let grid = (12, 10);
    for (m, p) in
        [(30, Params::default()), (4, Params { spatial: true, ..Params::default() }), (200, Params::default())]
    {
        let x = tokens(7, grid, 16, 0.7, 0);
        let o = reference(&x, 16, grid, m, p);
        let m = m.min(120);
        assert_eq!(o.centers.len(), m);
        assert!(o.centers.windows(2).all(|w| w[0] < w[1]));
        for (id, &t) in o.centers.iter().enumerate() {
            assert_eq!(o.assign[t as usize], id as u32);
        }
        assert_eq!(o.sizes.iter().sum::<f32>(), 120.0);
        assert!(o.assign.iter().all(|&a| (a as usize) < m));
    }
}
