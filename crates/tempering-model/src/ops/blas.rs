//! The system's OpenBLAS, opened at run time, for the CPU's f32 matrix products: the linear layers'
//! forward and both backward products, and LoRA's. Debian's `libopenblas0` picks kernels for the
//! CPU it runs on (AVX-512 "SkylakeX"/"Cooperlake" on recent Intel cores); measured on the model's
//! shapes (`cargo bench -p tempering-model --bench gemm`) it matches candle's `gemm` crate at 1024
//! rows and is up to 2-3x as fast at 8-64 rows (batched decode, LoRA's rank-8 products); SmolLM2's
//! prefill gained 4-8%, a LoRA SFT step 12% (docs/performance.md).
//!
//! The library is opened once, on first use, with `dlopen` (no link-time dependency: a machine
//! without it builds and runs, on candle's kernels, and says so once). `TEMPER_BLAS=off` turns it
//! off, `TEMPER_BLAS=/path/libopenblas.so` names another build. OpenBLAS uses as many threads as
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

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

struct Library {
    sgemm: Sgemm,
    name: String,
    /// Kept open for the life of the process: `sgemm` points into it.
    _lib: libloading::Library,
}

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
        for path in &candidates {
            match open(path) {
                Ok(lib) => return Loaded::Ready(lib),
                Err(e) => errors.push(format!("{path}: {e}")),
            }
        }
        Loaded::Missing(errors.join("; "))
    })
}

fn open(path: &str) -> Result<Library, libloading::Error> {
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
        Ok(Library {
            sgemm,
            name,
            _lib: lib,
        })
    }
}

/// Whether the products run through OpenBLAS.
pub fn available() -> bool {
    matches!(load(), Loaded::Ready(_))
}

/// One line for a start-up message: which kernels the CPU's matrix products use, and why.
pub fn describe() -> String {
    match load() {
        Loaded::Ready(l) => format!("matrix products: {}", l.name),
        Loaded::Missing(why) => format!(
            "matrix products: candle's gemm kernels (OpenBLAS not loaded: {why}; \
             `apt-get install libopenblas0` makes training and prefill faster)"
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
        let dims = [self.m, self.n, self.k];
        dims.iter().all(|&d| d > 0 && d <= i32::MAX as usize)
            && a.len() == self.m * self.k
            && b.len() == self.k * self.n
            && c.len() == self.m * self.n
    }
}

/// Computes `p` with OpenBLAS; `false` (and `c` untouched) when the library is not loaded or the
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
    let Loaded::Ready(lib) = load() else {
        return false;
    };
    if !p.fits(a, b, c) {
        return false;
    }
    let (lda, ldb, ldc) = (
        if p.trans_a { p.m } else { p.k },
        if p.trans_b { p.k } else { p.n },
        p.n,
    );
    let flag = |t: bool| if t { TRANS } else { NO_TRANS };
    // SAFETY: the sizes were checked against the slices above (dense, so the leading dimensions
    // are the row lengths), and all fit in i32.
    unsafe {
        (lib.sgemm)(
            ROW_MAJOR,
            flag(p.trans_a),
            flag(p.trans_b),
            p.m as i32,
            p.n as i32,
            p.k as i32,
            1.0,
            a.as_ptr(),
            lda as i32,
            b.as_ptr(),
            ldb as i32,
            beta,
            c.as_mut_ptr(),
            ldc as i32,
        );
    }
    true
}

/// `p` into a new vector, or `None` when OpenBLAS is not loaded.
pub fn sgemm_new(p: Product, a: &[f32], b: &[f32]) -> Option<Vec<f32>> {
    if !available() {
        return None;
    }
    let mut c = vec![0f32; p.m * p.n];
    sgemm(p, a, b, &mut c).then_some(c)
}
