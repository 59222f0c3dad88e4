//! The budget controller against simulated costs: a fake cost function, no clock, no sleeping.
//! Each simulated frame: decide -> "run" it (fake cost) -> observe.

use ailurus::budget::CalibrationTable;
use ailurus::budget::{m_grid, BudgetConfig, Controller};
use ailurus::engine::{Setting, SizeInfo};

const LADDER: [u32; 4] = [448, 392, 336, 280];

fn sizes(ladder: &[u32]) -> Vec<SizeInfo> {
    ladder.iter().map(|&s| SizeInfo { input_size: s, n_tokens: ((s / 14) * (s / 14)) as usize }).collect()
}

fn cfg(target_ms: f64, ladder: &[u32]) -> BudgetConfig {
    BudgetConfig { target_ms, sizes: ladder.to_vec(), ..BudgetConfig::default() }
}

fn controller(c: &BudgetConfig) -> Controller {
    let sz = sizes(&c.sizes);
    let fixed = Setting { input_size: c.sizes[0], m: sz[0].n_tokens };
    Controller::new(c, &sz, true, fixed, &CalibrationTable::shipped()).unwrap()
}

/// The true cost of the simulated device: NOT the shipped prior (different level and shape
/// per size), so the controller has to learn it.
fn device_ms(s: Setting) -> f64 {
    let n = ((s.input_size / 14) * (s.input_size / 14)) as f64;
    let m = s.m as f64;
    60.0 + 0.55 * n + 0.35 * m + 2.0e-4 * m * m
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
    /// exp(N(0, sigma^2))
    fn lognormal(&mut self, sigma: f64) -> f64 {
        let (u, v) = (self.next().max(1e-12), self.next());
        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * sigma).exp()
    }
}

/// Run `frames` frames; `cost(frame, setting)` is the measured cost. Returns (setting, cost).
fn simulate(c: &mut Controller, frames: u64, mut cost: impl FnMut(u64, Setting) -> f64) -> Vec<(Setting, f64)> {
    let mut out = Vec::new();
    for f in 0..frames {
        let d = c.decide();
        let s = c.refine(d.setting);
        let ms = cost(f, s);
        c.observe(s, ms);
        c.observe_latency(ms, ms);
        out.push((s, ms));
    }
    out
}

fn changes(trace: &[(Setting, f64)]) -> usize {
    trace.windows(2).filter(|w| w[0].0 != w[1].0).count()
}

/// The highest-fidelity setting of the grid whose true cost is <= `limit` (by the table).
fn best_fitting(c: &BudgetConfig, limit: f64, cost: impl Fn(Setting) -> f64) -> Setting {
    let t = CalibrationTable::shipped();
    let mut best: Option<(f64, f64, Setting)> = None;
    for s in sizes(&c.sizes) {
        for m in m_grid(c, s.n_tokens, true) {
            let set = Setting { input_size: s.input_size, m };
            let (iou, mae) = t.fidelity(s.input_size, m).unwrap();
            if cost(set) <= limit && best.is_none_or(|(bi, bm, _)| iou > bi || (iou == bi && mae < bm)) {
                best = Some((iou, mae, set));
            }
        }
    }
    best.unwrap().2
}

fn fidelity(s: Setting) -> f64 {
    CalibrationTable::shipped().fidelity(s.input_size, s.m).unwrap().0
}

#[test]
fn converges_to_the_largest_m_that_meets_the_budget() {
    let c = cfg(1000.0, &[448]);
    let mut ctl = controller(&c);
    let cost = |s: Setting| 300.0 + 0.9 * s.m as f64;
    let trace = simulate(&mut ctl, 400, |_, s| cost(s));
    // thr = 900 ms: 300 + 0.9 M <= 900 -> M <= 666, the grid's largest is 640.
    let want = m_grid(&c, 1024, true).into_iter().filter(|&m| cost(Setting { input_size: 448, m }) <= 900.0).max();
    assert_eq!(want, Some(640));
    let tail: Vec<usize> = trace[300..].iter().map(|(s, _)| s.m).collect();
    assert!(tail.iter().all(|&m| m == 640), "tail: {tail:?}");
}

