//! Prints one problem per task and level with its worked solution: a quick look at what the generators
//! make. `cargo run -p tempering-tasks --example show_tasks`
use tempering_tasks::{list_tasks, SplitMix64};

fn main() {
    for task in list_tasks() {
        println!("== {}: {}", task.name(), task.description());
        println!(
            "alphabet: {:?}",
            task.alphabet().into_iter().collect::<String>()
        );
        for level in task.levels() {
            let mut rng = SplitMix64::new(u64::from(level));
            match task.sample(level, &mut rng) {
                Ok(p) => println!(
                    "-- level {level} ({})\n{}{}\n",
                    p.split, p.prompt, p.solution
                ),
                Err(e) => println!("-- level {level}: {e}"),
            }
        }
    }
}
