"""Writes the Parquet fixtures of tempering-tasks' dataset tests, with pyarrow as the independent writer.

Each Parquet file gets a JSONL twin holding the same rows, so the Rust test can check that reading the
Parquet file gives exactly the rows of the JSONL file. Run from the repository root:

    python scripts/reference/make_parquet_fixture.py

Needs pyarrow (tested with 26.0.1). Output (a few KiB): fixtures/datasets/trl_columns.{parquet,jsonl}
(Snappy, two rows per row group) and fixtures/datasets/trl_columns_zstd.parquet (same rows, Zstandard).
"""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

OUT = os.path.join("fixtures", "datasets")

ROWS = [
    {
        "prompt": "Compute: (7+5)*3-4\n",
        "completion": "7+5=12\n12*3=36\n36-4=32\nAnswer: 32",
        "messages": [
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
        ],
        "completions": ["7+5=12", "12*3=36", "36-4=32"],
        "labels": [True, True, True],
        "label": True,
        "answer": 32,
        "score": 0.5,
        "note": None,
    },
    {
        "prompt": "Make 24 from: 2 3 4\n",
        "completion": "2+4=6\n6*4=24\nAnswer: (2+4)*4",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hi, with unicode: h\u00e9llo \u2713"},
            {"role": "assistant", "content": "hi"},
        ],
        "completions": ["2+4=6", "6*4=24"],
        "labels": [True, False],
        "label": False,
        "answer": 24,
        "score": -1.25,
        "note": "reuses 4",
    },
    {
        "prompt": "Convert 45 to base 2:\n",
        "completion": "45=22*2+1\nAnswer: 101101",
        "messages": [{"role": "user", "content": ""}],
        "completions": [],
        "labels": [],
        "label": True,
        "answer": 101101,
        "score": 3.0,
        "note": "",
    },
]

SCHEMA = pa.schema(
    [
        ("prompt", pa.string()),
        ("completion", pa.string()),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("completions", pa.list_(pa.string())),
        ("labels", pa.list_(pa.bool_())),
        ("label", pa.bool_()),
        ("answer", pa.int64()),
        ("score", pa.float64()),
        ("note", pa.string()),
    ]
)


def main():
    os.makedirs(OUT, exist_ok=True)
    table = pa.Table.from_pylist(ROWS, schema=SCHEMA)
    pq.write_table(table, os.path.join(OUT, "trl_columns.parquet"), compression="snappy", row_group_size=2)
    pq.write_table(table, os.path.join(OUT, "trl_columns_zstd.parquet"), compression="zstd")
    with open(os.path.join(OUT, "trl_columns.jsonl"), "w", encoding="utf-8") as f:
        for row in ROWS:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