#[test]
fn settles_on_a_good_setting_and_resettles_after_the_cost_doubles_and_back() {
    let c = cfg(1000.0, &LADDER);
    let thr = c.target_ms * (1.0 - c.margin);
    let mut ctl = controller(&c);
    let load = |f: u64| if (300..600).contains(&f) { 2.0 } else { 1.0 };
    let trace = simulate(&mut ctl, 900, |f, s| device_ms(s) * load(f));
    for (phase, range, l) in [("before", 200..300, 1.0), ("hog", 500..600, 2.0), ("after", 800..900, 1.0)] {
        let seg = &trace[range.clone()];
        assert_eq!(changes(seg), 0, "{phase}: settled, no changes: {:?}", seg.iter().map(|x| x.0).collect::<Vec<_>>());
        let s = seg[0].0;
        assert!(device_ms(s) * l <= thr, "{phase}: {s:?} fits");
        // Not over-conservative: at least as good as the best setting fitting 80% of the budget.
        let floor = best_fitting(&c, 0.8 * thr, |x| device_ms(x) * l);
        assert!(fidelity(s) >= fidelity(floor), "{phase}: {s:?} worse than {floor:?}");
    }
    // It reacts within a few frames: misses (cost over the target) only right after the jump.
    let misses: Vec<usize> = (300..600).filter(|&f| trace[f].1 > c.target_ms).collect();
    assert!(misses.iter().all(|&f| f < 304), "misses at {misses:?}");
    // Back where it was once the load is back (within one M step: the neighbour just above
    // is predicted at the threshold, and nothing is probed beyond the threshold).
    let (a, b) = (trace[850].0, trace[250].0);
    assert!(a.input_size == b.input_size && a.m.abs_diff(b.m) <= c.m_step, "{a:?} vs {b:?}");
}

#[test]
fn never_oscillates_forever_under_noise() {
    let c = cfg(900.0, &LADDER);
    let mut ctl = controller(&c);
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let trace = simulate(&mut ctl, 3000, |_, s| device_ms(s) * rng.lognormal(0.08));
    let late = changes(&trace[2000..]);
    assert!(late <= 4, "{late} changes in the last 1000 frames");
    let early = changes(&trace[..1000]);
    assert!(late <= early, "oscillation does not die out: {early} then {late}");
    // And the noiseless case settles completely.
    let mut ctl = controller(&c);
    let trace = simulate(&mut ctl, 500, |_, s| device_ms(s));
    assert_eq!(changes(&trace[300..]), 0);
}

#[test]
fn honours_m_min_m_max_and_the_step() {
    let mut c = cfg(1000.0, &[448]);
    c.m_min = 200;
    c.m_max = 700;
    c.m_step = 64;
    // Everything fits: M stays at the largest allowed multiple of the step.
    let mut ctl = controller(&c);
    let trace = simulate(&mut ctl, 100, |_, _| 10.0);
    assert!(trace[20..].iter().all(|(s, _)| s.m == 640), "{:?}", trace[99]);
    // Nothing fits: M goes to the smallest allowed.
    let mut ctl = controller(&c);
    let trace = simulate(&mut ctl, 100, |_, _| 5000.0);
    assert!(trace[5..].iter().all(|(s, _)| s.m == 256), "{:?}", trace[99]);
    // In between, every M chosen is on the grid.
    let mut ctl = controller(&c);
    let mut rng = Rng(7);
    let trace = simulate(&mut ctl, 300, |_, s| (300.0 + s.m as f64) * rng.lognormal(0.2));
    for (s, _) in &trace {
        assert!(s.m >= 256 && s.m <= 640 && s.m % 64 == 0, "{s:?}");
    }
    // With the full ladder, M is on the grid or N (no reduction) where N <= m_max.
    let mut c = cfg(700.0, &LADDER);
    c.m_max = 600;
    let mut ctl = controller(&c);
    let trace = simulate(&mut ctl, 300, |f, s| device_ms(s) * if f > 150 { 2.0 } else { 1.0 });
    for (s, _) in &trace {
        let n = ((s.input_size / 14) * (s.input_size / 14)) as usize;
        assert!((s.m >= 128 && s.m <= 600 && s.m % 32 == 0) || (s.m == n && n <= 600), "{s:?}");
    }
}

