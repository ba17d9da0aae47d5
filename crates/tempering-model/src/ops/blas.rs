//! The system's BLAS libraries, opened at run time, for the CPU's f32 matrix products: the linear
//! layers' forward and both backward products, LoRA's, the LM head's. Two are used where installed:
//! oneDNN (Debian's `libdnnl2`, the library PyTorch's CPU products build on) for most shapes, and
//! OpenBLAS (`libopenblas0`, which picks AVX-512 kernels for the CPU it runs on) for the widest (the
//! LM head's forward), each where it measured faster on the model's shapes
//! (`scripts/bench/gemm_libs.py`: oneDNN up to 1.4x OpenBLAS on the 192-wide key and value
//! projections). Either alone runs every product. Against candle's `gemm` crate OpenBLAS matched it
//! at 1024 rows and was 2-3x as fast at 8-64 rows; oneDNN over OpenBLAS made a SmolLM2 SFT step
//! 6-17% faster in two interleaved rounds (docs/performance.md).
//!
//! Each library is opened once, on first use, with `dlopen` (no link-time dependency: a machine
//! without them builds and runs, on candle's kernels, and says so once). `TEMPER_BLAS=off` turns
//! both off, `TEMPER_BLAS=/path/libopenblas.so` names another OpenBLAS build, `TEMPER_DNNL=off`
//! leaves oneDNN out and `TEMPER_DNNL=all` gives it every product. Both use as many threads as
//! rayon's pool has. (Single-threaded calls split into blocks over rayon's threads were measured
//! too: 5-10% slower at the model level, as each block packs the shared operand again.)
//!
//! Knows dense row-major f32 slices only: nothing of tensors, layers or models.

use std::sync::OnceLock;

/// `cblas_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`.
type Sgemm = unsafe extern "C" fn(
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    f32,
    *const f32,
    i32,
    *const f32,
    i32,
    f32,
    *mut f32,
    i32,
);

/// `dnnl_sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)`, row-major,
/// returning a status (0: success).
type DnnlSgemm = unsafe extern "C" fn(
    std::ffi::c_char,
    std::ffi::c_char,
    i64,
    i64,
    i64,
    f32,
    *const f32,
    i64,
    *const f32,
    i64,
    f32,
    *mut f32,
    i64,
) -> i32;

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

/// What runs the products: oneDNN and OpenBLAS where each loaded; at least one of them.
struct Library {
    openblas: Option<OpenBlas>,
    dnnl: Option<Dnnl>,
}

struct OpenBlas {
    sgemm: Sgemm,
    name: String,
    /// Kept open for the life of the process: `sgemm` points into it.
    _lib: libloading::Library,
}

struct Dnnl {
    sgemm: DnnlSgemm,
    /// Every product, or (the default) all but those OpenBLAS runs faster where it is loaded.
    everything: bool,
    _lib: libloading::Library,
}

/// Products at least this wide (`n`: the LM head's 49,152-column forward) go to OpenBLAS where both
/// libraries are loaded: at 1024 rows x 576 it ran them at 318 GFLOP/s against oneDNN's 298 (at 512
/// rows level: 283 against 289), where oneDNN led on every narrower shape by up to 1.4x
/// (`scripts/bench/gemm_libs.py`, one run). The model-level A/B (`TEMPER_DNNL=all` against this
/// split, one SFT round) was within its noise.
const OPENBLAS_MIN_N: usize = 8192;

enum Loaded {
    Ready(Library),
    /// Why not: the message said once at start-up.
    Missing(String),
}

static LOADED: OnceLock<Loaded> = OnceLock::new();

