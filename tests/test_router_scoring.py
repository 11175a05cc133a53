"""The router's scoring and decisions: the seed's examples, Turkish casing, word counting, sticky
medium split. Pure functions over the shipped router.toml (no Redis, no database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxq.split import split_bucket
from tests.conftest import REPO
from workers.routing.config import InvalidRouterConfig, RouterConfig, TermRule, load_router_config
from workers.routing.decide import UnknownBackend, decide
from workers.routing.scoring import classify, fold, words

KEY = b"test-router-key"
SEED_QUERIES = {
    "Merhaba": "simple",
    "Bu göğüs röntgeninde pnömoni var mı?": "medium",
    "Hasta verilerini analiz ederek COVID-19, pnömoni ve normal akciğer dokusu arasındaki farkları karşılaştır": (
        "complex"
    ),
}


@pytest.fixture(scope="module")
def config() -> RouterConfig:
    return load_router_config(REPO / "router.toml")


@pytest.mark.parametrize(("query", "complexity"), SEED_QUERIES.items())
def test_the_seeds_examples_get_the_seeds_complexities(config: RouterConfig, query: str, complexity: str) -> None:
    assert classify(query, config.scoring).complexity == complexity


def test_the_classification_says_which_rules_fired(config: RouterConfig) -> None:
    result = classify(list(SEED_QUERIES)[2], config.scoring).as_dict()
    assert result["score"] == 70 and result["word_count"] == 13
    fired = {rule["rule"]: rule for rule in result["rules"]}
    assert fired["length"]["points"] == 20
    assert fired["medical"]["points"] == 20 and {"pnömoni", "akciğer", "hasta"} <= set(fired["medical"]["matched"])
    # Two distinct complex keywords, counted up to max_hits = 2
    assert fired["complex"] == {"rule": "complex", "points": 30, "matched": ["analiz", "karşılaştır"]}
    assert "legal" not in fired


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("İSTANBUL", "istanbul"),  # dotted capital İ is i (str.lower() would leave a combining dot)
        ("ILIK", "ilik"),  # Turkish capital I (of ı) and ...
        ("ılık", "ilik"),  # ... its lower case fold alike
        ("AKCİĞER", "akciğer"),
        ("AKCIĞER", "akciğer"),  # typed without the dot: still a match
        ("PNÖMONİ", "pnömoni"),
        ("EXPLAIN", "explain"),  # English capital I is i as usual
        ("Straße", "strasse"),
    ],
)
def test_folding_is_turkish_safe(text: str, folded: str) -> None:
    assert fold(text) == folded


@pytest.mark.parametrize(
    ("query", "rule"),
    [
        ("AKCİĞER GRAFİSİ", "medical"),
        ("akciğer grafisi", "medical"),
        ("Bu RÖNTGENİNDE ne var", "medical"),  # inflected and upper-case Turkish
        ("Dava DİLEKÇESİ hazırla", "legal"),
        ("Sözleşmenin maddelerini KARŞILAŞTIR", "complex"),
        ("Please EXPLAIN WHY it fails", "complex"),  # a two-word term, adjacent and in order
        ("Compare these two X-rays", "medical"),
    ],
)
def test_terms_match_whatever_the_case_and_inflection(config: RouterConfig, query: str, rule: str) -> None:
    fired = {hit.rule for hit in classify(query, config.scoring).rules}
    assert rule in fired


@pytest.mark.parametrize(
    ("query", "fired"),
    [
        ("göğsünde ağrı var", {"medical"}),  # göğüs → göğsü: the shipped list has both stems
        ("ilacı ne zaman içmeli", {"medical"}),  # ilaç → ilacı
        ("öksürüğü geçmiyor", {"medical"}),  # öksürük → öksürüğü
        ("ＣＯＶＩＤ testi", {"medical"}),  # fullwidth letters fold to ASCII
        ("belirtilen süre içinde", set()),  # "belirti" alone would catch "belirtilen"
        ("yorumlar güzel", set()),
        ("courtesy of Chester, legalize it", set()),  # whole-word terms: court$, chest$, legal$
        ("chest pain in court", {"medical", "legal"}),
    ],
)
def test_stems_that_change_and_whole_word_terms(config: RouterConfig, query: str, fired: set[str]) -> None:
    assert {hit.rule for hit in classify(query, config.scoring).rules} - {"length"} == fired


def test_inflected_forms_match_their_stem(config: RouterConfig) -> None:
    scoring = config.scoring.model_copy(
        update={"rules": {"data": TermRule(points=5, terms=["veri"]), "why": TermRule(points=7, terms=["explain why"])}}
    )
    assert [h.rule for h in classify("Hasta verilerini gönder", scoring).rules] == ["length", "data"]
    # Not a match: the words are not adjacent, or not in order
    assert [h.rule for h in classify("explain it, why", scoring).rules] == ["length"]
    assert [h.rule for h in classify("why explain", scoring).rules] == ["length"]
    # A term matches the start of a word, never its middle
    assert [h.rule for h in classify("teveri", scoring).rules] == ["length"]


def test_punctuation_and_numbers_do_not_break_word_counts() -> None:
    assert words("COVID-19, pnömoni; akciğer... (3.5 mg) Ankara'da — x-ray’s!") == [
        "covid-19",
        "pnömoni",
        "akciğer",
        "3.5",
        "mg",
        "ankara'da",
        "x-ray’s",
    ]
    assert words("  ...  !!! ") == []


@pytest.mark.parametrize(("count", "points"), [(0, 10), (9, 10), (10, 20), (19, 20), (20, 30), (49, 30), (50, 50)])
def test_word_count_buckets(config: RouterConfig, count: int, points: int) -> None:
    query = " ".join(["kelime"] * count)
    assert classify(query, config.scoring).rules[0].points == points


def test_decisions_follow_the_tiers(config: RouterConfig) -> None:
    simple = decide("Merhaba", config, KEY)
    assert (simple.backend, simple.tier, simple.reason, simple.variant) == ("chest-xray", "local", "simple-query", None)
    assert simple.estimated_cost == 0.0001
    complex_ = decide(list(SEED_QUERIES)[2], config, KEY)
    assert (complex_.backend, complex_.tier, complex_.reason) == ("llm", "remote", "complex-query")
    assert complex_.estimated_cost == 0.02
    medium = decide(list(SEED_QUERIES)[1], config, KEY, user_id="42")
    assert medium.reason == "medium-query-ab" and medium.variant == medium.tier
    forced = decide("Merhaba", config, KEY, backend="llm")
    assert (forced.backend, forced.tier, forced.reason) == ("llm", "remote", "forced")
    with pytest.raises(UnknownBackend):
        decide("Merhaba", config, KEY, backend="nope")
    body = complex_.as_dict()
    assert set(body) == {"backend", "tier", "reason", "variant", "ab_test_id", "classification", "estimated_cost"}
    assert set(body["classification"]) == {"score", "complexity", "word_count", "rules"}


def test_the_medium_split_is_sticky_and_matches_its_percentage(config: RouterConfig) -> None:
    query = list(SEED_QUERIES)[1]
    users = [f"user-{i}" for i in range(4000)]
    first = {user: decide(query, config, KEY, user_id=user).variant for user in users}
    # The same user always gets the same variant
    assert all(decide(query, config, KEY, user_id=user).variant == first[user] for user in users[:200])
    remote_share = sum(variant == "remote" for variant in first.values()) / len(users)
    assert abs(remote_share - config.routing.medium_remote_percent / 100) < 0.03
    # Another key (another deployment) splits users differently: the bucket is keyed
    assert sum(split_bucket(KEY, u) == split_bucket(b"other", u) for u in users[:100]) < 5
    for percent, expected in ((0, {"local"}), (100, {"remote"})):
        edge = config.model_copy(
            update={"routing": config.routing.model_copy(update={"medium_remote_percent": percent})}
        )
        assert {decide(query, edge, KEY, user_id=u).variant for u in users[:300]} == expected


def test_a_backend_cooling_down_is_skipped(config: RouterConfig) -> None:
    two_local = config.model_copy(
        update={"routing": config.routing.model_copy(update={"local": ["chest-xray", "llm"]})}
    )
    decision = decide("Merhaba", two_local, KEY, available=lambda name: name != "chest-xray")
    assert decision.backend == "llm" and decision.tier == "local"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[scoring", "not valid TOML"),
        ('[scoring]\nmedium_at = "x"', "scoring"),
    ],
)
def test_a_bad_config_names_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "router.toml"
    path.write_text(text)
    with pytest.raises(InvalidRouterConfig) as caught:
        load_router_config(path)
    assert message in caught.value.message


def test_tiers_must_name_configured_backends(tmp_path: Path) -> None:
    text = (REPO / "router.toml").read_text().replace('remote = ["llm"]', 'remote = ["gpt-9"]')
    path = tmp_path / "router.toml"
    path.write_text(text)
    with pytest.raises(InvalidRouterConfig) as caught:
        load_router_config(path)
    assert "gpt-9" in caught.value.message


def test_backend_names_fit_the_columns_that_store_them(tmp_path: Path) -> None:
    long = "b" * 101
    text = (REPO / "router.toml").read_text().replace("[backends.llm]", f"[backends.{long}]")
    text = text.replace('remote = ["llm"]', f'remote = ["{long}"]')
    path = tmp_path / "router.toml"
    path.write_text(text)
    with pytest.raises(InvalidRouterConfig) as caught:
        load_router_config(path)
    assert "1–100 characters" in caught.value.message
