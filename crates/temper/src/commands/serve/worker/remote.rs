//! Serving in front of a remote OpenAI-compatible server (`temper serve --backend URL`): each
//! request runs on a thread of its own (the server batches, so requests overlap there), plain
//! requests as one call of the remote backend (the prompt's logprobs, when asked for, as one more
//! request), searches as locally but with every sample drawn remotely. The answer is put together
//! here as for the local engine (the same response, usage and stream); only the tokens come from
//! elsewhere. Knows nothing of HTTP or of how the remote backend talks to its server.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::Receiver;

use tempering_generate::{GenEvent, PromptLogprob};

use super::super::api::{ApiError, Job, Msg, Output, Work};
use super::super::Engine;
use super::batching::server_error;
use super::{finish_str, Runs, Worker};

impl Worker {
    /// Runs queued requests, each on its own thread, until the queue closes and every request
    /// taken is answered.
    pub(super) fn serve_remote(&self, work: Receiver<Work>) {
        std::thread::scope(|scope| {
            for w in work.iter() {
                let job = match w {
                    Work::Generate(job) => job,
                    // Runtime LoRA is refused at start-up with --backend: nothing to add.
                    Work::AddAdapter(..) | Work::RemoveAdapter(_) => continue,
                };
                if job.tx.is_closed() {
                    continue; // its client left while it waited
                }
                let tx = job.tx.clone();
                let spawned = std::thread::Builder::new()
                    .name("temper-serve-request".into())
                    .spawn_scoped(scope, move || {
                        // A panic fails that request, not the server.
                        let run = AssertUnwindSafe(|| self.run_remote(*job));
                        if catch_unwind(run).is_err() {
                            eprintln!("a request panicked on its thread; serving on");
                            let _ = tx.send(Msg::Error(server_error(
                                "the server failed on this request",
                            )));
                        }
                    });
                if let Err(e) = spawned {
                    // The job went with the closure: its client hears that the thread stopped.
                    eprintln!("starting a request thread: {e}");
                }
            }
        });
    }

    fn run_remote(&self, job: Job) {
        if job.search.is_some() {
            return self.run_search(job);
        }
        self.answer_whole(job, Self::generate_remote)
    }

    /// A plain request through the backend: tokens to a streaming client as the backend reports
    /// them (with logprobs: each sample's tokens once it finished, when they are known), then the
    /// whole response. The prompt's logprobs (`prompt_logprobs`, or `echo` with `logprobs`) are
    /// asked of the server first, where it has them (vLLM, `temper serve`).
    fn generate_remote(&self, e: &dyn Runs, job: &Job) -> Result<Output, ApiError> {
        let (req, text) = self.gen_request(e, job)?;
        let echo_k = (job.echo && job.params.logprobs).then_some(job.params.top_logprobs);
        let prompt_logprobs = match job.prompt_logprobs.max(echo_k) {
            None => None,
            Some(k) => Some(self.remote_prompt_logprobs(job, &req.prompt, k)?),
        };
        let _ = job.tx.send(Msg::Started);
        Self::stream_prompt_logprobs(e, job, &req.prompt, prompt_logprobs.as_deref());
        let lps = prompt_logprobs.as_deref();
        let (echo, start) = Self::stream_echo(e, job, text, &req.prompt, lps);
        let ids = job.return_token_ids;
        let mut held: Vec<Vec<(u32, String)>> = vec![vec![]; job.n];
        let mut offsets = vec![start; job.n];
        let out = e
            .generate_with(std::slice::from_ref(&req), &mut |ev| {
                if !job.stream {
                    return;
                }
                match ev {
                    GenEvent::Token {
                        sample,
                        token,
                        text,
                        ..
                    } => {
                        if job.params.logprobs {
                            if let Some(h) = held.get_mut(*sample) {
                                h.push((*token, text.to_string()));
                            }
                        } else if ids || !text.is_empty() {
                            let _ = job.tx.send(Msg::Token {
                                index: *sample,
                                text: text.to_string(),
                                token: ids.then_some(*token),
                                logprobs: None,
                            });
                        }
                    }
                    GenEvent::Finished {
                        sample, completion, ..
                    } => {
                        let tokens = held.get_mut(*sample).map(std::mem::take);
                        for (i, (token, text)) in tokens.into_iter().flatten().enumerate() {
                            let lp = completion.logprobs.as_ref().and_then(|l| l.get(i));
                            let top = completion
                                .top_logprobs
                                .as_ref()
                                .and_then(|t| t.get(i))
                                .map(Vec::as_slice)
                                .unwrap_or_default();
                            let logprobs = match (lp, offsets.get_mut(*sample)) {
                                (Some(&l), Some(offset)) => {
                                    let (v, next) =
                                        self.token_logprobs_json(e, job, token, l, top, *offset);
                                    *offset = next;
                                    Some(v)
                                }
                                _ => None,
                            };
                            let _ = job.tx.send(Msg::Token {
                                index: *sample,
                                text,
                                token: ids.then_some(token),
                                logprobs,
                            });
                        }
                        let _ = job.tx.send(Msg::Finish {
                            index: *sample,
                            reason: finish_str(completion.finish_reason),
                        });
                    }
                    GenEvent::Prefill { .. } => {}
                }
            })
            .map_err(ApiError::from_gen)?;
        let completions = out.into_iter().next().unwrap_or_default();
        let mut out = self.output(e, job, &req.prompt, echo.as_deref(), &completions);
        if let Some(lps) = &prompt_logprobs {
            self.with_prompt_logprobs(e, job, &req.prompt, lps, &mut out);
        }
        Ok(out)
    }

    /// The prompt's logprobs with `k` alternatives, from the server (given up once the client
    /// has gone); one that has none (llama.cpp) is a 400 `unsupported_by_backend` naming the field
    /// that asked for them.
    fn remote_prompt_logprobs(
        &self,
        job: &Job,
        prompt: &[u32],
        k: usize,
    ) -> Result<Vec<Option<PromptLogprob>>, ApiError> {
        let Engine::Remote(r) = &self.m.engine else {
            return Err(server_error("this server has no remote backend"));
        };
        let cancelled = || job.tx.is_closed();
        let lps = r.backend.prompt_logprobs_until(prompt, k, &cancelled);
        lps.map_err(|e| {
            let mut a = ApiError::from_remote(e);
            if a.code.as_deref() == Some("unsupported_by_backend") {
                let param = match job.prompt_logprobs {
                    Some(_) => "prompt_logprobs",
                    None => "echo",
                };
                a.param = Some(param.into());
            }
            a
        })
    }
}