fn load() -> &'static Loaded {
    LOADED.get_or_init(|| {
        let chosen = std::env::var("TEMPER_BLAS").ok();
        if chosen.as_deref() == Some("off") {
            return Loaded::Missing("TEMPER_BLAS=off".into());
        }
        let candidates: Vec<String> = match chosen {
            Some(path) if !path.is_empty() => vec![path],
            _ => vec!["libopenblas.so.0".into(), "libopenblas.so".into()],
        };
        let mut errors = Vec::new();
        let mut openblas = None;
        for path in &candidates {
            match open_openblas(path) {
                Ok(lib) => {
                    openblas = Some(lib);
                    break;
                }
                Err(e) => errors.push(format!("{path}: {e}")),
            }
        }
        let dnnl = match open_dnnl() {
            Ok(d) => d,
            Err(e) => {
                errors.push(format!("libdnnl.so.2: {e}"));
                None
            }
        };
        if openblas.is_none() && dnnl.is_none() {
            return Loaded::Missing(errors.join("; "));
        }
        Loaded::Ready(Library { openblas, dnnl })
    })
}

fn open_openblas(path: &str) -> Result<OpenBlas, libloading::Error> {
    // SAFETY: opening OpenBLAS runs its initialisers only (thread-pool set-up); the symbols are
    // looked up with the C signatures OpenBLAS documents in cblas.h and openblas_config.h.
    unsafe {
        let lib = libloading::Library::new(path)?;
        let sgemm = *lib.get::<Sgemm>(b"cblas_sgemm\0")?;
        if let Ok(set) = lib.get::<unsafe extern "C" fn(i32)>(b"openblas_set_num_threads\0") {
            set(rayon::current_num_threads().clamp(1, 256) as i32);
        }
        let mut name = format!("OpenBLAS ({path})");
        if let Ok(core) =
            lib.get::<unsafe extern "C" fn() -> *const std::ffi::c_char>(b"openblas_get_corename\0")
        {
            let p = core();
            if !p.is_null() {
                let core = std::ffi::CStr::from_ptr(p).to_string_lossy();
                name = format!("OpenBLAS ({path}, {core} kernels)");
            }
        }
        Ok(OpenBlas {
            sgemm,
            name,
            _lib: lib,
        })
    }
}

/// oneDNN's threads are OpenMP's (`libgomp`), which read their settings once, when the library
/// loads: unless the environment says otherwise, `threads` of them (rayon's count), waiting
/// passively, since a spinning OpenMP worker takes the core that rayon's element-wise ops run on
/// between two products (a SmolLM2 SFT step took 2.9 s with `OMP_WAIT_POLICY=active`, 2.3 s
/// passive). A program calls this before it starts any thread (`temper` does, first thing in
/// `main`); [`open_dnnl`] calls it too, before loading, for a program that has not.
pub fn openmp_defaults(threads: usize) {
    for (var, value) in [
        ("OMP_WAIT_POLICY", "passive".to_string()),
        ("OMP_NUM_THREADS", threads.clamp(1, 256).to_string()),
    ] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, value);
        }
    }
}

/// oneDNN (Debian's `libdnnl2`), unless `TEMPER_DNNL=off`; `TEMPER_DNNL=all` gives it every
/// product.
fn open_dnnl() -> Result<Option<Dnnl>, libloading::Error> {
    let everything = match std::env::var("TEMPER_DNNL").ok().as_deref() {
        Some("off") => return Ok(None),
        Some("all") => true,
        _ => false,
    };
    openmp_defaults(rayon::current_num_threads());
    // SAFETY: opening oneDNN runs its initialisers (and OpenMP's); the symbol is looked up with the
    // signature of `dnnl_sgemm` in oneDNN's dnnl.h.
    unsafe {
        let lib = libloading::Library::new("libdnnl.so.2")?;
        let sgemm = *lib.get::<DnnlSgemm>(b"dnnl_sgemm\0")?;
        Ok(Some(Dnnl {
            sgemm,
            everything,
            _lib: lib,
        }))
    }
}

/// Whether the products run through a BLAS (oneDNN or OpenBLAS).
pub fn available() -> bool {
    matches!(load(), Loaded::Ready(_))
}

