//! Continuous batching on the model thread: plain generation requests decode together in one
//! [`DecodeBatch`]; requests arriving mid-decode join at the next step, their prompts prefilled
//! together (same engine, rows within `--batch-rows`; otherwise they wait for the batch to drain), finished requests leave at once,
//! and a request whose client went away is cancelled. Searches run whole between steps. The
//! number of requests waiting or running is bounded by `--max-concurrency` on the HTTP side.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{Receiver, TryRecvError};

use tempering_generate::{DecodeBatch, GenEvent, GenRequest, PromptLogprob, TopLogprob};

use super::super::api::{ApiError, Job, Msg, Work};
use super::super::metrics::Running;
use super::{finish_str, Worker};

/// A request checked and about to join the batch, prefilled with those joining beside it.
struct Joining {
    id: usize,
    job: Box<Job>,
    req: GenRequest,
    text: String,
    prompt_logprobs: Option<Vec<Option<PromptLogprob>>>,
    running: Running,
}

/// A request decoding in the batch.
struct Active {
    job: Box<Job>,
    prompt: Vec<u32>,
    /// The prompt's text, for `echo`.
    echo: Option<String>,
    /// Its prompt's logprobs, when asked for (`prompt_logprobs`, or `echo` with `logprobs`).
    prompt_logprobs: Option<Vec<Option<PromptLogprob>>>,
    /// Streamed logprobs: each sample's byte offset in its token strings (`text_offset`).
    offsets: Vec<usize>,
    _running: Running,
}