#[test]
fn says_once_when_even_the_minimum_misses_and_recovers() {
    let c = cfg(100.0, &LADDER);
    let mut ctl = controller(&c);
    let trace = simulate(&mut ctl, 50, |_, s| device_ms(s));
    let st = ctl.status();
    assert!(st.unreachable);
    assert_eq!(st.unreachable_reports, 1, "said once, not every frame");
    // It runs the cheapest setting meanwhile.
    assert!(trace[10..].iter().all(|(s, _)| *s == Setting { input_size: 280, m: 128 }), "{:?}", trace[49]);
    // A budget change at run time is followed at once.
    ctl.reconfigure(&cfg(2000.0, &LADDER), &CalibrationTable::shipped()).unwrap();
    let trace = simulate(&mut ctl, 200, |_, s| device_ms(s));
    assert!(!ctl.status().unreachable);
    assert!(device_ms(trace[199].0) <= 1800.0 && fidelity(trace[199].0) > 0.9, "{:?}", trace[199]);
    // Tighter again, but reachable: it comes down within a frame.
    ctl.reconfigure(&cfg(600.0, &LADDER), &CalibrationTable::shipped()).unwrap();
    let trace = simulate(&mut ctl, 100, |_, s| device_ms(s));
    assert!(trace[1..].iter().all(|(s, _)| device_ms(*s) <= 600.0), "{:?}", &trace[..5]);
    assert_eq!(ctl.status().unreachable_reports, 1);
}

#[test]
fn recovers_after_a_single_spike() {
    let c = cfg(1000.0, &LADDER);
    let mut ctl = controller(&c);
    let trace = simulate(&mut ctl, 400, |f, s| device_ms(s) * if f == 250 { 5.0 } else { 1.0 });
    let before = trace[249].0;
    assert_eq!(changes(&trace[150..250]), 0);
    assert!(trace[290..].iter().all(|(s, _)| *s == before), "back to {before:?}: {:?}", &trace[250..262]);
}

#[test]
fn refine_lowers_m_when_the_chosen_setting_no_longer_fits() {
    let c = cfg(1000.0, &[448]);
    let mut ctl = controller(&c);
    simulate(&mut ctl, 100, |_, s| 300.0 + 0.9 * s.m as f64);
    let d = ctl.decide();
    assert_eq!(ctl.refine(d.setting), d.setting);
    // Twice as slow from now on: the next frame's M comes down before it runs.
    for _ in 0..2 {
        ctl.observe(d.setting, 2.0 * (300.0 + 0.9 * d.setting.m as f64));
    }
    let r = ctl.refine(d.setting);
    assert!(r.input_size == 448 && r.m < d.setting.m, "{r:?} from {:?}", d.setting);
}

#[test]
fn disabled_runs_the_fixed_setting() {
    let mut c = cfg(100.0, &LADDER);
    c.enabled = false;
    let mut ctl = controller(&c);
    let trace = simulate(&mut ctl, 20, |_, s| device_ms(s));
    assert!(trace.iter().all(|(s, _)| *s == Setting { input_size: 448, m: 1024 }));
    assert!(!ctl.status().unreachable);
}

#[test]
fn reload_with_a_size_without_plan_is_refused() {
    let c = cfg(1000.0, &[448, 336]);
    let mut ctl = controller(&c);
    let err = ctl.reconfigure(&cfg(1000.0, &[448, 224]), &CalibrationTable::shipped()).unwrap_err();
    assert!(err.to_string().contains("224"), "{err}");
}

#[test]
fn z_score_matches_the_normal_table() {
    use ailurus::budget::z_score;
    for (p, z) in [(0.5, 0.0), (0.9, 1.2816), (0.95, 1.6449), (0.99, 2.3263), (0.999, 3.0902)] {
        assert!((z_score(p) - z).abs() < 1e-3, "{p}: {}", z_score(p));
    }
    assert_eq!(z_score(0.3), 0.0);
}

#[test]
fn a_budget_at_the_edge_of_reach_is_reported_once_not_every_flip() {
    let c = cfg(400.0, &LADDER);
    let mut ctl = controller(&c);
    let mut rng = Rng(99);
    let (mut flips, mut last) = (0, false);
    for _ in 0..1000 {
        let d = ctl.decide();
        let ms = device_ms(d.setting) * rng.lognormal(0.1);
        ctl.observe(d.setting, ms);
        ctl.observe_latency(ms, ms);
        let u = ctl.status().unreachable;
        flips += (u != last) as u32;
        last = u;
    }
    assert!(flips >= 20, "the scenario should flap ({flips} flips)");
    assert!(ctl.status().unreachable_reports <= 3, "{} reports for {flips} flips", ctl.status().unreachable_reports);
}