/// One line for a start-up message: which kernels the CPU's matrix products use, and why.
pub fn describe() -> String {
    match load() {
        Loaded::Ready(Library { openblas, dnnl }) => match (openblas, dnnl) {
            (Some(o), Some(d)) if d.everything => {
                format!(
                    "matrix products: oneDNN (libdnnl.so.2; {} loaded, unused)",
                    o.name
                )
            }
            (Some(o), Some(_)) => format!(
                "matrix products: oneDNN (libdnnl.so.2), and {} for the widest (the LM head)",
                o.name
            ),
            (Some(o), None) => format!(
                "matrix products: {} (oneDNN not loaded: `apt-get install libdnnl2` makes \
                 training faster)",
                o.name
            ),
            (None, _) => "matrix products: oneDNN (libdnnl.so.2)".to_string(),
        },
        Loaded::Missing(why) => format!(
            "matrix products: candle's gemm kernels (no BLAS loaded: {why}; \
             `apt-get install libdnnl2 libopenblas0-pthread` makes training and prefill faster)"
        ),
    }
}

/// A row-major product `c [m, n] = op(a) @ op(b)`, overwriting `c`: `a` is `[m, k]`, or `[k, m]`
/// when `trans_a`; `b` is `[k, n]`, or `[n, k]` when `trans_b`. All dense.
#[derive(Clone, Copy, Debug)]
pub struct Product {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

impl Product {
    fn fits(&self, a: &[f32], b: &[f32], c: &[f32]) -> bool {
        self.fits_inputs(a, b) && c.len() == self.m * self.n
    }

    fn fits_inputs(&self, a: &[f32], b: &[f32]) -> bool {
        let dims = [self.m, self.n, self.k];
        dims.iter().all(|&d| d > 0 && d <= i32::MAX as usize)
            && self
                .m
                .checked_mul(self.n)
                .is_some_and(|mn| mn <= isize::MAX as usize / 4)
            && a.len() == self.m * self.k
            && b.len() == self.k * self.n
    }
}

/// Computes `p` with oneDNN or OpenBLAS; `false` (and `c` untouched) when neither is loaded or the
/// slices do not have the product's sizes: the caller then uses candle's kernels.
pub fn sgemm(p: Product, a: &[f32], b: &[f32], c: &mut [f32]) -> bool {
    gemm(p, a, b, c, 0.0)
}

/// [`sgemm`] adding the product to what `c` holds (`c += op(a) @ op(b)`).
pub fn sgemm_add(p: Product, a: &[f32], b: &[f32], c: &mut [f32]) -> bool {
    gemm(p, a, b, c, 1.0)
}

/// `c = op(a) @ op(b) + beta * c`.
fn gemm(p: Product, a: &[f32], b: &[f32], c: &mut [f32], beta: f32) -> bool {
    if !p.fits(a, b, c) {
        return false;
    }
    // SAFETY: the sizes fit the slices, checked above.
    unsafe { gemm_raw(p, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), beta) }
}

/// One of the libraries, to run a product on it alone ([`sgemm_on`]; tests compare each with
/// candle's kernels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    OneDnn,
    OpenBlas,
}

/// Which libraries loaded.
pub fn backends() -> Vec<Backend> {
    match load() {
        Loaded::Ready(lib) => lib
            .dnnl
            .as_ref()
            .map(|_| Backend::OneDnn)
            .into_iter()
            .chain(lib.openblas.as_ref().map(|_| Backend::OpenBlas))
            .collect(),
        Loaded::Missing(_) => Vec::new(),
    }
}

/// [`sgemm`] on `backend` only; `false` (and `c` untouched) when that library is not loaded or the
/// slices do not fit.
pub fn sgemm_on(backend: Backend, p: Product, a: &[f32], b: &[f32], c: &mut [f32]) -> bool {
    let Loaded::Ready(lib) = load() else {
        return false;
    };
    if !p.fits(a, b, c) {
        return false;
    }
    let (a, b, c) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
    // SAFETY: the sizes fit the slices, checked above.
    unsafe {
        match backend {
            Backend::OneDnn => lib.dnnl.as_ref().is_some_and(|d| d.run(p, a, b, c, 0.0)),
            Backend::OpenBlas => lib
                .openblas
                .as_ref()
                .is_some_and(|o| o.run(p, a, b, c, 0.0)),
        }
    }
}