impl Worker {
    /// Runs queued work until the queue closes and everything taken is answered.
    pub fn serve(&mut self, work: Receiver<Work>) {
        if matches!(self.m.engine, super::Engine::Remote(_)) {
            return self.serve_remote(work);
        }
        let mut batch = DecodeBatch::new();
        // Whose engine the batch runs on: the served model (`None`) or an adapter.
        let mut batch_on: Option<String> = None;
        let mut active: HashMap<usize, Active> = HashMap::new();
        let mut waiting: VecDeque<Box<Job>> = VecDeque::new();
        let mut removals: Vec<String> = vec![];
        let mut next_id = 0usize;
        let mut open = true;
        loop {
            let mut incoming = vec![];
            if batch.is_empty() && waiting.is_empty() {
                if !open {
                    break;
                }
                match work.recv() {
                    Ok(w) => incoming.push(w),
                    Err(_) => break,
                }
            }
            loop {
                match work.try_recv() {
                    Ok(w) => incoming.push(w),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            for w in incoming {
                match w {
                    Work::Generate(job) if job.search.is_some() => {
                        // A panic fails that request (its channel closes: a 500), not the server.
                        let run = std::panic::AssertUnwindSafe(|| self.run_search(*job));
                        if std::panic::catch_unwind(run).is_err() {
                            eprintln!("a search panicked in the model thread; serving on");
                        }
                    }
                    Work::Generate(job) => waiting.push_back(job),
                    Work::AddAdapter(name, engine) => {
                        // An unload of this name queued before it (the API refuses to load a
                        // loaded name) was for the engine this one replaces: applied after the
                        // insert it would take the new one away.
                        removals.retain(|r| *r != name);
                        self.adapters.insert(name, *engine);
                    }
                    Work::RemoveAdapter(name) => removals.push(name),
                }
            }
            // An adapter leaves once no batch decodes on it.
            let busy = (!batch.is_empty()).then(|| batch_on.clone()).flatten();
            for name in std::mem::take(&mut removals) {
                if busy.as_ref() == Some(&name) {
                    removals.push(name);
                } else {
                    self.adapters.remove(&name);
                }
            }

            // Admit waiting requests, in order, while they fit (one engine, rows within
            // --batch-rows): each checked and templated alone, their prompts prefilled together.
            let mut joining: Vec<Joining> = vec![];
            let mut rows = batch.rows();
            while let Some(job) = waiting.front() {
                let first = batch.is_empty() && joining.is_empty();
                let on = joining.first().map_or(&batch_on, |j| &j.job.adapter);
                if !first && (job.adapter != *on || rows + job.n > self.max_rows) {
                    break;
                }
                let Some(job) = waiting.pop_front() else {
                    break;
                };
                if job.tx.is_closed() {
                    continue; // its client left while it waited
                }
                let running = self.metrics.running();
                match self.prepare(&job) {
                    Ok((req, text, prompt_logprobs)) => {
                        rows += job.n;
                        joining.push(Joining {
                            id: next_id,
                            job,
                            req,
                            text,
                            prompt_logprobs,
                            running,
                        });
                        next_id += 1;
                    }
                    Err(e) => {
                        let tx = job.tx.clone();
                        drop((job, running));
                        let _ = tx.send(Msg::Error(e));
                    }
                }
            }
            if !joining.is_empty() {
                match self.admit_together(&mut batch, &joining) {
                    Ok(()) => {
                        batch_on = joining[0].job.adapter.clone();
                        for j in joining {
                            let _ = j.job.tx.send(Msg::Started);
                            let lps = j.prompt_logprobs.as_deref();
                            let (echo, start) = match self.engine_for(&j.job) {
                                Ok(e) => {
                                    Self::stream_prompt_logprobs(e, &j.job, &j.req.prompt, lps);
                                    Self::stream_echo(e, &j.job, j.text, &j.req.prompt, lps)
                                }
                                Err(_) => (j.job.echo.then_some(j.text), 0),
                            };
                            let n = j.job.n;
                            active.insert(
                                j.id,
                                Active {
                                    job: j.job,
                                    prompt: j.req.prompt,
                                    echo,
                                    prompt_logprobs: j.prompt_logprobs,
                                    offsets: vec![start; n],
                                    _running: j.running,
                                },
                            );
                        }
                    }
                    Err(e) => {
                        for j in joining {
                            let _ = j.job.tx.send(Msg::Error(e.clone()));
                        }
                    }
                }
            }

            // Clients that went away: their rows leave (and their slots free).
            let gone: Vec<usize> = active
                .iter()
                .filter(|(_, a)| a.job.tx.is_closed())
                .map(|(&id, _)| id)
                .collect();
            for id in gone {
                active.remove(&id);
                self.metrics.cancelled();
                if batch.cancel(id).is_err() {
                    fail_all(&mut batch, &mut active, "cancelling a request failed");
                }
            }
            if batch.is_empty() {
                continue;
            }
            self.metrics.decode_step(batch.requests());
            self.step(&mut batch, &batch_on, &mut active);
        }
    }

    /// Checks and templates `job`: its request, its prompt's text, and its prompt's logprobs when
    /// asked for (`prompt_logprobs`, or `echo` with `logprobs`: one forward over the prompt,
    /// before it joins).
    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        job: &Job,
    ) -> Result<(GenRequest, String, Option<Vec<Option<PromptLogprob>>>), ApiError> {
        let engine = self.engine_for(job)?;
        let (req, text) = self.gen_request(engine, job)?;
        let echo_k = (job.echo && job.params.logprobs).then_some(job.params.top_logprobs);
        let prompt_logprobs = match job.prompt_logprobs.max(echo_k) {
            None => None,
            Some(k) => {
                let run = std::panic::AssertUnwindSafe(|| engine.prompt_logprobs(&req.prompt, k));
                match std::panic::catch_unwind(run) {
                    Ok(Ok(lps)) => Some(lps),
                    Ok(Err(e)) => return Err(ApiError::from_gen(e)),
                    Err(_) => return Err(server_error("the model thread failed on this prompt")),
                }
            }
        };
        Ok((req, text, prompt_logprobs))
    }

    /// Prefills the joining requests (one engine: the first's) into the batch together.
    fn admit_together(&self, batch: &mut DecodeBatch, joining: &[Joining]) -> Result<(), ApiError> {
        let engine = self.engine_for(&joining[0].job)?;
        let reqs: Vec<(usize, &GenRequest)> = joining.iter().map(|j| (j.id, &j.req)).collect();
        let run = std::panic::AssertUnwindSafe(|| batch.admit_many(engine, &reqs));
        match std::panic::catch_unwind(run) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ApiError::from_gen(e)),
            Err(_) => Err(server_error("the model thread failed on these requests")),
        }
    }

    /// One decode step: tokens to streaming clients, finished requests answered.
    fn step(
        &self,
        batch: &mut DecodeBatch,
        on: &Option<String>,
        active: &mut HashMap<usize, Active>,
    ) {
        let engine = match self.engine_named(on) {
            Ok(e) => e,
            Err(_) => return fail_all(batch, active, "the batch's adapter is gone"),
        };
        let routes = &*active;
        // Streams that asked for logprobs wait for the step's end, where each token's logprob is
        // read (from the batch, or from the completion of a sample that finished).
        let mut held: Vec<Held> = vec![];
        let mut finished_lp: HashMap<(usize, usize), (f32, Vec<TopLogprob>)> = HashMap::new();
        let run = std::panic::AssertUnwindSafe(|| {
            batch.step(engine, &mut |ev| match ev {
                GenEvent::Token {
                    request,
                    sample,
                    token,
                    text,
                } => {
                    let Some(a) = routes.get(request).filter(|a| a.job.stream) else {
                        return;
                    };
                    let ids = a.job.return_token_ids;
                    if a.job.params.logprobs {
                        held.push(Held::Token {
                            id: *request,
                            sample: *sample,
                            token: *token,
                            text: text.to_string(),
                        });
                    } else if ids || !text.is_empty() {
                        let _ = a.job.tx.send(Msg::Token {
                            index: *sample,
                            text: text.to_string(),
                            token: ids.then_some(*token),
                            logprobs: None,
                        });
                    }
                }
                GenEvent::Finished {
                    request,
                    sample,
                    completion,
                } => {
                    let Some(a) = routes.get(request).filter(|a| a.job.stream) else {
                        return;
                    };
                    let reason = finish_str(completion.finish_reason);
                    if a.job.params.logprobs {
                        if let Some(&lp) = completion.logprobs.as_ref().and_then(|l| l.last()) {
                            let top = completion
                                .top_logprobs
                                .as_ref()
                                .and_then(|t| t.last().cloned())
                                .unwrap_or_default();
                            finished_lp.insert((*request, *sample), (lp, top));
                        }
                        held.push(Held::Finish {
                            id: *request,
                            sample: *sample,
                            reason,
                        });
                    } else {
                        let _ = a.job.tx.send(Msg::Finish {
                            index: *sample,
                            reason,
                        });
                    }
                }
                _ => {}
            })
        });
        let result = std::panic::catch_unwind(run);
        self.send_held(engine, batch, active, held, &finished_lp);
        match result {
            Ok(Ok(done)) => {
                for (id, completions) in done {
                    if let Some(mut a) = active.remove(&id) {
                        let mut out =
                            self.output(engine, &a.job, &a.prompt, a.echo.as_deref(), &completions);
                        if let Some(lps) = a.prompt_logprobs.take() {
                            self.with_prompt_logprobs(engine, &a.job, &a.prompt, &lps, &mut out);
                        }
                        self.metrics.finished(&out.usage, a.job.received.elapsed());
                        // Its slot and running count are free before the client hears back.
                        let tx = a.job.tx.clone();
                        drop(a);
                        let _ = tx.send(Msg::Done(out));
                    }
                }
            }
            Ok(Err(e)) => fail_all(batch, active, &format!("decoding failed: {e}")),
            Err(_) => {
                eprintln!("a decode step panicked in the model thread; serving on");
                fail_all(batch, active, "the model thread failed on this batch")
            }
        }
    }
}

