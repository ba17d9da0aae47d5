//! Runtime LoRA, in vLLM's API: `POST /v1/load_lora_adapter {"lora_name", "lora_path"}` puts a PEFT
//! adapter on a cheap clone of the base model (every base weight shared, not copied) and hands the
//! engine to the model thread, after which `model: lora_name` serves it (and `/v1/models` lists
//! it); `POST /v1/unload_lora_adapter {"lora_name"}` takes it away. Loading runs off the model
//! thread, so generation goes on meanwhile. Off unless `--allow-runtime-lora` (clients name
//! directories on the server's disk).

use super::*;

/// Most adapters loaded at once.
pub const MAX_ADAPTERS: usize = 32;

pub(super) async fn load(State(s): State<Arc<AppState>>, req: Request) -> Response {
    let r = load_inner(s.clone(), req)
        .await
        .unwrap_or_else(|e| e.into_response());
    answered(&s, "/v1/load_lora_adapter", r)
}

fn required<'a>(m: &'a Map<String, Value>, k: &str) -> Result<&'a str, ApiError> {
    opt_str(m, k)?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::bad(format!("{k}: required (a non-empty string)"), k))
}

/// Takes `name` off the loading list when dropped (the load ended, well or not).
struct Loading<'a>(&'a AppState, String);

impl Drop for Loading<'_> {
    fn drop(&mut self) {
        if let Ok(mut l) = self.0.adapters_loading.lock() {
            l.remove(&self.1);
        }
    }
}

/// 404 unless the server was started with `--allow-runtime-lora`.
fn check_allowed(s: &AppState) -> Result<(), ApiError> {
    if s.runtime_lora {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "runtime LoRA loading is off: start temper serve with --allow-runtime-lora (it loads adapter directories that clients name from the server's disk)",
    )
    .code("not_found"))
}

async fn load_inner(s: Arc<AppState>, req: Request) -> Result<Response, ApiError> {
    check_key(&s, req.headers())?;
    check_allowed(&s)?;
    check_ready(&s)?;
    let m = read_json(req).await?;
    let name = required(&m, "lora_name")?.to_string();
    let path = std::path::PathBuf::from(required(&m, "lora_path")?);
    if name == s.name || name.contains('@') {
        return Err(ApiError::bad(
            format!(
                "lora_name `{name}`: expected a name other than the served model's, without `@`"
            ),
            "lora_name",
        ));
    }
    {
        let adapters = s
            .adapters
            .read()
            .map_err(|_| server_error("the adapter table is poisoned"))?;
        if adapters.contains_key(&name) {
            return Err(ApiError::bad(
                format!("the LoRA adapter `{name}` is already loaded: unload it first"),
                "lora_name",
            ));
        }
        if adapters.len() >= MAX_ADAPTERS {
            return Err(ApiError::bad(
                format!("{MAX_ADAPTERS} LoRA adapters are loaded, the most this server holds: unload one first"),
                "lora_name",
            ));
        }
    }
    {
        let mut loading = s
            .adapters_loading
            .lock()
            .map_err(|_| server_error("the adapter table is poisoned"))?;
        if !loading.insert(name.clone()) {
            return Err(ApiError::bad(
                format!("the LoRA adapter `{name}` is being loaded by another request"),
                "lora_name",
            ));
        }
    }
    let _loading = Loading(&s, name.clone());
    let info = s
        .info
        .get()
        .ok_or_else(|| server_error("the model is loaded but its base is not"))?;
    let base = info.base.clone().ok_or_else(|| {
        ApiError::bad(
            "this server generates on --backend and holds no weights to put an adapter on",
            "lora_path",
        )
    })?;
    let (mut model, tok, rows) = (base, info.tokenizer.clone(), s.batch_rows);
    let dir = path.clone();
    let engine = tokio::task::spawn_blocking(move || {
        model.apply_peft(&dir).map(|_| {
            tempering_generate::LocalEngine::new(model, tok).with_options(
                tempering_generate::EngineOptions {
                    max_batch_rows: rows,
                },
            )
        })
    })
    .await
    .map_err(|_| server_error("loading the adapter stopped"))?
    .map_err(|e| {
        ApiError::bad(format!("lora_path {}: {e}", path.display()), "lora_path")
            .code("invalid_lora_path")
    })?;
    {
        // Queued before the name is visible: requests naming it reach the model thread after it.
        let mut adapters = s
            .adapters
            .write()
            .map_err(|_| server_error("the adapter table is poisoned"))?;
        s.jobs
            .lock()
            .map_err(|_| server_error("the model thread is gone"))?
            .send(Work::AddAdapter(name.clone(), Box::new(engine)))
            .map_err(|_| server_error("the model thread is gone"))?;
        adapters.insert(name.clone(), path);
    }
    eprintln!("LoRA adapter {name} loaded");
    Ok(format!("Success: LoRA adapter '{name}' added successfully.").into_response())
}

pub(super) async fn unload(State(s): State<Arc<AppState>>, req: Request) -> Response {
    let r = unload_inner(&s, req)
        .await
        .unwrap_or_else(|e| e.into_response());
    answered(&s, "/v1/unload_lora_adapter", r)
}

async fn unload_inner(s: &AppState, req: Request) -> Result<Response, ApiError> {
    check_key(s, req.headers())?;
    check_allowed(s)?;
    check_ready(s)?;
    let m = read_json(req).await?;
    let name = required(&m, "lora_name")?.to_string();
    {
        let mut adapters = s
            .adapters
            .write()
            .map_err(|_| server_error("the adapter table is poisoned"))?;
        if adapters.remove(&name).is_none() {
            let mut e = ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("the LoRA adapter `{name}` is not loaded"),
            );
            e.param = Some("lora_name".into());
            return Err(e.code("lora_not_found"));
        }
        // Requests already queued for it are answered 404 by the model thread.
        s.jobs
            .lock()
            .map_err(|_| server_error("the model thread is gone"))?
            .send(Work::RemoveAdapter(name.clone()))
            .map_err(|_| server_error("the model thread is gone"))?;
    }
    eprintln!("LoRA adapter {name} unloaded");
    Ok(format!("Success: LoRA adapter '{name}' removed successfully.").into_response())
}