impl Product {
    /// The leading dimensions of dense row-major operands.
    fn leading(&self) -> (usize, usize, usize) {
        (
            if self.trans_a { self.m } else { self.k },
            if self.trans_b { self.k } else { self.n },
            self.n,
        )
    }
}

impl Dnnl {
    /// # Safety
    /// As [`gemm_raw`].
    unsafe fn run(&self, p: Product, a: *const f32, b: *const f32, c: *mut f32, beta: f32) -> bool {
        let (lda, ldb, ldc) = p.leading();
        let flag = |t: bool| (if t { b'T' } else { b'N' }) as std::ffi::c_char;
        // SAFETY: the caller's sizes (dense, so the leading dimensions are the row lengths).
        let status = unsafe {
            (self.sgemm)(
                flag(p.trans_a),
                flag(p.trans_b),
                p.m as i64,
                p.n as i64,
                p.k as i64,
                1.0,
                a,
                lda as i64,
                b,
                ldb as i64,
                beta,
                c,
                ldc as i64,
            )
        };
        status == 0
    }
}

impl OpenBlas {
    /// # Safety
    /// As [`gemm_raw`].
    unsafe fn run(&self, p: Product, a: *const f32, b: *const f32, c: *mut f32, beta: f32) -> bool {
        let (lda, ldb, ldc) = p.leading();
        let flag = |t: bool| if t { TRANS } else { NO_TRANS };
        // SAFETY: the caller's sizes (dense, so the leading dimensions are the row lengths), all
        // in i32.
        unsafe {
            (self.sgemm)(
                ROW_MAJOR,
                flag(p.trans_a),
                flag(p.trans_b),
                p.m as i32,
                p.n as i32,
                p.k as i32,
                1.0,
                a,
                lda as i32,
                b,
                ldb as i32,
                beta,
                c,
                ldc as i32,
            );
        }
        true
    }
}

/// # Safety
/// `a`, `b` hold `m * k` and `k * n` readable values and `c` room for `m * n` (read where
/// `beta != 0`); all three sizes fit in i32.
unsafe fn gemm_raw(p: Product, a: *const f32, b: *const f32, c: *mut f32, beta: f32) -> bool {
    let Loaded::Ready(lib) = load() else {
        return false;
    };
    if let Some(d) = &lib.dnnl {
        let openblas_leads = !d.everything && p.n >= OPENBLAS_MIN_N && lib.openblas.is_some();
        // SAFETY: the caller's contract.
        if !openblas_leads && unsafe { d.run(p, a, b, c, beta) } {
            return true;
        }
        // Else OpenBLAS: it leads on this shape, or oneDNN refused (out of memory for its
        // packing buffers); candle where OpenBLAS is missing too.
    }
    // SAFETY: the caller's contract.
    lib.openblas
        .as_ref()
        .is_some_and(|o| unsafe { o.run(p, a, b, c, beta) })
}

/// `p` into a new vector, or `None` when no BLAS is loaded.
pub fn sgemm_new(p: Product, a: &[f32], b: &[f32]) -> Option<Vec<f32>> {
    if !available() || !p.fits_inputs(a, b) {
        return None;
    }
    let mut c: Vec<f32> = Vec::with_capacity(p.m * p.n);
    // SAFETY: sizes checked; with beta 0 the libraries write every entry of `c` without reading
    // it, so the vector's length is set only after the product.
    unsafe {
        if !gemm_raw(p, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), 0.0) {
            return None;
        }
        c.set_len(p.m * p.n);
    }
    Some(c)
}
