//! Dataset reading in TRL's column conventions: JSONL errors that name the file and line, typed views
//! and their missing-column errors, and Parquet read back against its JSONL twin written by pyarrow.

use std::io::Write;
use std::path::{Path, PathBuf};

use tempering_tasks::dataset::{
    load_preference, load_rl_prompts, load_sft, load_stepwise, load_unpaired, read_jsonl,
    read_rows, Message, PreferenceExample, SftExample, TextOrChat,
};
use tempering_tasks::TaskError;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    p
}

fn message(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
    }
}

#[test]
fn malformed_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "bad.jsonl",
        "{\"text\": \"a\"}\n\n{\"text\": \"b\"\n",
    );
    let err = read_jsonl(&p).unwrap_err();
    assert!(matches!(err, TaskError::Parse { line: 3, .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("bad.jsonl:3"), "{msg}");
    let p = write(dir.path(), "list.jsonl", "{\"text\": \"a\"}\n[1, 2]\n");
    let msg = read_jsonl(&p).unwrap_err().to_string();
    assert!(
        msg.contains("list.jsonl:2") && msg.contains("object"),
        "{msg}"
    );
}

#[test]
fn empty_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("empty.jsonl", ""), ("blank.jsonl", "\n  \n")] {
        let p = write(dir.path(), name, text);
        let err = read_jsonl(&p).unwrap_err();
        assert!(matches!(err, TaskError::EmptyDataset { .. }), "{err}");
        assert!(err.to_string().contains(name));
    }
    let err = read_jsonl(&dir.path().join("absent.jsonl")).unwrap_err();
    assert!(err.to_string().contains("absent.jsonl"), "{err}");
}

#[test]
fn sft_reads_all_three_forms() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "sft.jsonl",
        concat!(
            "{\"text\": \"hello\"}\n",
            "{\"prompt\": \"1+1=\", \"completion\": \"2\"}\n",
            "{\"prompt\": [{\"role\": \"user\", \"content\": \"hi\"}], ",
            "\"completion\": [{\"role\": \"assistant\", \"content\": \"yo\"}]}\n",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n",
        ),
    );
    let got = load_sft(&p).unwrap();
    assert_eq!(
        got,
        vec![
            SftExample::Text {
                text: "hello".into()
            },
            SftExample::PromptCompletion {
                prompt: TextOrChat::Text("1+1=".into()),
                completion: TextOrChat::Text("2".into())
            },
            SftExample::PromptCompletion {
                prompt: TextOrChat::Chat(vec![message("user", "hi")]),
                completion: TextOrChat::Chat(vec![message("assistant", "yo")])
            },
            SftExample::Messages {
                messages: vec![message("user", "q"), message("assistant", "a")]
            },
        ]
    );
}

#[test]
fn missing_columns_list_the_columns_found() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "x.jsonl",
        "{\"text\": \"a\"}\n{\"question\": \"q\", \"response\": \"r\"}\n",
    );
    let err = load_sft(&p).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, TaskError::MissingColumn { line: 2, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("x.jsonl:2") && msg.contains("question, response"),
        "{msg}"
    );

    let p = write(dir.path(), "pc.jsonl", "{\"prompt\": \"a\"}\n");
    let msg = load_sft(&p).unwrap_err().to_string();
    assert!(
        msg.contains("`completion`") && msg.contains("prompt"),
        "{msg}"
    );

    let p = write(
        dir.path(),
        "pref.jsonl",
        "{\"prompt\": \"a\", \"chosen\": \"b\"}\n",
    );
    let msg = load_preference(&p).unwrap_err().to_string();
    assert!(
        msg.contains("`rejected`") && msg.contains("chosen, prompt"),
        "{msg}"
    );

    let p = write(
        dir.path(),
        "rl.jsonl",
        "{\"prompt\": \"a\", \"solution\": \"4\"}\n",
    );
    let msg = load_rl_prompts(&p, Some("answer")).unwrap_err().to_string();
    assert!(
        msg.contains("`answer`") && msg.contains("prompt, solution"),
        "{msg}"
    );
}

#[test]
fn wrong_types_name_the_column_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "m.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}\n",
    );
    let msg = load_sft(&p).unwrap_err().to_string();
    assert!(
        msg.contains("messages[0].content") && msg.contains("a string") && msg.contains("a number"),
        "{msg}"
    );
    let p = write(
        dir.path(),
        "u.jsonl",
        "{\"prompt\": \"a\", \"completion\": \"b\", \"label\": \"yes\"}\n",
    );
    let msg = load_unpaired(&p).unwrap_err().to_string();
    assert!(msg.contains("`label`") && msg.contains("boolean"), "{msg}");
    let p = write(
        dir.path(),
        "mixed.jsonl",
        "{\"prompt\": \"a\", \"chosen\": [{\"role\": \"assistant\", \"content\": \"b\"}], \"rejected\": [{\"role\": \"assistant\", \"content\": \"c\"}]}\n",
    );
    let msg = load_preference(&p).unwrap_err().to_string();
    assert!(msg.contains("same form"), "{msg}");
}

#[test]
fn preference_without_prompt_splits_off_the_common_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "implicit.jsonl",
        concat!(
            "{\"chosen\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"good\"}], ",
            "\"rejected\": [{\"role\": \"user\", \"content\": \"q\"}, {\"role\": \"assistant\", \"content\": \"bad\"}]}\n",
            "{\"chosen\": \"The sky is blue.\", \"rejected\": \"The sky is green.\"}\n",
            "{\"prompt\": \"Q:\", \"chosen\": \" yes\", \"rejected\": \" no\"}\n",
        ),
    );
    let got = load_preference(&p).unwrap();
    assert_eq!(
        got[0],
        PreferenceExample {
            prompt: TextOrChat::Chat(vec![message("user", "q")]),
            chosen: TextOrChat::Chat(vec![message("assistant", "good")]),
            rejected: TextOrChat::Chat(vec![message("assistant", "bad")]),
        }
    );
    assert_eq!(
        got[1],
        PreferenceExample {
            prompt: TextOrChat::Text("The sky is".into()),
            chosen: TextOrChat::Text(" blue.".into()),
            rejected: TextOrChat::Text(" green.".into()),
        }
    );
    assert_eq!(got[2].prompt, TextOrChat::Text("Q:".into()));
}

