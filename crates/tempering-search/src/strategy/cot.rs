//! Chain of thought: one completion, greedy or sampled. The baseline every other strategy is
//! measured against.

use super::{Candidate, Needs, Strategy};
use crate::context::{SearchContext, SearchProblem};
use crate::error::Result;
use crate::vote::answer_of;

pub struct ChainOfThought {
    pub greedy: bool,
}

impl Strategy for ChainOfThought {
    fn name(&self) -> String {
        if self.greedy { "greedy" } else { "sample" }.into()
    }

    fn needs(&self) -> Needs {
        Needs::Nothing
    }

    fn run(&self, problem: &SearchProblem, ctx: &mut SearchContext<'_>) -> Result<Candidate> {
        let Some(s) = ctx.complete(&problem.prompt, 1, self.greedy)?.pop() else {
            return Ok(Candidate::default());
        };
        let node = ctx.trace.add(vec![], "sample", &s.text, s.tokens);
        ctx.trace.set_answer(node, answer_of(&s.text));
        Ok(Candidate::new(s.text, None, Some(node)))
    }
}
