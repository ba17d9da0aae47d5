//! `task_verifier`: a built-in task's own verifier. Rebuilds the problem from the prompt and the
//! reference answer (`Task::problem_from_record`) and asks `Task::verify`: 1 when correct, else 0.
//! The task comes from the spec (`task_verifier(countdown)`) or from the run's context.

use tempering_tasks::{list_tasks, task_by_name, Task};

use crate::error::{Result, RewardError};
use crate::rules::Args;
use crate::scorer::{ScoreInput, Scored, Verifier};
use crate::spec::RewardContext;

pub struct TaskVerifier {
    task: Box<dyn Task>,
    level: u32,
}

impl TaskVerifier {
    /// The verifier of `task`; `level` labels the rebuilt problems (verification ignores it).
    pub fn new(task: Box<dyn Task>, level: Option<u32>) -> Self {
        let level = level.unwrap_or_else(|| task.default_level());
        TaskVerifier { task, level }
    }

    /// The verifier of the built-in task called `name`; the error lists the known ones.
    pub fn by_name(name: &str, level: Option<u32>) -> Result<Self> {
        Ok(Self::new(task_by_name(name)?, level))
    }

    pub(crate) fn from_args(a: &mut Args, ctx: &RewardContext) -> Result<Self> {
        let level = match a.count("level", false)? {
            Some(l) => Some(u32::try_from(l).map_err(|_| a.error("`level` is too large"))?),
            None => ctx.level,
        };
        let name = match (a.text("task", true)?, &ctx.task) {
            (Some(n), _) => n,
            (None, Some(n)) => n.clone(),
            (None, None) => {
                let known: Vec<&str> = list_tasks().iter().map(|t| t.name()).collect();
                return Err(a.error(format!(
                    "which task? the run names none; write `task_verifier(TASK)` with one of: {}",
                    known.join(", ")
                )));
            }
        };
        Self::by_name(&name, level)
    }

    pub fn task(&self) -> &dyn Task {
        self.task.as_ref()
    }
}

impl Verifier for TaskVerifier {
    fn name(&self) -> &str {
        "task_verifier"
    }

    fn score(&self, input: &ScoreInput<'_>) -> Result<Scored> {
        let reference = input.reference.ok_or_else(|| {
            RewardError::spec(
                "task_verifier",
                format!(
                    "needs the reference answer of each {} prompt (the dataset's `answer` column)",
                    self.task.name()
                ),
            )
        })?;
        let problem = self
            .task
            .problem_from_record(input.prompt, reference, self.level)?;
        let correct = self.task.verify(&problem, input.completion).is_correct();
        Ok(Scored {
            score: if correct { 1.0 } else { 0.0 },
            correct: Some(correct),
        })
    }
}
