from pathlib import Path


def test_tiny_store_holds_three_models(tiny_store: Path) -> None:
    assert sorted(p.name for p in tiny_store.iterdir()) == ["tiny", "tiny1", "tiny10"]
