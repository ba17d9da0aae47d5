//! Choosing the device and the compute dtype from command-line flags.

use anyhow::{bail, Result};
use candle_core::{DType, Device};

/// `cpu` (f32) or `cuda[:N]` (bf16 by default); `auto` picks CUDA when built with it and present.
pub fn device_and_dtype(name: &str, dtype: Option<&str>) -> Result<(Device, DType)> {
    let device = match name {
        "cpu" => Device::Cpu,
        "auto" => Device::cuda_if_available(0)?,
        s if s.starts_with("cuda") => {
            let ordinal = s
                .strip_prefix("cuda:")
                .map(|n| n.parse::<usize>())
                .transpose()
                .map_err(|_| anyhow::anyhow!("--device {s}: expected cuda or cuda:N"))?
                .unwrap_or(0);
            match Device::new_cuda(ordinal) {
                Ok(d) => d,
                Err(e) => bail!("--device {s}: {e} (was temper built with --features cuda?)"),
            }
        }
        other => bail!("--device {other}: expected cpu, cuda, cuda:N or auto"),
    };
    let dtype = match dtype {
        None if device.is_cpu() => DType::F32,
        None => DType::BF16,
        Some("f32") => DType::F32,
        Some("bf16") => DType::BF16,
        Some("f16") => DType::F16,
        Some("q8_0") => bail!(
            "--dtype q8_0: for inference only (generate, chat, search, eval, serve) on the CPU; \
             expected f32, bf16 or f16 here"
        ),
        Some(other) => bail!("--dtype {other}: expected f32, bf16 or f16"),
    };
    if device.is_cpu() {
        announce_cpu_kernels();
    }
    Ok((device, dtype))
}

/// Says once which kernels the CPU's matrix products use: oneDNN or OpenBLAS at info level (`TEMPER_LOG=info`),
/// or, as a warning, that it is missing and candle's slower kernels run instead.
fn announce_cpu_kernels() {
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        let line = tempering_model::ops::blas::describe();
        if tempering_model::ops::blas::available() {
            tracing::info!("{line}");
        } else if std::env::var("TEMPER_BLAS").as_deref() != Ok("off") {
            tracing::warn!("{line}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtypes_are_named_and_q8_0_is_refused_outside_inference() {
        assert_eq!(device_and_dtype("cpu", None).unwrap().1, DType::F32);
        assert_eq!(
            device_and_dtype("cpu", Some("bf16")).unwrap().1,
            DType::BF16
        );
        let e = device_and_dtype("cpu", Some("q8_0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--dtype q8_0") && e.contains("inference"), "{e}");
        let e = device_and_dtype("cpu", Some("f8")).unwrap_err().to_string();
        assert!(e.contains("expected f32, bf16 or f16"), "{e}");
    }
}
