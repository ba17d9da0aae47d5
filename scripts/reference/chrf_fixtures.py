"""chrF and chrF++ sentence scores from sacrebleu, for the `chrf` reward's test.

Writes fixtures/reward/chrf.json: a list of {hypothesis, reference, params, score}, where score is
sacrebleu's sentence score divided by 100 (the reward is in [0, 1]). Deterministic.

    python scripts/reference/chrf_fixtures.py      # needs `pip install sacrebleu` (2.x)
"""

import json
from pathlib import Path

import sacrebleu
from sacrebleu.metrics import CHRF

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "fixtures" / "reward" / "chrf.json"

PAIRS = [
    ("The cat sat on the mat.", "The cat sat on the mat."),
    ("The cat sat on the mat.", "A cat was sitting on the mat."),
    ("the cat", "The Cat sat."),
    ("Le chat est assis sur le tapis.", "The cat sat on the mat."),
    ("", "The cat sat on the mat."),
    ("The cat sat on the mat.", ""),
    ("a", "a"),
    ("ab", "abc"),
    ("aaaa aaa", "aa a"),
    ("Das Haus ist klein, aber gemütlich!", "Das Haus ist zwar klein, aber sehr gemütlich."),
    ("Über   den   Wolken", "Über den Wolken muss die Freiheit wohl grenzenlos sein"),
    ("東京は日本の首都です。", "日本の首都は東京です。"),
    ("Hello, world! (test)", "hello world test"),
    ("\"quoted\" words, and, commas.", "quoted words and commas"),
    ("12 + 30 = 42", "42 = 12 + 30"),
]

PARAMS = [
    {"char_order": 6, "word_order": 0, "beta": 2, "lowercase": False, "whitespace": False},
    {"char_order": 6, "word_order": 2, "beta": 2, "lowercase": False, "whitespace": False},
    {"char_order": 4, "word_order": 0, "beta": 1, "lowercase": True, "whitespace": False},
    {"char_order": 6, "word_order": 0, "beta": 3, "lowercase": False, "whitespace": True},
]


def main():
    rows = []
    for params in PARAMS:
        metric = CHRF(**params)
        for hyp, ref in PAIRS:
            score = metric.sentence_score(hyp, [ref]).score / 100.0
            rows.append({"hypothesis": hyp, "reference": ref, "params": params, "score": score})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"sacrebleu": sacrebleu.__version__, "cases": rows}, indent=1, ensure_ascii=False)
    OUT.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {len(rows)} cases to {OUT}")


if __name__ == "__main__":
    main()