#[test]
fn unpaired_stepwise_and_rl_views() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "u.jsonl",
        "{\"prompt\": \"a\", \"completion\": \"b\", \"label\": true}\n{\"prompt\": \"a\", \"completion\": \"c\", \"label\": 0}\n",
    );
    let labels: Vec<bool> = load_unpaired(&p).unwrap().iter().map(|e| e.label).collect();
    assert_eq!(labels, [true, false]);

    let p = write(
        dir.path(),
        "s.jsonl",
        "{\"prompt\": \"p\", \"completions\": [\"s1\", \"s2\"], \"labels\": [true, false]}\n",
    );
    let s = load_stepwise(&p).unwrap();
    assert_eq!(s[0].completions, ["s1", "s2"]);
    assert_eq!(s[0].labels, [true, false]);
    let p = write(
        dir.path(),
        "s2.jsonl",
        "{\"prompt\": \"p\", \"completions\": [\"s1\", \"s2\"], \"labels\": [true]}\n",
    );
    let msg = load_stepwise(&p).unwrap_err().to_string();
    assert!(
        msg.contains("s2.jsonl:1") && msg.contains("2 steps") && msg.contains("1 labels"),
        "{msg}"
    );

    let p = write(
        dir.path(),
        "rl.jsonl",
        "{\"prompt\": \"2+2?\", \"solution\": 4}\n{\"prompt\": [{\"role\": \"user\", \"content\": \"hi\"}], \"solution\": \"x\"}\n",
    );
    let rl = load_rl_prompts(&p, Some("solution")).unwrap();
    assert_eq!(rl[0].answer.as_deref(), Some("4"));
    assert_eq!(rl[1].prompt, TextOrChat::Chat(vec![message("user", "hi")]));
    assert!(load_rl_prompts(&p, None)
        .unwrap()
        .iter()
        .all(|r| r.answer.is_none()));
}

#[test]
fn unknown_extension_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "data.csv", "a,b\n");
    let msg = read_rows(&p).unwrap_err().to_string();
    assert!(msg.contains("data.csv") && msg.contains(".jsonl"), "{msg}");
}

#[cfg(not(feature = "parquet"))]
#[test]
fn parquet_without_the_feature_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "d.parquet", "PAR1");
    let msg = read_rows(&p).unwrap_err().to_string();
    assert!(
        msg.contains("d.parquet") && msg.contains("feature `parquet`"),
        "{msg}"
    );
}

#[cfg(feature = "parquet")]
mod parquet {
    use super::*;
    use tempering_tasks::dataset::{read_parquet, Row};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fixtures/datasets")
            .join(name)
    }

    #[test]
    fn parquet_rows_equal_their_jsonl_twin() {
        // Both files were written by scripts/reference/make_parquet_fixture.py from the same rows.
        let from_parquet: Vec<Row> = read_parquet(&fixture("trl_columns.parquet")).unwrap();
        let from_jsonl = read_jsonl(&fixture("trl_columns.jsonl")).unwrap();
        assert_eq!(from_parquet.len(), 3);
        assert_eq!(from_parquet, from_jsonl);
        assert_eq!(
            read_rows(&fixture("trl_columns.parquet")).unwrap(),
            from_jsonl
        );
    }

    #[test]
    fn typed_views_read_parquet() {
        let path = fixture("trl_columns.parquet");
        let sft = load_sft(&path).unwrap();
        let SftExample::Messages { messages } = &sft[1] else {
            panic!("expected messages, got {:?}", sft[1]);
        };
        assert_eq!(
            messages[1].content,
            "Say hi, with unicode: h\u{e9}llo \u{2713}"
        );
        let rl = load_rl_prompts(&path, Some("answer")).unwrap();
        assert_eq!(rl[2].answer.as_deref(), Some("101101"));
        let unpaired = load_unpaired(&path).unwrap();
        assert_eq!(
            unpaired.iter().map(|u| u.label).collect::<Vec<_>>(),
            [true, false, true]
        );
        // Row 3 has no steps: the stepwise view refuses it and names the row.
        let msg = load_stepwise(&path).unwrap_err().to_string();
        assert!(msg.contains("trl_columns.parquet:3"), "{msg}");
    }

    #[cfg(not(feature = "parquet-zstd"))]
    #[test]
    fn zstd_without_the_feature_says_which_feature() {
        let msg = read_parquet(&fixture("trl_columns_zstd.parquet"))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("trl_columns_zstd.parquet") && msg.contains("parquet-zstd"),
            "{msg}"
        );
    }

    #[cfg(feature = "parquet-zstd")]
    #[test]
    fn zstd_reads_with_the_feature() {
        let rows = read_parquet(&fixture("trl_columns_zstd.parquet")).unwrap();
        assert_eq!(rows, read_jsonl(&fixture("trl_columns.jsonl")).unwrap());
    }

    #[test]
    fn a_file_that_is_not_parquet_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "fake.parquet", "{\"text\": \"a\"}\n");
        let msg = read_rows(&p).unwrap_err().to_string();
        assert!(
            msg.contains("fake.parquet") && msg.contains("Parquet"),
            "{msg}"
        );
    }
}