/// A streamed message held until the step's end (its request asked for logprobs).
enum Held {
    Token {
        id: usize,
        sample: usize,
        token: u32,
        text: String,
    },
    Finish {
        id: usize,
        sample: usize,
        reason: &'static str,
    },
}

impl Worker {
    /// Sends the held messages in order, each token with its logprobs.
    fn send_held(
        &self,
        engine: &tempering_generate::LocalEngine,
        batch: &DecodeBatch,
        active: &mut HashMap<usize, Active>,
        held: Vec<Held>,
        finished_lp: &HashMap<(usize, usize), (f32, Vec<TopLogprob>)>,
    ) {
        for h in held {
            match h {
                Held::Token {
                    id,
                    sample,
                    token,
                    text,
                } => {
                    let Some(a) = active.get_mut(&id) else {
                        continue;
                    };
                    let lp = batch
                        .last_logprobs(id, sample)
                        .map(|(l, top)| (l, top.to_vec()))
                        .or_else(|| finished_lp.get(&(id, sample)).cloned());
                    let logprobs = lp.map(|(l, top)| {
                        let offset = a.offsets.get(sample).copied().unwrap_or(0);
                        let (v, next) =
                            self.token_logprobs_json(engine, &a.job, token, l, &top, offset);
                        if let Some(o) = a.offsets.get_mut(sample) {
                            *o = next;
                        }
                        v
                    });
                    let _ = a.job.tx.send(Msg::Token {
                        index: sample,
                        text,
                        token: a.job.return_token_ids.then_some(token),
                        logprobs,
                    });
                }
                Held::Finish { id, sample, reason } => {
                    if let Some(a) = active.get(&id) {
                        let _ = a.job.tx.send(Msg::Finish {
                            index: sample,
                            reason,
                        });
                    }
                }
            }
        }
    }
}

pub(super) fn server_error(msg: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        msg,
    )
}

/// Answers every request in the batch with a server error and empties it.
fn fail_all(batch: &mut DecodeBatch, active: &mut HashMap<usize, Active>, why: &str) {
    for (_, a) in active.drain() {
        let _ = a.job.tx.send(Msg::Error(server_error(why)));
    }
    *batch = DecodeBatch::new();
}
